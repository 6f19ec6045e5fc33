"""One group's training as a task that runs anywhere: in the sweep's process, or as a submitit
job (``executor=local`` or ``slurm`` of ``hydra/launcher=batched``).

``run_group`` trains a group and writes each member's record; the in-process launcher and
``GroupTask`` both go through it. A ``GroupTask`` holds only plain values (each member's
resolved config as YAML), so that it pickles to another machine, and finds its cores and
device in the allocation it lands on. A task of several groups (``groups_per_job``) trains
them in parallel processes, one per GPU of its allocation (on a CPU-only allocation one per
core, the cores split between them), each process its share of the groups one after the
other.

Preemption and timeouts: submitit sends SIGUSR2 ahead of the end of the job's time (or when
SLURM preempts it) and calls ``checkpoint``, which returns the task that continues the job.
Here the signal only asks each group to stop at its next chunk of training steps, as Ctrl-C
does (``slowlearn.interrupts``): never inside a file write. There every member's checkpoint is
written at that step (``slowlearn.checkpoints``), and the requeued task continues each
unfinished member from it, exactly as ``resume=<member folder>`` continues a single run.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from omegaconf import DictConfig, OmegaConf

from slowlearn import placement
from slowlearn.internals import preemption_signal

log = logging.getLogger(__name__)

FINAL = ("completed", "diverged", "failed")  # a member with one of these is done
PREEMPTED = "preempted or timed out: requeued, to resume from its last checkpoint"


def never() -> bool:
    return False


def run_group(
    jobs: Sequence[Any],
    cores: int,
    devices: list[int] | None = None,
    preempted: Callable[[], bool] = never,
) -> list[Any]:
    """Train the group of ``jobs`` (``slowlearn.train.Job``) and write each member's record;
    the members' Outcomes, in order. Raises what ``train_and_test`` raises before training.
    ``preempted``: whether a preemption or timeout signal came, which stops the group at its
    next chunk and is recorded as the preemption it is."""
    from slowlearn.train import train_and_test, write_record

    outcomes = train_and_test(jobs, cores, in_sweep=True, devices=devices, stop_asked=preempted)
    stopped = any(o.status == "interrupted" for o in outcomes) and preempted()
    if stopped:
        log.warning(f"preempted: a group of {len(jobs)} stopped, its checkpoints written")
    for job, outcome in zip(jobs, outcomes, strict=True):
        if outcome.status == "interrupted" and stopped:
            outcome.error = PREEMPTED
        write_record(job, outcome)
    return outcomes


def job_log() -> str:
    """Where this submitit job's output goes (its training processes write there too)."""
    from submitit import JobEnvironment

    try:
        return str(JobEnvironment().paths.stderr)
    except (KeyError, RuntimeError):  # not started by submitit
        return "this process's standard error"


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
    from slowlearn.train import hide_events_after

    checkpoint = job.run_dir / "checkpoints" / LAST
    step = -1
    if checkpoint.is_file():
        saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
        job.checkpoint, step = checkpoint, saved["global_step"]
    job.cfg.resume = str(job.run_dir)
    hide_events_after(job.cfg, step)


# ------------------------------------------------------------------ preemption


@contextmanager
def preemption_signal_blocked() -> Iterator[None]:
    """A process started in this block (a training process, multiprocessing's resource
    tracker) keeps the preemption signal blocked for good: SLURM sends it to every process of
    the job step, and its default action would end one that has no handler. In this process
    a signal that comes meanwhile waits, and is handled when the block ends."""
    blocked = {preemption_signal()}
    signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, blocked)


