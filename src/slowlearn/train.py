"""The Hydra entry point: prepare a run, train and test it, write its record.

    python -m slowlearn.train activation=sigmoid loss=mse
    python -m slowlearn.train -m experiment=ablation hydra/launcher=batched

``prepare``, ``train_and_test`` and ``write_record`` take the config and the output folder as
arguments and never read HydraConfig: the batched launcher (``hydra_plugins/
slowlearn_batched_launcher``) prepares many jobs in one process and trains each group of them
through ``train_and_test``, the code that a single run goes through as a group of one.
"""

from __future__ import annotations

import gc

if __name__ == "__main__":
    # The command's imports (torch, Lightning, sympy) allocate most of its heap, nearly all
    # of it to live until the exit: the collector's full passes over it while they run cost
    # 1 s of the 4 to 5 s they take on a 2-core machine and would free 9 MiB. The __main__
    # block at the end freezes what they made and turns the collector back on.
    gc.disable()

import logging
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import Logger
from pytorch_lightning.plugins.environments import LightningEnvironment
from pytorch_lightning.utilities import rank_zero_only

from slowlearn.checkpoints import LAST, MemberCheckpoints
from slowlearn.checks import check_config, in_current_keys, renamed_key, unknown_group_option
from slowlearn.errors import ConfigError
from slowlearn.group_resume import resume_path
from slowlearn.groups import build_module
from slowlearn.interrupts import StopAtNextBatch
from slowlearn.member_logs import Divergence
from slowlearn.naming import override_key, register_resolvers
from slowlearn.placement import cores_per_job, round_robin_devices
from slowlearn.prepare import DataError
from slowlearn.progress import StepProgressBar
from slowlearn.records import log_hparams, read_metrics, record_failure, summarise, write_metrics

RESUME_MAY_CHANGE = ("trainer.max_epochs", "threads")  # the rest is the run's own config
# Failures whose one-line message says everything; any other is a bug, and its traceback goes
# to the run folder's error.log.
EXPLAINED = (ConfigError, DataError)

register_resolvers()


class NoAdvertisement(logging.Filter):
    """Lightning prints a tip for a hosted logging service at every run; this is not one."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(NoAdvertisement())


# ------------------------------------------------------------------ cores and devices


def processes_started_by_lightning(trainer: pl.Trainer) -> int:
    """How many processes Lightning itself starts for this run on this machine: with DDP on a
    plain machine, one copy of this command per device. Processes that a cluster starts
    (SLURM tasks, torchrun) get their own cores and are not counted."""
    environment = getattr(trainer.strategy, "cluster_environment", None)
    return trainer.num_devices if isinstance(environment, LightningEnvironment) else 1


# ------------------------------------------------------------------ prepare


@dataclass
class Job:
    """One run, ready to train: its resolved config and where it writes."""

    cfg: DictConfig
    checkpoint: Path | None = None  # resume from here

    @classmethod
    def resolved(cls, cfg: DictConfig, checkpoint: Path | None = None) -> Job:
        """The job of ``cfg`` with its interpolations resolved now: its paths and name are
        this job's, as long as its Hydra config is the one set."""
        return cls(OmegaConf.create(OmegaConf.to_container(cfg, resolve=True)), checkpoint)

    @property
    def run_dir(self) -> Path:
        """Where checkpoints, events and metrics.json go: the job folder, or the resumed run."""
        return Path(self.cfg.run_dir)


