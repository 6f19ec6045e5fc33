"""Sweeps on Hydra's launchers: joblib processes, submitit (local here, SLURM by its sbatch
script), threads split between parallel jobs, and GPUs handed out round-robin."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import pytorch_lightning as pl
from hydra.utils import instantiate

from slowlearn import placement, train
from tests.conftest import TINY_ARGS, compose_config, job_dirs, read_metrics, run_train

ONE_EPOCH = [a for a in TINY_ARGS if not a.startswith("trainer.max_epochs")]
ONE_EPOCH.append("trainer.max_epochs=1")


@pytest.mark.parametrize(
    ("accelerator", "devices", "job_num", "n_gpus", "expected"),
    [
        ("auto", 1, 0, 4, [0]),
        ("auto", 1, 5, 4, [1]),
        ("gpu", "1", 3, 2, [1]),
        ("cuda", 1, 2, 2, [0]),
        ("auto", 1, None, 4, None),  # a single run keeps the configured device
        ("auto", 1, 3, 1, None),  # one GPU: nothing to spread
        ("auto", 1, 3, 0, None),  # no GPU
        ("cpu", 1, 3, 4, None),
        ("auto", 2, 3, 4, None),  # DDP over several devices
        ("gpu", [2], 3, 4, None),  # an explicit device list
    ],
)
def test_sweep_jobs_go_round_robin_over_the_gpus(
    accelerator: str, devices: object, job_num: int | None, n_gpus: int, expected: object
) -> None:
    assert placement.round_robin_devices(accelerator, devices, job_num, n_gpus) == expected


@pytest.mark.parametrize(
    ("overrides", "cores"),
    [
        ([], 8),
        (["hydra.mode=MULTIRUN"], 8),
        (["hydra.mode=MULTIRUN", "hydra/launcher=joblib"], 1),  # n_jobs=-1: a job per core
        (["hydra.mode=MULTIRUN", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], 4),
        (["hydra.mode=MULTIRUN", "hydra/launcher=joblib", "hydra.launcher.n_jobs=-3"], 1),
        (["hydra.mode=MULTIRUN", "hydra/launcher=joblib", "hydra.launcher.n_jobs=16"], 1),
        (["hydra.mode=MULTIRUN", "hydra/launcher=slurm"], 4),  # its cpus_per_task
        (["hydra.mode=MULTIRUN", "hydra/launcher=submitit_local"], 8),
    ],
)
def test_parallel_jobs_split_the_cores(
    hydra_config, monkeypatch: pytest.MonkeyPatch, overrides: list[str], cores: int
) -> None:
    monkeypatch.setattr(placement, "available_cores", lambda: 8)
    assert placement.cores_per_job(hydra_config(*overrides).hydra) == cores


def test_joblib_sweep_runs_two_jobs_with_the_cores_split(tiny_data: Path, tmp_path: Path) -> None:
    """On two cores (the sweep's affinity), two joblib jobs get one thread each."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        pytest.skip("needs two cores")
    os.sched_setaffinity(0, cores[:2])  # the sweep's process inherits it
    try:
        result = sweep_two_jobs(tiny_data, tmp_path)
    finally:
        os.sched_setaffinity(0, cores)
    records = [read_metrics(run_dir) for run_dir in job_dirs(tmp_path)]
    assert [r["status"] for r in records] == ["completed", "completed"]
    assert [r["threads"] for r in records] == [1, 1]
    assert result.stdout.splitlines()[-1] == "2 runs: 2 completed"  # the sweep's own line


def sweep_two_jobs(tiny_data: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    return run_train(
        [
            "-m",
            "seed=0,1",
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            f"data.dir={tiny_data}",
            f"hydra.sweep.dir={tmp_path}",
            *ONE_EPOCH,
        ],
        threads=None,
    )


def test_submitit_local_sweep_completes_both_jobs(tiny_data: Path, tmp_path: Path) -> None:
    run_train(
        [
            "-m",
            "seed=0,1",
            "hydra/launcher=submitit_local",
            "hydra.launcher.timeout_min=5",
            f"data.dir={tiny_data}",
            f"hydra.sweep.dir={tmp_path}",
            *ONE_EPOCH,
        ]
    )
    records = [read_metrics(run_dir) for run_dir in job_dirs(tmp_path)]
    assert [r["status"] for r in records] == ["completed", "completed"]
    assert {r["config"]["seed"] for r in records} == {0, 1}
    assert list((tmp_path / ".submitit").glob("*/*_result.pkl"))  # really ran through submitit


def test_slurm_launcher_passes_the_documented_resources_to_sbatch(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    submitit = pytest.importorskip("submitit")  # absent where only the GPU checks run
    cfg = compose_config(
        "hydra/launcher=slurm",
        "hydra.launcher.gpus_per_node=2",
        "hydra.launcher.timeout_min=30",
        "hydra.launcher.partition=gpu",
        f"hydra.sweep.dir={tmp_path}",
        "hydra.job.name=train",
    )
    launcher = instantiate(cfg.hydra.launcher)
    launcher.setup(hydra_context=None, task_function=None, config=cfg)

    class Submitted(Exception):
        """Raised instead of calling sbatch, carrying the executor the launcher built."""

    def submit(executor: object, *args: object) -> None:
        raise Submitted(executor)

    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", staticmethod(lambda: 1))  # "srun"
    monkeypatch.setattr(submitit.AutoExecutor, "map_array", submit)
    with pytest.raises(Submitted) as submitted:
        launcher.launch([["seed=0"]], initial_job_idx=0)
    script = submitted.value.args[0]._executor._make_submission_file_text("python -m x", "uid")
    for line in ("--gpus-per-node=2", "--time=30", "--partition=gpu", "--cpus-per-task=4"):
        assert f"#SBATCH {line}\n" in script


@pytest.mark.parametrize(
    ("kwargs", "processes"),
    [
        ({"strategy": "ddp", "devices": 2}, 2),  # Lightning re-runs the command per device
        ({"devices": 1}, 1),
    ],
)
def test_processes_that_lightning_would_start_are_counted(kwargs: dict, processes: int) -> None:
    # A sweep refuses the first case: each re-run would be the whole sweep again.
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, **kwargs)
    assert train.processes_started_by_lightning(trainer) == processes
