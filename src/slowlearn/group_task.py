"""One group's training as a task that runs anywhere: in the sweep's process, or as a submitit
job (``executor=local`` or ``slurm`` of ``hydra/launcher=batched``).

``run_group`` trains a group and writes each member's record; the in-process launcher and
``GroupTask`` both go through it. A ``GroupTask`` holds only plain values (each member's
resolved config as YAML), so that it pickles to another machine, and finds its cores and
device in the allocation it lands on.

Preemption and timeouts: submitit sends SIGUSR2 ahead of the end of the job's time (or when
SLURM preempts it) and calls ``checkpoint``, which returns the task that continues the job.
Here the signal only asks the group to stop at its next batch, as Ctrl-C does
(``slowlearn.interrupts``): never inside a file write. Each member then continues from its own
``last.ckpt``, the checkpoint of its last epoch end, exactly as ``resume=<member folder>``
continues a single run: its TensorBoard steps after that checkpoint are purged and retrained.
A stop in the middle of an epoch loses that epoch's steps so far; a mid-epoch checkpoint would
need the data order's position in the epoch saved and restored, which the data batches do not
do.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

FINAL = ("completed", "diverged", "failed")  # a member with one of these is done
PREEMPTED = "preempted or timed out: requeued, to resume from its last checkpoint"


def run_group(
    jobs: Sequence[Any],
    cores: int,
    devices: list[int] | None = None,
    preemption: Preemption | None = None,
) -> list[Any]:
    """Train the group of ``jobs`` (``slowlearn.train.Job``) and write each member's record;
    the members' Outcomes, in order. Raises what ``train_and_test`` raises before training.
    A stop asked for by ``preemption`` is recorded as the preemption it is."""
    from slowlearn.train import train_and_test, write_record

    outcomes = train_and_test(jobs, cores, in_sweep=True, devices=devices)
    for job, outcome in zip(jobs, outcomes, strict=True):
        if outcome.status == "interrupted" and preemption and preemption.signum is not None:
            outcome.error = PREEMPTED
        write_record(job, outcome)
    return outcomes


def allocated_cores() -> int:
    """The cores of this job: its affinity mask (which SLURM sets with task affinity), at most
    SLURM's cpus-per-task (a cluster without affinity shows the whole node)."""
    from slowlearn.train import available_cores

    cores = available_cores()
    per_task = os.environ.get("SLURM_CPUS_PER_TASK", "")
    return min(cores, int(per_task)) if per_task.isdigit() and int(per_task) > 0 else cores


def lightning_requeue_off(cfg: DictConfig) -> None:
    """Under SLURM, Lightning would install its own SIGUSR1 requeue; submitit's is the one that
    acts here, so the trainer gets a plain environment."""
    if "SLURM_JOB_ID" in os.environ and not cfg.trainer.get("plugins"):
        plugin = {"_target_": "pytorch_lightning.plugins.environments.LightningEnvironment"}
        OmegaConf.update(cfg, "trainer.plugins", [plugin], force_add=True)


def resume_member(job: Any) -> None:
    """``job`` continues from its last checkpoint, as ``resume=<its folder>`` would continue it
    (``slowlearn.train.resumed_config``): what its TensorBoard run holds after that step is
    hidden and trained again. Without a checkpoint yet it starts again, its events hidden."""
    import torch

    from slowlearn.checkpoints import LAST

    checkpoint = job.run_dir / "checkpoints" / LAST
    step = -1
    if checkpoint.is_file():
        saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
        job.checkpoint, step = checkpoint, saved["global_step"]
    job.cfg.resume = str(job.run_dir)
    for logger in job.cfg.get("logger", {}).values():
        if str(logger.get("_target_", "")).endswith("TensorBoardLogger"):
            logger.purge_step = step + 1


# ------------------------------------------------------------------ preemption


class Preemption:
    """SIGUSR2 while the task runs: the group stops at its next batch; submitit's own handler
    (checkpoint and requeue) is called once the members' records are written."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.submitit_handler: Any = None

    def request(self, signum: int, frame: FrameType | None) -> None:
        from slowlearn.interrupts import StopAtNextBatch

        self.signum = signum
        log.warning("preemption or timeout signal: the group stops at its next batch")
        handler = signal.getsignal(signal.SIGINT)
        stopper = getattr(handler, "__self__", None)
        if isinstance(stopper, StopAtNextBatch) and not stopper.requested:
            stopper.request(signal.SIGINT, frame)  # as a first Ctrl-C: stop at the next batch

    @contextmanager
    def installed(self) -> Iterator[None]:
        from submitit import JobEnvironment

        usr_sig = JobEnvironment._usr_sig()
        self.submitit_handler = signal.signal(usr_sig, self.request)
        try:
            yield
        finally:
            signal.signal(usr_sig, self.submitit_handler)

    def hand_over(self) -> None:
        """submitit's handler: ``checkpoint`` gives the task that continues, and the job is
        requeued (it exits here)."""
        if callable(self.submitit_handler):
            self.submitit_handler(self.signum, None)


# ------------------------------------------------------------------ the task


@dataclass
class GroupTask:
    """One or more groups (``groups_per_job``), each a list of members' resolved configs
    (YAML), trained one after the other in this job. ``resume``: each unfinished member
    continues from its own last checkpoint."""

    groups: list[list[str]]
    env_set: dict[str, str] = field(default_factory=dict)
    resume: bool = False

    def run_dirs(self) -> list[list[Path]]:
        return [[Path(OmegaConf.create(m).run_dir) for m in group] for group in self.groups]

    def jobs(self, members: list[str]) -> list[Any]:
        """The Jobs of the group's unfinished members (all of them for a new task)."""
        from slowlearn.records import read_metrics
        from slowlearn.train import Job

        jobs = []
        for text in members:
            job = Job(OmegaConf.create(text))
            if self.resume:
                if read_metrics(job.run_dir).get("status") in FINAL:
                    continue
                resume_member(job)
            lightning_requeue_off(job.cfg)
            jobs.append(job)
        return jobs

    def __call__(self) -> list[dict[str, Any]]:
        """Train every group; each member's status and error, in order (its metrics.json has
        the rest)."""
        from hydra.core.utils import env_override

        from slowlearn.records import read_metrics

        preemption = Preemption()
        cores = allocated_cores()
        with env_override(self.env_set), preemption.installed():
            interrupted = False
            for members in self.groups:
                jobs = self.jobs(members)
                if jobs and not interrupted:
                    interrupted = self.train(jobs, cores, preemption)
        if interrupted and preemption.signum is not None:
            preemption.hand_over()  # requeued: exits
        results = []
        for run_dirs in self.run_dirs():
            for run_dir in run_dirs:
                record = read_metrics(run_dir)
                results.append(
                    {"run_dir": str(run_dir), **{k: record.get(k) for k in ("status", "error")}}
                )
        return results

    def train(self, jobs: list[Any], cores: int, preemption: Preemption) -> bool:
        """One group; True when a preemption stopped it."""
        from slowlearn.records import record_failure
        from slowlearn.train import record_unexpected

        try:
            outcomes = run_group(jobs, cores, preemption=preemption)
        except Exception as error:  # noqa: BLE001 - the group fails; the job goes on
            for job in jobs:
                record_failure(job.run_dir, job.cfg, record_unexpected(job.run_dir, error))
            return False
        return any(o.status == "interrupted" for o in outcomes) and preemption.signum is not None

    def checkpoint(self) -> Any:
        """submitit's requeue: the same groups, each unfinished member resumed."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(GroupTask(self.groups, self.env_set, resume=True))