def resumed_config(cfg: DictConfig, overrides: Iterable[str]) -> tuple[DictConfig, Path]:
    """The config of the run in ``cfg.resume`` and its last checkpoint. Only the settings in
    RESUME_MAY_CHANGE may be overridden: a continued run is the same experiment."""
    run_dir = Path(cfg.resume)
    saved, checkpoint = run_dir / ".hydra" / "config.yaml", run_dir / "checkpoints" / LAST
    if not saved.is_file():
        raise ConfigError(f"resume={str(run_dir)!r} is not allowed: not a run folder (no {saved})")
    if not checkpoint.is_file():
        raise ConfigError(
            f"resume={str(run_dir)!r} is not allowed: no {checkpoint} yet (the run stopped "
            "before its first epoch ended); start it again instead"
        )

    changed = [o for o in overrides if override_key(o) != "resume"]
    refused = [o for o in changed if override_key(o) not in RESUME_MAY_CHANGE]
    if refused:
        raise ConfigError(
            f"{', '.join(refused)} is not allowed with resume: a resumed run keeps its own "
            f"config; only {', '.join(RESUME_MAY_CHANGE)} may change"
        )
    resumed = in_current_keys(OmegaConf.load(saved))
    resumed.resume = str(run_dir)
    record = read_metrics(run_dir)
    # Its name as its sweep gave it (the name of a sweep's member depends on the sweep).
    resumed.run_name = record.get("run_name", resumed.get("run_name"))
    resumed.varied_settings = record.get("config", {}).get("varied_settings", [])
    for override in changed:
        key = override_key(override)
        OmegaConf.update(resumed, key, OmegaConf.select(cfg, key))
    # Runs from before the batched launcher had ModelCheckpoint callbacks; their checkpoints
    # are slowlearn.checkpoints' now, in the same format.
    callbacks = resumed.get("callbacks") or {}
    for name in [n for n, c in callbacks.items() if "ModelCheckpoint" in str(c.get("_target_"))]:
        del callbacks[name]
    saved_state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    epochs_done = saved_state["epoch"] + 1
    # Nothing to train: a completed run keeps its results as they are; a run killed after its
    # last checkpoint resumes to be tested and recorded.
    if epochs_done >= resumed.trainer.max_epochs and record["status"] == "completed":
        raise ConfigError(
            f"resume={str(run_dir)!r} is not allowed: it has trained all its "
            f"{epochs_done} epochs; add trainer.max_epochs=N with N > {epochs_done} to go on"
        )
    hide_events_after(resumed, saved_state["global_step"])
    return resumed, checkpoint


def hide_events_after(cfg: DictConfig, step: int) -> None:
    """A resumed run's TensorBoard loggers hide what the interrupted run logged after its
    checkpoint's ``step`` (-1: everything), so that the curves continue from it."""
    for logger in cfg.get("logger", {}).values():
        if str(logger.get("_target_", "")).endswith("TensorBoardLogger"):
            logger.purge_step = step + 1


def prepare(cfg: DictConfig, overrides: Sequence[str]) -> Job:
    """Check a run's config and resolve it, before any data or training work. Raises
    ConfigError with one line naming the bad value."""
    checkpoint = None
    if cfg.get("resume"):
        cfg, checkpoint = resumed_config(cfg, overrides)
    check_config(cfg)
    job = Job.resolved(cfg, checkpoint)
    # With DDP, Lightning re-runs this command for the other ranks, in rank 0's folder.
    if checkpoint is None and rank_zero_only.rank == 0 and (job.run_dir / "metrics.json").exists():
        raise ConfigError(
            f"run folder {job.run_dir} already holds a run; resume it with "
            f"resume={job.run_dir}, or start a new one elsewhere"
        )
    return job


def record_unexpected(run_dir: Path, error: BaseException) -> str:
    """The one-line message of a failure; a bug also leaves its traceback in error.log."""
    message = f"{type(error).__name__}: {error}"
    if isinstance(error, EXPLAINED):
        return message
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "error.log").write_text("".join(traceback.format_exception(error)))
    return f"{message} (traceback in {run_dir / 'error.log'})"


# ------------------------------------------------------------------ train and test


@dataclass
class Outcome:
    """How one run's training ended, with what it measured."""

    status: str
    error: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)  # the running record, wall time ...
    loggers: list[Logger] = field(default_factory=list)


