"""Where a job trains: the cores it may use, and which GPU where several are visible; a
submitit job's allocation, and how its groups' processes share it."""

from __future__ import annotations

import os
from typing import Any

from hydra.types import RunMode
from omegaconf import DictConfig


def available_cores() -> int:
    """The cores this process may run on: its affinity mask honours taskset and SLURM."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cores_per_job(hydra_cfg: DictConfig) -> int:
    """The cores one job of this sweep may use: submitit's cpus_per_task when set, else the
    cores split between joblib's n_jobs parallel jobs (negative n_jobs counts as joblib does:
    -1 is one job per core)."""
    cores = available_cores()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return cores
    launcher = hydra_cfg.launcher
    if launcher.get("cpus_per_task"):
        return int(launcher.cpus_per_task)
    n_jobs = int(launcher.get("n_jobs", 1) or 1)
    return max(1, cores // (max(1, cores + 1 + n_jobs) if n_jobs < 0 else n_jobs))


def trains_on_one_gpu(accelerator: str, devices: Any) -> bool:
    """Whether a trainer of these settings trains on one GPU, where there is one (not on the
    CPU, not on an explicit device list, not DDP)."""
    return accelerator in ("auto", "gpu", "cuda") and str(devices) == "1"


def round_robin_devices(
    accelerator: str, devices: Any, job_num: int | None, n_gpus: int
) -> list[int] | None:
    """The GPU of job ``job_num`` of a sweep when several are visible: job k trains on GPU
    k % n_gpus, so parallel jobs spread over the GPUs instead of all landing on GPU 0.
    None keeps the trainer's devices: a single run, no GPU, CPU, or an explicit device list."""
    if job_num is None or n_gpus < 2 or not trains_on_one_gpu(accelerator, devices):
        return None
    return [job_num % n_gpus]


def allocated_cores() -> int:
    """The cores of this job: its affinity mask (which SLURM sets with task affinity), at most
    SLURM's cpus-per-task (a cluster without affinity shows the whole node)."""
    cores = available_cores()
    per_task = os.environ.get("SLURM_CPUS_PER_TASK", "")
    return min(cores, int(per_task)) if per_task.isdigit() and int(per_task) > 0 else cores


def allocated_gpus() -> int:
    """The GPUs this job sees (SLURM sets CUDA_VISIBLE_DEVICES to the allocation's)."""
    import torch

    return torch.cuda.device_count()


def process_shares(groups: int, cores: int, gpus: int) -> list[tuple[list[int], int | None]]:
    """The groups (by index) each parallel process trains, and its GPU: one process per GPU
    (``gpus``: those the groups may use), or per core without one, never more than there are
    groups."""
    processes = max(1, min(groups, gpus or cores))
    return [
        (list(range(first, groups, processes)), first if gpus else None)
        for first in range(processes)
    ]
