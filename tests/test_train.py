"""End to end: the real entry point trains every cell and TensorBoard can read what it wrote."""

from __future__ import annotations

from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import TINY_ARGS, job_dirs, read_metrics, run_train

SCALARS = {
    "train/loss",
    "val/loss",
    "val/acc",
    "test/loss",
    "test/acc",
    "epoch",
    "time/epoch_seconds",
    "diag/error_signal/true_class",
    "diag/error_signal/all_outputs",
    "diag/saturated_wrong_fraction",
    "diag/grad_norm/0",
    "diag/grad_norm/2",
}


def events(run_dir: Path) -> EventAccumulator:
    (tb_dir,) = (run_dir / "tb").iterdir()
    accumulator = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0, "histograms": 0})
    accumulator.Reload()
    return accumulator


@pytest.fixture(scope="module")
def six_cell_sweep(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    sweep_dir = tmp_path_factory.mktemp("sweep")
    run_train(
        [
            "-m",
            "activation=sigmoid,softmax",
            "loss=mse,bce,nll",
            f"data.dir={tiny_data}",
            f"hydra.sweep.dir={sweep_dir}",
            *TINY_ARGS,
        ]
    )
    return sweep_dir


def test_multirun_trains_all_six_cells_into_readable_run_folders(six_cell_sweep: Path) -> None:
    names = [p.name for p in job_dirs(six_cell_sweep)]
    assert len(names) == 6
    assert all(name.startswith("activation=") and ",loss=" in name for name in names)
    for run_dir in job_dirs(six_cell_sweep):
        record = read_metrics(run_dir)
        assert record["status"] == "completed", record.get("error")
        assert 0.0 <= record["metrics"]["test_acc"] <= 1.0
        assert len(record["metrics"]["epoch_seconds"]) == 2
        assert record["config"]["trainer"]["max_epochs"] == 2
        assert (run_dir / "checkpoints" / "last.ckpt").is_file()


def test_event_files_hold_losses_accuracies_and_diagnostics(six_cell_sweep: Path) -> None:
    for run_dir in job_dirs(six_cell_sweep):
        accumulator = events(run_dir)
        tags = set(accumulator.Tags()["scalars"])
        assert tags >= SCALARS, SCALARS - tags
        assert "diag/error_signal/true_class" in accumulator.Tags()["histograms"]
        losses = accumulator.Scalars("train/loss")
        assert [e.step for e in losses] == [9, 19]  # means over 10 steps; step 0 is the start
        assert [e.step for e in accumulator.Scalars("val/acc")] == [10, 20]
        (tb_run,) = (run_dir / "tb").iterdir()
        settings = dict(part.split("=", 1) for part in run_dir.name.split(","))
        activation, loss = settings["activation"], settings["loss"]
        assert tb_run.name == f"{activation}+{loss}_default_seed0"


def test_cross_entropy_learns_the_tiny_task(six_cell_sweep: Path) -> None:
    (run_dir,) = [
        p for p in job_dirs(six_cell_sweep) if "softmax,data" in p.name and "=nll" in p.name
    ]
    record = read_metrics(run_dir)
    assert record["metrics"]["test_acc"] > 0.5


def test_single_run_prints_where_to_look(tiny_data: Path, tmp_path: Path) -> None:
    result = run_train([f"data.dir={tiny_data}", f"hydra.run.dir={tmp_path}", *TINY_ARGS])
    assert f"tensorboard --logdir {tmp_path}" in result.stdout
    assert read_metrics(tmp_path)["status"] == "completed"