def configure_threads(cfg: DictConfig, cores: int, processes: int) -> int:
    """Split the job's cores between its processes: oversubscribed torch processes run many
    times slower than one (two processes of 2 threads on 2 cores: about 9x)."""
    threads = cfg.threads or max(1, cores // processes)
    torch.set_num_threads(threads)
    return threads


def running_record(job: Job, threads: int, group_size: int) -> dict[str, Any]:
    return {
        "status": "running",
        "run_name": job.cfg.run_name,
        "output_dir": str(job.run_dir),
        "threads": threads,
        "group_size": group_size,  # members trained together in one program
        "config": OmegaConf.to_container(job.cfg),
    }


def train_and_test(
    jobs: Sequence[Job],
    cores: int,
    in_sweep: bool = False,
    devices: list[int] | None = None,
    stop_asked: Callable[[], bool] = lambda: False,
) -> list[Outcome]:
    """Train R >= 1 jobs as one program and test them; one Outcome per job, in order.
    ``stop_asked``: a stop asked for from outside (a cluster's signal), as Ctrl-C asks.

    The jobs' configs may differ only in what a member may differ in (``slowlearn.groups``).
    Raises ConfigError, before any training, for a setup that cannot run.
    """
    first = jobs[0].cfg
    module = build_module([job.cfg for job in jobs])
    seeds = [job.cfg.data.seed for job in jobs] if "seed" in first.data else None
    datamodule = instantiate(first.data, **({"seed": seeds} if seeds else {}))
    module.member_loggers = [
        [instantiate(logger) for logger in job.cfg.get("logger", {}).values()] for job in jobs
    ]
    callbacks = [instantiate(callback) for callback in first.get("callbacks", {}).values()]
    checkpoints = MemberCheckpoints([job.run_dir for job in jobs])
    interrupts = StopAtNextBatch(stop_asked)
    callbacks += [checkpoints, interrupts]
    if first.trainer.get("enable_progress_bar", True):
        callbacks.append(StepProgressBar())
    trainer = instantiate(
        first.trainer,
        logger=[logger for loggers in module.member_loggers for logger in loggers],
        callbacks=callbacks,
        # slowlearn.checkpoints writes each member's own (a Checkpoint: Lightning adds none)
        enable_checkpointing=True,
        **({"devices": devices} if devices else {}),
    )
    processes = processes_started_by_lightning(trainer)
    if in_sweep and processes > 1:
        # Lightning's DDP launcher starts each extra process by re-running this command
        # line, which here is the whole sweep.
        raise ConfigError(
            "a sweep cannot start DDP processes itself: run trainer=ddp as a single run, "
            "or sweep with hydra/launcher=slurm and hydra.launcher.tasks_per_node=<devices>"
        )
    threads = configure_threads(first, cores, processes)
    if rank_zero_only.rank == 0:
        for job in jobs:
            write_metrics(job.run_dir, running_record(job, threads, len(jobs)))

    status, errors = "completed", [""] * len(jobs)
    started = time.perf_counter()
    try:
        with interrupts.installed(), resume_path(jobs, module) as checkpoint:
            trainer.fit(module, datamodule=datamodule, ckpt_path=checkpoint)
            trainer.test(module, datamodule=datamodule, verbose=False)
    except Divergence:
        status = "diverged"  # every member: each one's own message is in its history
    except (KeyboardInterrupt, SystemExit) as interruption:
        # Lightning turns Ctrl-C into a graceful shutdown that ends in SystemExit(1).
        status, errors = "interrupted", [repr(interruption)] * len(jobs)
    except Exception as failure:  # noqa: BLE001 - recorded in each member's folder
        status = "failed"
        errors = [record_unexpected(job.run_dir, failure) for job in jobs]
    wall_seconds = time.perf_counter() - started
    outcomes = []
    members = zip(jobs, module.histories, module.member_loggers, errors, strict=True)
    for job, history, loggers, member_error in members:
        member_status = status
        # A member that diverged before an interruption has its result: resuming it from its
        # last finite checkpoint would only diverge again.
        if history.diverged:
            member_status, member_error = "diverged", history.diverged
        extra = {"epoch_training_seconds": module.timer.epoch_training_seconds}
        if module.step.trace and "test/output" in history.test_results:
            extra["final_output"] = history.test_results["test/output"]
        metrics = summarise(
            history.val_history,
            history.test_results,
            module.timer.epoch_seconds,
            history.last_logged_loss,
            extra,
        )
        record = running_record(job, threads, len(jobs)) | {
            "wall_seconds": wall_seconds,
            # Where the group's time went (a member of a group shares its group's).
            "seconds": {
                "data": getattr(datamodule, "seconds", 0.0),
                **module.timer.seconds,
                "checkpoints": checkpoints.seconds,
            },
            "data_source": getattr(datamodule, "source", ""),
            "device": str(trainer.strategy.root_device),  # the module is back on the CPU now
        }
        outcomes.append(Outcome(member_status, member_error, metrics, record, loggers))
    return outcomes


# ------------------------------------------------------------------ record


@rank_zero_only  # with DDP every rank runs main(); the run folder has one metrics.json
def write_record(job: Job, outcome: Outcome) -> None:
    """metrics.json with the run's status and metrics, the HPARAMS tab, closed event files."""
    record = outcome.record | {"status": outcome.status, "metrics": outcome.metrics}
    if outcome.error:
        record["error"] = outcome.error
    write_metrics(job.run_dir, record)
    if outcome.status == "completed":
        log_hparams(outcome.loggers, job.cfg, outcome.metrics)
    for logger in outcome.loggers:
        logger.finalize(outcome.status)


def result_line(job: Job, outcome: Outcome) -> str:
    """What a finished run prints: test accuracy, or a single sample's output and cost."""
    metrics = outcome.metrics
    if "final_output" in metrics:  # the neuron: accuracy on one sample means nothing
        measured = f"final output {metrics['final_output']:.4f}, cost {metrics['test_loss']:.4f}"
    else:
        measured = f"test accuracy {metrics['test_acc']:.4f}"
    return f"{job.cfg.run_name}: {measured}; run folder {job.run_dir}"


def failure_message(job: Job, outcome: Outcome) -> str:
    return f"run {outcome.status}: {outcome.error} ({job.run_dir})"


@hydra.main(version_base="1.3", config_path="../../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    hydra_cfg = HydraConfig.get()
    sweep = hydra_cfg.mode == RunMode.MULTIRUN
    job_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        job = prepare(cfg, hydra_cfg.overrides.task)
        job_num = hydra_cfg.job.num if sweep else None
        gpu = round_robin_devices(
            job.cfg.trainer.accelerator, job.cfg.trainer.devices, job_num, torch.cuda.device_count()
        )
        (outcome,) = train_and_test([job], cores_per_job(hydra_cfg), in_sweep=sweep, devices=gpu)
    except Exception as error:
        message = record_unexpected(job_dir, error)
        if not sweep:  # a bad value: its one line; a bug: where its traceback is
            sys.exit(f"error: {error if isinstance(error, EXPLAINED) else message}")
        record_failure(job_dir, cfg, message)
        raise  # Hydra records this job as failed and goes on with the others
    write_record(job, outcome)
    if sweep and outcome.status == "diverged":
        # A result of the sweep (an lr grid may reach lrs that diverge), not an error: the
        # job returns normally, and the sweep's summary line counts it.
        print(failure_message(job, outcome))
        return None
    if outcome.status != "completed":
        if sweep and outcome.status != "interrupted":
            raise RuntimeError(failure_message(job, outcome))  # the sweep goes on
        sys.exit(failure_message(job, outcome))
    print(result_line(job, outcome))
    folder = Path(hydra_cfg.sweep.dir) if sweep else job.run_dir.parent
    print(f"inspect: make tensorboard RUN={folder}")
    return outcome.metrics["test_acc"]


if __name__ == "__main__":
    if problem := renamed_key(sys.argv[1:]) or unknown_group_option(sys.argv[1:]):
        sys.exit(f"error: {problem}")
    # What the imports made lives until the process ends. Frozen out of the collector's
    # reach, it is walked neither by the full collections during the runs nor by the
    # interpreter's at exit: about 3 s of the 35 s ablation command on a 2-core machine, the
    # imports' 1 s aside (docs/performance.md).
    gc.freeze()
    gc.enable()
    main()
