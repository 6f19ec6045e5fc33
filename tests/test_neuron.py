"""Figure 5-4 through the real entry point, module and losses: the reference values."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest

from slowlearn.report import make_report
from slowlearn.report.runs import group_runs, read_runs
from tests.conftest import read_metrics, read_scalars, run_train, runs_by_name


@pytest.fixture(scope="module")
def neuron_sweep(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Figure 5-4's four runs, batched: the two starts are two groups of two objectives."""
    sweep_dir = tmp_path_factory.mktemp("neuron")
    result = run_train(
        ["-m", "experiment=neuron", f"hydra.sweep.dir={sweep_dir}", "trainer.accelerator=cpu"]
        + ["hydra/launcher=batched", "+trainer.enable_progress_bar=false"]
    )
    assert "Batched launcher: 4 jobs in 2 groups" in result.stderr + result.stdout
    runs = runs_by_name(sweep_dir)
    assert sorted(runs) == [
        f"sigmoid+{loss}/start{start}"
        for loss in ("bce", "mse")
        for start in ("0.6-0.9", "2.0-2.0")
    ]
    return runs


def series(run_dir: Path, tag: str) -> dict[int, float]:
    return dict(read_scalars(run_dir)[tag])


def final_output(run_dir: Path, loss: str) -> float:
    """o after the 300th step, from the cost of the final weights on the sample (y = 0)."""
    val_loss = read_metrics(run_dir)["metrics"]["val_history"][-1]["val/loss"]
    return math.sqrt(2 * val_loss) if loss == "mse" else 1 - math.exp(-val_loss)


def run_for(runs: dict[str, Path], loss: str, start: str) -> Path:
    return runs[f"sigmoid+{loss}/start{start}"]


def test_mse_learns_slowly_from_the_saturated_start(neuron_sweep: dict[str, Path]) -> None:
    run_dir = run_for(neuron_sweep, "mse", "2.0-2.0")
    cost = series(run_dir, "train/loss")
    assert sorted(cost) == list(range(300))  # cost after 0 .. 299 updates
    assert cost[0] == pytest.approx(0.482, abs=1e-3)
    assert cost[150] == pytest.approx(0.436, abs=1e-3)
    assert min(step for step, value in cost.items() if value < 0.1) == 238
    assert final_output(run_dir, "mse") == pytest.approx(0.203, abs=1e-3)
    output = series(run_dir, "train/output")
    assert output[0] == pytest.approx(1 / (1 + math.exp(-4)), abs=1e-6)
    w, b = series(run_dir, "param/w"), series(run_dir, "param/b")
    assert (w[0], b[0]) == (2.0, 2.0)


def test_cross_entropy_learns_fast_from_the_same_start(neuron_sweep: dict[str, Path]) -> None:
    run_dir = run_for(neuron_sweep, "bce", "2.0-2.0")
    cost = series(run_dir, "train/loss")
    assert min(step for step, value in cost.items() if value < 0.1) == 52
    assert final_output(run_dir, "bce") == pytest.approx(0.012, abs=1e-3)


def test_both_costs_learn_from_the_unsaturated_start(neuron_sweep: dict[str, Path]) -> None:
    for loss in ("mse", "bce"):
        run_dir = run_for(neuron_sweep, loss, "0.6-0.9")
        assert series(run_dir, "param/w")[0] == pytest.approx(0.6)
        assert final_output(run_dir, loss) < 0.25


def test_the_report_keeps_the_two_starts_apart(
    neuron_sweep: dict[str, Path], tmp_path: Path
) -> None:
    sweep = tmp_path / "sweep"
    shutil.copytree(next(iter(neuron_sweep.values())).parents[1], sweep)
    groups = group_runs(read_runs(sweep))
    assert sorted(group.label for group in groups) == [
        "sigmoid+bce, start=[0.6,0.9]",
        "sigmoid+bce, start=[2.0,2.0]",
        "sigmoid+mse, start=[0.6,0.9]",
        "sigmoid+mse, start=[2.0,2.0]",
    ]
    make_report(sweep)
    assert not list(sweep.rglob("mean"))  # one run per group: no seed mean to write


def test_a_single_neuron_run_prints_its_output_and_cost(tmp_path: Path) -> None:
    """What `make train ARGS="experiment=neuron"` prints: accuracy on one sample means nothing."""
    result = run_train(
        ["experiment=neuron", f"hydra.run.dir={tmp_path}", "trainer.accelerator=cpu"]
    )
    record = read_metrics(tmp_path)
    output, cost = record["metrics"]["final_output"], record["metrics"]["test_loss"]
    assert output == pytest.approx(0.203, abs=1e-3) and cost == pytest.approx(output**2 / 2)
    assert f"sigmoid+mse: final output {output:.4f}, cost {cost:.4f}" in result.stdout
    assert "test accuracy" not in result.stdout
