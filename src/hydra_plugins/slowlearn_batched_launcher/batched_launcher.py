"""``hydra/launcher=batched``: a whole multirun trained as one vectorised program per group.

It composes each job's config as Hydra's basic launcher does, gives each job its folder and
``.hydra/`` files, and runs its start-up checks (a job with a bad value fails alone). Then it
groups the jobs that can share one program (``slowlearn.groups``), trains each group through
the code a single run goes through (``slowlearn.train.train_and_test``), and writes every
member's own record. Hydra gets one JobReturn per job, in job order.

Hydra imports every module under ``hydra_plugins`` at start-up, also for single runs, so the
training code is imported only when a sweep is launched.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import (
    JobReturn,
    JobStatus,
    configure_log,
    env_override,
    setup_globals,
)
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict, read_write

from slowlearn.internals import (
    ComposedByChoices,
    flush_hydra_loggers,
    parse_config_files_once,
    save_hydra_config,
)

log = logging.getLogger(__name__)


class ComposedOnce:
    """The run's config loader, keeping each job config the sweeper composes until the
    launcher takes it.

    A sweeper composes every job of a batch to check it (``validate_batch_is_legal``) just
    before it hands the batch to the launcher, and Hydra's launchers compose each job again:
    a repeat meant for launchers whose jobs run in other processes. This launcher runs them in
    the sweeper's process, so it takes the sweeper's configs instead of composing them a second
    time (about 0.2 s a job on 2 cores). Everything else goes to Hydra's loader, which parses
    each config file once for all the jobs (``parse_config_files_once``) and composes the
    defaults of each set of config-group choices once (``ComposedByChoices``).
    """

    def __init__(self, loader: Any) -> None:
        parse_config_files_once(loader)
        self.by_choices = ComposedByChoices(loader)
        self.loader = loader
        self.composed: dict[tuple[str, ...], DictConfig] = {}

    def load_sweep_config(
        self, master_config: DictConfig, sweep_overrides: list[str]
    ) -> DictConfig:
        with self.by_choices.active():
            config = self.loader.load_sweep_config(master_config, sweep_overrides)
        self.composed[tuple(sweep_overrides)] = config
        return config

    def take(self, master_config: DictConfig, overrides: list[str]) -> DictConfig:
        """The job's config: the sweeper's, which nothing else holds, or a new one."""
        config = self.composed.pop(tuple(overrides), None)
        if config is None:
            with self.by_choices.active():
                config = self.loader.load_sweep_config(master_config, overrides)
        return config

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)


class StartedJob:
    """A job whose folder, .hydra/ files and on_job_start callbacks are done. (Not a
    dataclass: Hydra's plugin scan executes this module before it is in sys.modules.)"""

    def __init__(self, config: DictConfig, result: JobReturn, output_dir: Path) -> None:
        self.config = config  # with its hydra node, as callbacks get it
        self.result = result
        self.output_dir = output_dir
        self.job: Any = None  # slowlearn.train.Job once its checks passed


def check_options(max_members: Any, executor: Any, submitit: dict[str, Any]) -> None:
    """The launcher's own settings, each bad one named on one line with the valid choices."""
    if not isinstance(max_members, int) or max_members < 1:
        raise ValueError(
            f"hydra.launcher.max_members={max_members!r} is not allowed: a positive integer"
        )
    if executor not in ("inprocess", "local", "slurm"):
        raise ValueError(
            f"hydra.launcher.executor={executor!r} is not allowed: inprocess, local or slurm"
        )
    from slowlearn.group_submission import LAUNCHER_KEYS

    unknown = sorted(set(submitit) - set(LAUNCHER_KEYS))
    if unknown:
        raise ValueError(
            f"hydra.launcher.{unknown[0]} is not a setting of hydra/launcher=batched; "
            f"valid: max_members, executor, {', '.join(LAUNCHER_KEYS)}"
        )


def shared_folders(started: list[StartedJob]) -> list[tuple[StartedJob, int]]:
    """The jobs whose folder an earlier job already has (two swept values with one label),
    each with that earlier job's index."""
    first: dict[Path, int] = {}
    repeats = []
    for index, job in enumerate(started):
        if job.job is not None:
            earlier = first.setdefault(job.output_dir, index)
            if earlier != index:
                repeats.append((job, earlier))
    return repeats


def log_groups(jobs: int, failed: int, groups: list[list[StartedJob]]) -> None:
    """The groups and what sets their members apart, before anything trains."""
    from slowlearn.groups import member_differences

    log.info(
        f"Batched launcher: {jobs} jobs in {len(groups)} group{'s' * (len(groups) != 1)}"
        + (f"; {failed} failed {'its' if failed == 1 else 'their'} checks" if failed else "")
    )
    for number, group in enumerate(groups, start=1):
        differing = member_differences([s.job.cfg for s in group]) or ["nothing"]
        log.info(
            f"\tgroup {number}: {len(group)} member{'s' * (len(group) != 1)}, "
            f"differing in {', '.join(differing)}"
        )


class BatchedLauncher(Launcher):
    def __init__(self, max_members: int = 64, executor: str = "inprocess", **submitit: Any) -> None:
        check_options(max_members, executor, submitit)
        self.max_members = max_members
        # Where groups train: here, or as submitit jobs (slowlearn.group_submission).
        self.executor, self.submitit = executor, submitit
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None  # for the callbacks: groups train without

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        if not isinstance(hydra_context.config_loader, ComposedOnce):  # the sweeper's too
            hydra_context.config_loader = ComposedOnce(hydra_context.config_loader)
        self.config, self.hydra_context = config, hydra_context
        self.task_function = task_function

    # -------------------------------------------------------------- one job's start and end

    def start_job(self, config: DictConfig, overrides: list[str]) -> StartedJob:
        """What Hydra's run_job does before it calls the task function: the job's output
        folder, its .hydra/ files, its log file and the on_job_start callbacks, with this job's
        Hydra config set; then slowlearn's checks, which resolve the job's config (its paths
        and name) while that Hydra config is still set."""
        from slowlearn.errors import ConfigError
        from slowlearn.train import prepare

        previous = HydraConfig.instance().cfg
        HydraConfig.instance().set_config(config)
        try:
            sweep = config.hydra.sweep
            output_dir = Path(str(sweep.dir)) / str(sweep.subdir)
            with read_write(config.hydra.runtime), open_dict(config.hydra.runtime):
                config.hydra.runtime.output_dir = str(output_dir.absolute())
            HydraConfig.instance().set_config(config)
            task_cfg = copy.deepcopy(config)
            with read_write(task_cfg), open_dict(task_cfg):
                del task_cfg["hydra"]
            result = JobReturn(
                overrides=overrides,
                cfg=task_cfg,
                hydra_cfg=copy.deepcopy(HydraConfig.instance().cfg),
                working_dir=str(Path.cwd()),
            )
            output_dir.mkdir(parents=True, exist_ok=True)
            configure_log(config.hydra.job_logging, config.hydra.verbose)
            if config.hydra.output_subdir is not None:
                hydra_output = output_dir / str(config.hydra.output_subdir)
                save_hydra_config(task_cfg, "config.yaml", hydra_output)
                save_hydra_config(result.hydra_cfg, "hydra.yaml", hydra_output)
                save_hydra_config(config.hydra.overrides.task, "overrides.yaml", hydra_output)
            started = StartedJob(config, result, output_dir)
            with env_override(config.hydra.job.env_set):
                callbacks = self.hydra_context.callbacks
                callbacks.on_job_start(config=config, task_function=self.task_function)
            try:
                if config.hydra.job.chdir:
                    raise ConfigError(
                        "hydra.job.chdir=True is not allowed with hydra/launcher=batched: a "
                        "group's members train in one process, which has one working folder"
                    )
                started.job = prepare(task_cfg, overrides)
            except Exception as error:  # noqa: BLE001 - this job fails alone
                self.fail_job(started, error)
            return started
        finally:
            HydraConfig.instance().cfg = previous

    def end_job(self, started: StartedJob, status: JobStatus, value: Any) -> None:
        """What run_job does after the task function: the return value and on_job_end, with
        the job's Hydra config set."""
        started.result.status, started.result.return_value = status, value
        started.result.task_name = started.config.hydra.job.name
        flush_hydra_loggers()
        previous = HydraConfig.instance().cfg
        HydraConfig.instance().set_config(started.config)
        try:
            callbacks = self.hydra_context.callbacks
            callbacks.on_job_end(config=started.config, job_return=started.result)
        finally:
            HydraConfig.instance().cfg = previous

    def fail_job(self, started: StartedJob, error: Exception) -> None:
        """A job that fails before training: its one line, its record, its JobReturn."""
        from slowlearn.records import record_failure
        from slowlearn.train import record_unexpected

        message = record_unexpected(started.output_dir, error)
        record_failure(
            started.output_dir, started.job.cfg if started.job else started.result.cfg, message
        )
        started.job = None
        self.end_job(started, JobStatus.FAILED, RuntimeError(message))

    # -------------------------------------------------------------- the sweep

    def launch(self, job_overrides: Any, initial_job_idx: int) -> list[JobReturn]:
        from slowlearn.groups import form_groups

        setup_globals()
        assert self.config is not None and self.hydra_context is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        started: list[StartedJob] = []
        loader = self.hydra_context.config_loader
        for offset, overrides in enumerate(job_overrides):
            index = initial_job_idx + offset
            config = loader.take(self.config, list(overrides))
            with open_dict(config):
                config.hydra.job.id = index
                config.hydra.job.num = index
            started.append(self.start_job(config, list(overrides)))
        loader.composed.clear()  # checked by the sweeper, then not launched: nothing to keep
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        self.refuse_shared_folders(started)

        ready = [s for s in started if s.job is not None]
        groups = [
            [ready[i] for i in group]
            for group in form_groups([s.job.cfg for s in ready], self.max_members)
        ]
        log_groups(len(started), len(started) - len(ready), groups)
        if self.executor == "inprocess":
            for group in groups:
                self.train_group(group)
        elif groups:
            self.submit_groups(groups)
        return [s.result for s in started]

    def submit_groups(self, groups: list[list[StartedJob]]) -> None:
        """The groups as submitit jobs; each member's JobReturn from its record."""
        from slowlearn.group_submission import submit_groups

        assert self.config is not None
        results = submit_groups(
            [[s.job.cfg for s in group] for group in groups],
            [dict(group[0].config.hydra.job.env_set) for group in groups],
            self.executor,
            self.submitit,
            Path(str(self.config.hydra.sweep.dir)),
        )
        for group, members in zip(groups, results, strict=True):
            for s, (status, value) in zip(group, members, strict=True):
                self.end_member(s, status, value)

    def end_member(self, started: StartedJob, status: str, value: Any) -> None:
        """A trained member's JobReturn: a diverged one is a result, as with the basic
        launcher (it ends normally, not tested)."""
        if status == "completed":
            self.end_job(started, JobStatus.COMPLETED, value)
        elif status == "diverged":
            log.info(f"run diverged: {value} ({started.output_dir})")
            self.end_job(started, JobStatus.COMPLETED, None)
        else:
            self.end_job(started, JobStatus.FAILED, RuntimeError(f"run {status}: {value}"))

    def refuse_shared_folders(self, started: list[StartedJob]) -> None:
        """Two jobs whose names came out the same (two swept values with one label) would
        write one folder: the later ones fail, before anything trains."""
        from slowlearn.errors import ConfigError

        for job, earlier in shared_folders(started):
            self.fail_job(
                job,
                ConfigError(
                    f"run folder {job.output_dir} is also job {earlier}'s: two jobs of the "
                    "sweep got one name; sweep values that differ in their names"
                ),
            )

    def train_group(self, group: list[StartedJob]) -> None:
        """Train one group and end each of its jobs with its own outcome."""
        from slowlearn.group_task import run_group
        from slowlearn.placement import available_cores
        from slowlearn.train import failure_message

        jobs = [s.job for s in group]
        try:
            # The jobs' environment (hydra.job.env_set), equal in a group, while it trains.
            with env_override(group[0].config.hydra.job.env_set):
                outcomes = run_group(jobs, available_cores())
        except Exception as error:  # noqa: BLE001 - the group fails, the sweep goes on
            for s in group:
                self.fail_job(s, error)
            return
        interrupted = False
        for s, outcome in zip(group, outcomes, strict=True):
            if outcome.status == "completed":
                self.end_job(s, JobStatus.COMPLETED, outcome.metrics["test_acc"])
            elif outcome.status == "diverged":
                # A result, as with the basic launcher: the job ends normally (not tested).
                log.info(failure_message(s.job, outcome))
                self.end_job(s, JobStatus.COMPLETED, None)
            else:
                interrupted |= outcome.status == "interrupted"
                self.end_job(s, JobStatus.FAILED, RuntimeError(failure_message(s.job, outcome)))
        if interrupted:  # Ctrl-C: every member is recorded; the sweep stops here
            raise SystemExit(f"sweep interrupted: {len(group)} members recorded as interrupted")
