"""How a sweep ends: a diverged job is a result (the job returns normally and the sweep exits 0
on every launcher), a failed or interrupted one makes the exit status non-zero, and one line,
printed by a Hydra callback, counts the runs of each status."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra.utils import instantiate

from slowlearn.records import write_metrics
from slowlearn.sweep_summary import SweepSummary, run_statuses, summary_line
from tests.conftest import (
    REPO,
    TINY_ARGS,
    compose_config,
    env,
    read_metrics,
    run_train,
    runs_by_name,
)

ONE_EPOCH = [a for a in TINY_ARGS if not a.startswith("trainer.max_epochs")]
ONE_EPOCH.append("trainer.max_epochs=1")


def test_the_line_counts_every_status_from_the_metrics_files_alone(tmp_path: Path) -> None:
    statuses = ["completed"] * 3 + ["diverged", "failed", "interrupted", "running"]
    for number, status in enumerate(statuses):
        write_metrics(tmp_path / "cell" / f"seed{number}", {"status": status})
    (tmp_path / "cell" / "seed0" / "summary.json").write_text('{"status": "failed"}')
    (tmp_path / "cell" / "seed0" / "metrics.json.bak").write_text('{"status": "failed"}')
    line = summary_line(run_statuses(tmp_path), "sweeps/x")
    assert line == (
        "7 runs: 3 completed, 1 diverged, 1 failed, 1 interrupted, 1 running; "
        "make report RUN=sweeps/x lists them"
    )
    assert summary_line(run_statuses(tmp_path / "cell" / "seed0"), "d") == "1 run: 1 completed"


def test_the_callback_is_hydras_and_prints_its_line_once(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    write_metrics(tmp_path / "a", {"status": "diverged"})
    config = compose_config(f"hydra.sweep.dir={tmp_path}")
    callback = instantiate(config.hydra.callbacks.sweep_summary)
    assert isinstance(callback, SweepSummary)
    callback.on_multirun_start(config=config)
    callback.on_multirun_end(config=config)
    callback.print_once()  # at exit: printed already
    assert capsys.readouterr().out == f"1 run: 1 diverged; make report RUN={tmp_path} lists them\n"


def test_the_callback_module_imports_no_torch() -> None:
    """Hydra instantiates the callback at the start of every run, single runs too."""
    code = "import sys, slowlearn.sweep_summary; assert 'torch' not in sys.modules, 'torch'"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env(), check=True)


def test_a_completed_sweep_ends_with_its_line(tiny_sweep: Path) -> None:
    output = (tiny_sweep / "stdout.txt").read_text()
    assert "4 runs: 4 completed\n" in output


@pytest.mark.parametrize("launcher", ["basic", "batched"])
def test_a_sweep_whose_runs_diverged_exits_0_and_counts_them(
    tiny_data: Path, tmp_path: Path, launcher: str
) -> None:
    """At lr 1e30 sigmoid + bce's loss is NaN at the second step: the top of an lr grid."""
    result = run_train(
        ["-m", "cell=sigmoid_bce", "optimizer.lr=0.1,1e30", f"hydra/launcher={launcher}"]
        + [f"data.dir={tiny_data}", f"hydra.sweep.dir={tmp_path}", *ONE_EPOCH],
    )
    statuses = {name: read_metrics(path)["status"] for name, path in runs_by_name(tmp_path).items()}
    assert statuses == {"sigmoid+bce/lr0.1": "completed", "sigmoid+bce/lr1e+30": "diverged"}
    assert "Error executing job" not in result.stderr
    assert result.stdout.splitlines()[-1] == (
        f"2 runs: 1 completed, 1 diverged; make report RUN={tmp_path} lists them"
    )
