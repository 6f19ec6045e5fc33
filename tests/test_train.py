"""End to end: the real entry point trains a batched sweep and a single run, and each run's
folder holds what a person and the report read (records, checkpoints, event files)."""

from __future__ import annotations

import gc
import json
import re
import statistics
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from tests.conftest import TINY_ARGS, read_metrics, read_scalars, run_train, runs_by_name

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
    "diag/output_factor",
    # Per layer, by name (the tiny model: one hidden layer of 32 ReLU units).
    "diag/grad_norm/hidden1",
    "diag/grad_norm/output",
    "diag/bias_grad_norm/hidden1",
    "diag/bias_grad_norm/output",
    # Over the fixed training images, at step 0 and at each epoch's end.
    "diag/fixed/saturated_wrong_pairs",
    "diag/fixed/saturated_wrong_fraction",
    "diag/fixed/output_factor",
    "diag/fixed/error_signal/true_class_wrong",
    "diag/fixed/error_signal/true_class_right",
    "diag/fixed/bias_grad_norm/hidden1",
    "diag/fixed/bias_grad_norm/output",
}


def test_every_member_has_the_folder_a_single_run_has(tiny_sweep: Path) -> None:
    runs = runs_by_name(tiny_sweep)
    members = {name: path for name, path in runs.items() if "/seed" in name}
    assert sorted(members) == [
        f"{c}/seed{s}" for c in ("sigmoid+mse", "softmax+nll") for s in (0, 1)
    ]
    for name, run_dir in members.items():
        assert run_dir == tiny_sweep / name  # the job folder is its name
        record = read_metrics(run_dir)
        assert record["status"] == "completed", record.get("error")
        assert record["group_size"] == 4 and record["run_name"] == name
        assert 0.0 <= record["metrics"]["test_acc"] <= 1.0
        assert len(record["metrics"]["epoch_seconds"]) == 2
        assert record["config"]["trainer"]["max_epochs"] == 2
        assert (run_dir / "checkpoints" / "last.ckpt").is_file()
        assert list((run_dir / "checkpoints").glob("best-epoch00*.ckpt"))
        assert (run_dir / ".hydra" / "config.yaml").is_file()


def test_event_files_hold_losses_accuracies_and_diagnostics_by_layer(tiny_sweep: Path) -> None:
    for name, run_dir in runs_by_name(tiny_sweep).items():
        if "/seed" not in name:
            continue
        scalars = read_scalars(run_dir)
        assert set(scalars) >= SCALARS, SCALARS - set(scalars)
        assert not [tag for tag in scalars if tag.rsplit("/", 1)[-1].isdigit()]  # no indices
        assert [step for step, _ in scalars["train/loss"]] == [9, 19]  # 10-step means
        assert [step for step, _ in scalars["val/acc"]] == [10, 20]
        # One tag, one measure: the fixed sample at step 0 and at each epoch's end, the
        # mini-batch windows after updates only.
        for tag in (t for t in SCALARS if t.startswith("diag/fixed/")):
            if "true_class_wrong" not in tag:  # a later epoch may classify every image right
                assert [step for step, _ in scalars[tag]] == [0, 10, 20], tag
        assert scalars["diag/bias_grad_norm/output"][0][0] > 0
        factor = [v for _, v in scalars["diag/fixed/output_factor"]]
        pairs = [v for _, v in scalars["diag/fixed/saturated_wrong_pairs"]]
        assert all(0 <= v <= 1 for v in pairs)
        if name.startswith("softmax+nll"):  # eq. 5.5: de/dz = o - y
            assert all(abs(v - 1) < 1e-4 for v in factor), factor
        else:  # sigmoid+mse: the factor is the outputs' effective slope, at most 0.25
            assert all(0 < v <= 0.25 for v in factor), factor


def epoch1(run_dir: Path, tag: str) -> float:
    end = read_metrics(run_dir)["metrics"]["val_history"][0]["step"]
    return statistics.fmean(v for step, v in read_scalars(run_dir)[tag] if step <= end)


def test_cross_entropy_learns_the_tiny_task_faster_than_mse(tiny_sweep: Path) -> None:
    runs = runs_by_name(tiny_sweep)
    for seed in (0, 1):
        mse, ce = runs[f"sigmoid+mse/seed{seed}"], runs[f"softmax+nll/seed{seed}"]
        val = [read_metrics(r)["metrics"]["val_history"][0]["val/acc"] for r in (mse, ce)]
        assert val[1] >= 0.9 and val[1] - val[0] >= 0.3, val
        # Eq. 5.5: cross entropy's step at the output is the error itself, MSE's carries sigma'.
        signal = "diag/error_signal/true_class"
        assert epoch1(ce, signal) > 2 * epoch1(mse, signal)


def test_a_single_run_prints_its_result_where_to_look_and_its_steps(single_run: Path) -> None:
    output = (single_run.parent / "output.txt").read_text()
    metrics = read_metrics(single_run)["metrics"]
    assert (
        f"softmax+nll: test accuracy {metrics['test_acc']:.4f}; run folder {single_run}" in output
    )
    assert f"inspect: make tensorboard RUN={single_run.parent}" in output
    # The progress bar counts optimiser steps (10 per epoch here), at so many steps/s.
    assert "10/10" in output and "step/s" in output
    totals = re.findall(r"Epoch \d+: +\d+%\|[^|]*\| \d+/(\d+)", output)
    assert len(totals) >= 3 and set(totals) == {"10"}  # never a count of chunks, even at 0
    assert "litlogger" not in output and "Tip" not in output


class CollectorProbe(pl.Callback):
    """Writes, as training starts, whether the garbage collector runs and how many objects
    the command froze out of its reach."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_start(self, *args: Any) -> None:
        self.path.write_text(json.dumps({"on": gc.isenabled(), "frozen": gc.get_freeze_count()}))


def test_the_command_freezes_its_imports_and_collects_while_it_trains(
    tiny_data: Path, tmp_path: Path
) -> None:
    """The collector is off during the command's imports, which are then frozen (hundreds of
    thousands of objects: torch, Lightning, sympy), and on again for the runs."""
    probe = tmp_path / "collector.json"
    run_train(
        [
            f"data.dir={tiny_data}",
            f"hydra.run.dir={tmp_path / 'run'}",
            *[a for a in TINY_ARGS if not a.startswith("trainer.max_epochs")],
            "trainer.max_epochs=1",
            "+callbacks.probe._target_=tests.test_train.CollectorProbe",
            f"+callbacks.probe.path={probe}",
        ]
    )
    state = json.loads(probe.read_text())
    assert state["on"] and state["frozen"] > 100_000, state
