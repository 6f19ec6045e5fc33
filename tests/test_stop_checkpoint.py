"""A stop asked for in the middle of an epoch (Ctrl-C, a cluster's preemption signal) writes
every member's checkpoint at that step, and a group resumed from them ends exactly as the
uninterrupted group: the same metrics, and the same TensorBoard values at the same steps,
none of them written twice."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from slowlearn.group_task import resume_member
from slowlearn.interrupts import StopAtNextBatch
from slowlearn.train import Job, train_and_test
from tests.conftest import TINY_ARGS, compose_config, raw_values
from tests.test_submitit import assert_close, without_times

# 500 training images in batches of 10: 50 steps an epoch in chunks of 4 (13 chunks, the last
# of two steps); the loss and diagnostics windows straddle the chunks and the stop.
ARGS = [
    *TINY_ARGS,
    "trainer.max_epochs=3",
    "data.batch_size=10",
    "data.steps_per_chunk=4",
    "module.loss_window=3",
    "module.diagnostics_every_n_steps=2",
    "module.diagnostics_window=10",
]


class StopAfter(pl.Callback):
    """Asks for a stop, as SIGINT or SIGUSR2 would, once a given chunk's steps are done
    (chunk -1: as the epoch starts, before its first chunk)."""

    def __init__(self, epoch: int, chunk: int) -> None:
        self.epoch, self.chunk = epoch, chunk

    def request(self, trainer: pl.Trainer, chunk: int) -> None:
        if (trainer.current_epoch, chunk) == (self.epoch, self.chunk):
            (stopper,) = [c for c in trainer.callbacks if isinstance(c, StopAtNextBatch)]
            stopper.request(2, None)

    def on_train_epoch_start(self, trainer: pl.Trainer, *args: object) -> None:
        self.request(trainer, -1)

    def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
        self.request(trainer, int(args[-1]))  # type: ignore[call-overload]


def group(tiny_data: Path, folder: Path, *extra: str) -> list[Job]:
    jobs = []
    for cell, seed in (("sigmoid_mse", 0), ("softmax_nll", 1)):
        args = [a for a in ARGS if not a.startswith("+trainer.enable_progress_bar")]
        overrides = [f"data.dir={tiny_data}", *args, f"cell={cell}", f"seed={seed}", *extra]
        cfg = compose_config(*overrides, hydra_node=False)
        cfg.run_dir = str(folder / f"{cell}-seed{seed}")
        jobs.append(Job.resolved(cfg))
    return jobs


@pytest.mark.parametrize(
    ("epoch", "chunk", "at_step"),
    [
        (1, 5, 50 + 6 * 4),  # in the middle of an epoch
        (1, -1, 50),  # before an epoch's first chunk
        (1, 12, 100),  # after its last: validation ends first, the stop is at the next chunk
    ],
)
@pytest.mark.parametrize("progress_bar", [False, True])
def test_a_group_stopped_mid_epoch_resumes_to_the_uninterrupted_result(
    tiny_data: Path, tmp_path: Path, epoch: int, chunk: int, at_step: int, progress_bar: bool
) -> None:
    bar = f"+trainer.enable_progress_bar={str(progress_bar).lower()}"
    straight = train_and_test(group(tiny_data, tmp_path / "straight", bar), cores=1)
    stop = "+callbacks.stop._target_=tests.test_stop_checkpoint.StopAfter"
    at = [f"+callbacks.stop.epoch={epoch}", f"+callbacks.stop.chunk={chunk}"]
    stopped_jobs = group(tiny_data, tmp_path / "stopped", stop, bar, *at)
    stopped = train_and_test(stopped_jobs, cores=1)
    assert [o.status for o in stopped] == ["interrupted"] * 2
    for job in stopped_jobs:
        saved = torch.load(job.run_dir / "checkpoints" / "last.ckpt", weights_only=False)
        assert saved["global_step"] == at_step
        resume_member(job)
        del job.cfg.callbacks["stop"]
    resumed = train_and_test(stopped_jobs, cores=1)
    for job, before, after in zip(stopped_jobs, straight, resumed, strict=True):
        assert after.status == "completed"
        assert_close(
            without_times({"status": after.status, "metrics": after.metrics}),
            without_times({"status": before.status, "metrics": before.metrics}),
        )
        found = raw_values(job.run_dir)
        expected = raw_values(tmp_path / "straight" / job.run_dir.name)
        duplicates = {key: values for key, values in found.items() if len(values) > 1}
        assert not duplicates
        timed = ("time/", "epoch")
        keys = {key for key in expected if not key[0].startswith(timed)}
        assert len(keys) > 200 and any(tag.startswith("hist/") for tag, _ in keys)
        assert {key for key in found if not key[0].startswith(timed)} == keys
        for key in keys:
            assert found[key][0] == pytest.approx(expected[key][0], abs=1e-6), key
