"""A sweep's groups as one submitit submission: ``hydra.launcher.executor=local`` or ``slurm``
of ``hydra/launcher=batched``.

Each array task trains ``groups_per_job`` groups (``slowlearn.group_task.GroupTask``); the
whole sweep is one ``map_array`` (on SLURM one job array, at most ``array_parallelism`` tasks
at once). The data is prepared here first, where the network is: compute nodes are often
offline. ``<sweep>/.groups/groups.json`` says which job trains which members and where its
logs are. What a member ended with is read from its metrics.json once its job has ended; the
members of a job that died (out of memory, node lost, scancel) that had not finished are
recorded as failed, with the job's log.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from slowlearn.group_task import FINAL, GroupTask
from slowlearn.records import read_metrics, write_atomically, write_metrics

log = logging.getLogger(__name__)

EXECUTORS = ("inprocess", "local", "slurm")
# The launcher's keys that go to submitit, by hydra-submitit-launcher's names and meanings.
SUBMITIT_KEYS = (
    "timeout_min",
    "partition",
    "qos",
    "account",
    "gpus_per_node",
    "cpus_per_task",
    "mem_gb",
    "constraint",
    "setup",
    "additional_parameters",
    "array_parallelism",
    "signal_delay_s",
)
# Every other key of the launcher's config besides max_members and executor.
LAUNCHER_KEYS = (*SUBMITIT_KEYS, "max_num_timeout", "submitit_folder", "groups_per_job", "name")
DEFAULT_SIGNAL_DELAY_S = {"local": 30, "slurm": 90}  # submitit's, where none is set
LOCAL_KEYS = ("timeout_min", "gpus_per_node", "signal_delay_s", "setup")  # the rest is SLURM's


def make_executor(executor: str, folder: str | Path, settings: Mapping[str, Any]) -> Any:
    """submitit's executor for ``executor``, with the launcher's settings (None: submitit's
    default), as hydra-submitit-launcher builds it."""
    import submitit

    given = {k: v for k, v in settings.items() if k in SUBMITIT_KEYS and v is not None}
    given = {
        k: OmegaConf.to_container(v) if OmegaConf.is_config(v) else v for k, v in given.items()
    }
    max_num_timeout = int(settings.get("max_num_timeout") or 0)
    if executor == "local":
        made = submitit.LocalExecutor(folder=folder, max_num_timeout=max_num_timeout)
        made.update_parameters(**{k: v for k, v in given.items() if k in LOCAL_KEYS})
    elif executor == "slurm":
        made = submitit.SlurmExecutor(folder=folder, max_num_timeout=max_num_timeout)
        # sbatch's names for AutoExecutor's (as hydra-submitit-launcher passes them)
        if "timeout_min" in given:
            given["time"] = given.pop("timeout_min")
        if "mem_gb" in given:
            given["mem"] = f"{given.pop('mem_gb')}GB"
        made.update_parameters(job_name=str(settings.get("name") or "slowlearn"), **given)
    else:
        raise ValueError(f"executor={executor!r}: one of {', '.join(EXECUTORS)}")
    return made


def prepare_data(cfgs: Sequence[DictConfig]) -> None:
    """Each dataset the jobs read, checked or fetched once, here (slowlearn.prepare)."""
    from slowlearn.prepare import prepare

    done = set()
    for cfg in cfgs:
        data = cfg.data
        if "dataset" not in data or (data.dir, data.dataset) in done:
            continue  # the neuron's single sample has no files
        done.add((data.dir, data.dataset))
        source = prepare(data.dir, data.dataset, data.get("online", True))
        log.info(f"{data.dataset} in {Path(data.dir).absolute()}: {source}")


def member_yaml(cfg: DictConfig) -> str:
    """A member's resolved config for a job elsewhere: its data folder absolute (the job may
    start in another working folder)."""
    cfg = OmegaConf.create(OmegaConf.to_container(cfg))
    if "dir" in cfg.get("data", {}):
        cfg.data.dir = str(Path(cfg.data.dir).absolute())
    return OmegaConf.to_yaml(cfg)


def submit_groups(
    groups: Sequence[Sequence[DictConfig]],
    env_sets: Sequence[Mapping[str, str]],
    executor: str,
    settings: Mapping[str, Any],
    sweep_dir: Path,
) -> list[list[tuple[str, Any]]]:
    """Train ``groups`` (each a list of members' resolved configs) as submitit jobs; for each
    member, in order: its status (completed, diverged, failed...) and its test accuracy or
    error message."""
    prepare_data([cfg for group in groups for cfg in group])
    per_job = max(1, int(settings.get("groups_per_job") or 1))
    # Half of the time between the signal and the job's end: the rest is for the requeue.
    grace = 0.5 * float(settings.get("signal_delay_s") or DEFAULT_SIGNAL_DELAY_S[executor])
    tasks, parts = [], []
    for start in range(0, len(groups), per_job):
        part = groups[start : start + per_job]
        members = [[member_yaml(c) for c in g] for g in part]
        tasks.append(GroupTask(members, dict(env_sets[start]), stop_grace_s=grace))
        parts.append([[Path(cfg.run_dir) for cfg in group] for group in part])
    folder = settings.get("submitit_folder") or sweep_dir / ".groups" / "%j"
    made = make_executor(executor, folder, settings)
    # One submission (on SLURM one array); each task is the job's callable itself, so that
    # submitit finds its checkpoint().
    with made.batch():
        jobs = [made.submit(task) for task in tasks]
    log.info(f"Submitted {len(jobs)} {executor} job{'s' * (len(jobs) != 1)}: {jobs[0].job_id}...")
    write_groups_json(sweep_dir, jobs, parts)
    results: dict[Path, tuple[str, Any]] = {}
    for job, part in zip(jobs, parts, strict=True):
        try:
            job.result()
            died = ""
        except Exception as error:  # noqa: BLE001 - its members fail, the others go on
            died = (
                f"its job {job.job_id} ended without a result ({type(error).__name__}); "
                f"log: {job.paths.stderr} and {job.paths.stdout}"
            )
        for run_dir in (run_dir for group in part for run_dir in group):
            results[run_dir] = member_result(run_dir, died)
    return [[results[Path(cfg.run_dir)] for cfg in group] for group in groups]


def member_result(run_dir: Path, died: str) -> tuple[str, Any]:
    """A member's status and value from its metrics.json; a member not finished when its job
    died is recorded as failed, with the job's log."""
    try:
        record = read_metrics(run_dir)
    except (OSError, ValueError):
        record = {}
    status = record.get("status", "missing")
    if status not in FINAL:
        message = died or f"its job ended with the member {status}"
        write_metrics(run_dir, record | {"status": "failed", "error": message})
        return "failed", message
    if status == "completed":
        return status, record["metrics"]["test_acc"]
    return status, record.get("error", "")


def write_groups_json(
    sweep_dir: Path, jobs: Sequence[Any], parts: Sequence[Sequence[Sequence[Path]]]
) -> None:
    """<sweep>/.groups/groups.json: each group's members, and its job's id and logs."""
    entries = []
    for job, part in zip(jobs, parts, strict=True):
        for members in part:
            entries.append(
                {
                    "group": len(entries) + 1,
                    "members": [str(p) for p in members],
                    "job_id": job.job_id,
                    "stdout": str(job.paths.stdout),
                    "stderr": str(job.paths.stderr),
                }
            )
    path = sweep_dir / ".groups" / "groups.json"
    write_atomically(path, json.dumps({"groups": entries}, indent=2).encode())