class Preemption:
    """SIGUSR2 while the task runs: the groups stop at their next chunk; submitit's own handler
    (checkpoint and requeue) is called once the members' records are written. The task's
    training processes learn of it through ``event``, set here: they never take the signal
    themselves (``train_in_processes``)."""

    def __init__(self, event: Any = None) -> None:
        self.signum: int | None = None
        self.came_at: float | None = None  # time.monotonic() of the signal
        self.submitit_handler: Any = None
        self.event = event  # a multiprocessing Event shared with the training processes

    def came(self) -> bool:
        return self.signum is not None

    def request(self, signum: int, frame: FrameType | None) -> None:
        """The groups' StopAtNextBatch reads this (``run_group``): each stops at its next
        chunk, as after a first Ctrl-C, even when the signal came before it was installed."""
        if self.signum is not None:
            return  # SLURM signals every process of the step
        self.signum, self.came_at = signum, time.monotonic()
        log.warning("preemption or timeout signal: the groups stop at their next chunk")
        if self.event is not None:
            self.event.set()

    @contextmanager
    def installed(self) -> Iterator[None]:
        usr_sig = preemption_signal()
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
    (YAML): one group trains in the job's own process, several in parallel processes
    (``train_in_processes``). ``resume``: each unfinished member continues from its own last
    checkpoint."""

    groups: list[list[str]]
    env_set: dict[str, str] = field(default_factory=dict)
    resume: bool = False
    stop_grace_s: float = 30.0  # how long training processes may take to stop after a signal

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
        import multiprocessing

        from hydra.core.utils import env_override

        from slowlearn.records import read_metrics

        several = len(self.groups) > 1
        # no fork of a process that may hold threads
        context = multiprocessing.get_context("spawn") if several else None
        with preemption_signal_blocked():  # the Event starts the resource tracker
            preemption = Preemption(context.Event() if context else None)
        cores = placement.allocated_cores()
        with env_override(self.env_set), preemption.installed():
            if several:
                interrupted = self.train_in_processes(cores, preemption, context)
            else:
                interrupted = self.train_groups(self.groups, cores, None, preemption.came)
        if interrupted and preemption.came():
            preemption.hand_over()  # requeued: exits
        results = []
        for run_dirs in self.run_dirs():
            for run_dir in run_dirs:
                record = read_metrics(run_dir)
                results.append(
                    {"run_dir": str(run_dir), **{k: record.get(k) for k in ("status", "error")}}
                )
        return results

    def train_groups(
        self,
        groups: list[list[str]],
        cores: int,
        device: int | None,
        preempted: Callable[[], bool],
    ) -> bool:
        """``groups`` one after the other; True when a preemption stopped them."""
        import slowlearn.train  # noqa: F401 - torch and Lightning, imported before the freeze

        # As the training command does (slowlearn.train's __main__): what the job's imports
        # made lives until the process ends, and no collection need walk it.
        gc.freeze()
        for members in groups:
            if preempted():
                return True  # the signal came between two groups
            jobs = self.jobs(members)
            if jobs and self.train(jobs, cores, device, preempted):
                return True
        return False

    def gpus_for_processes(self) -> int:
        """The GPUs the training processes take one each: none where the members' trainer
        does not train on one GPU (a CPU trainer, an explicit device list, DDP)."""
        trainer = OmegaConf.create(self.groups[0][0]).trainer
        one_gpu = placement.trains_on_one_gpu(trainer.accelerator, trainer.devices)
        return placement.allocated_gpus() if one_gpu else 0

    def train_in_processes(self, cores: int, preemption: Preemption, context: Any) -> bool:
        """The groups in parallel processes (``placement.process_shares``); True when a preemption
        stopped them. A process that dies fails its unfinished members, with its exit code;
        after a preemption signal, a process that has not stopped within ``stop_grace_s`` is
        killed, and its members resume with the others from their last checkpoints.

        The processes start with the preemption signal blocked (``preemption_signal_blocked``)
        and learn of it through the event that this process's handler sets, which also
        reaches a process started after the signal."""
        from slowlearn.records import read_metrics, write_metrics

        shares = placement.process_shares(len(self.groups), cores, self.gpus_for_processes())
        threads = max(1, cores // len(shares))
        processes = []
        for indices, device in shares:
            share = GroupTask([self.groups[i] for i in indices], self.env_set, self.resume)
            args = (threads, device, preemption.event)
            process = context.Process(target=share.train_share, args=args)
            with preemption_signal_blocked():
                process.start()
            processes.append(process)
        for process, (indices, _) in zip(processes, shares, strict=True):
            self.join(process, preemption)
            if process.exitcode == 0 or preemption.came():
                continue  # after a preemption signal the unfinished members are requeued
            for run_dir in (d for i in indices for d in self.run_dirs()[i]):
                record = read_metrics(run_dir) if (run_dir / "metrics.json").exists() else {}
                if record.get("status") not in FINAL:
                    message = (
                        f"its training process ended with exit code {process.exitcode}; "
                        f"log: {job_log()}"
                    )
                    write_metrics(run_dir, record | {"status": "failed", "error": message})
        return preemption.came()

    def join(self, process: Any, preemption: Preemption) -> None:
        """Until ``process`` ends; once a preemption signal has come, at most ``stop_grace_s``
        from then on (the job must still requeue before its time ends)."""
        while process.is_alive():
            process.join(timeout=0.5)
            if preemption.came_at is None or process.exitcode is not None:
                continue
            if time.monotonic() - preemption.came_at > self.stop_grace_s:
                log.warning(
                    f"a training process did not stop within {self.stop_grace_s:g} s of the "
                    "preemption signal: killed; its groups resume from their last checkpoints"
                )
                process.kill()
                process.join()

    def train_share(self, cores: int, device: int | None, preempted: Any) -> None:
        """A training process's groups (``train_in_processes``): ``preempted``, the task's
        event, stops them at their next chunk; the task requeues."""
        self.train_groups(self.groups, cores, device, preempted.is_set)

    def train(
        self, jobs: list[Any], cores: int, device: int | None, preempted: Callable[[], bool]
    ) -> bool:
        """One group; True when a preemption stopped it."""
        from slowlearn.records import record_failure
        from slowlearn.train import record_unexpected

        devices = None if device is None else [device]
        try:
            outcomes = run_group(jobs, cores, devices=devices, preempted=preempted)
        except Exception as error:  # noqa: BLE001 - the group fails; the job goes on
            for job in jobs:
                record_failure(job.run_dir, job.cfg, record_unexpected(job.run_dir, error))
            return False
        return any(o.status == "interrupted" for o in outcomes) and preempted()

    def checkpoint(self) -> Any:
        """submitit's requeue: the same groups, each unfinished member resumed."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(
            GroupTask(self.groups, self.env_set, resume=True, stop_grace_s=self.stop_grace_s)
        )
