"""The Hydra entry point: compose, check, wire, train, test, and write metrics.json.

python -m slowlearn.train activation=sigmoid loss=mse
python -m slowlearn.train -m experiment=ablation
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import Logger, TensorBoardLogger
from pytorch_lightning.plugins.environments import LightningEnvironment
from pytorch_lightning.utilities import rank_zero_only

from slowlearn.data import write_atomically
from slowlearn.module import Divergence, LitClassifier

VAL_ACC_TARGET = 0.9  # "steps to 90% val accuracy": how fast an objective learns


def available_cores() -> int:
    """The cores this process may run on: its affinity mask honours taskset and SLURM."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cores_per_job() -> int:
    """The cores one job of this sweep may use: submitit's cpus_per_task when set, else the
    cores split between joblib's n_jobs parallel jobs (negative n_jobs counts as joblib does:
    -1 is one job per core)."""
    hydra_cfg = HydraConfig.get()
    cores = available_cores()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return cores
    launcher = hydra_cfg.launcher
    if launcher.get("cpus_per_task"):
        return int(launcher.cpus_per_task)
    n_jobs = int(launcher.get("n_jobs", 1) or 1)
    return max(1, cores // (max(1, cores + 1 + n_jobs) if n_jobs < 0 else n_jobs))


def processes_started_by_lightning(trainer: pl.Trainer) -> int:
    """How many processes Lightning itself starts for this run on this machine: with DDP on a
    plain machine, one copy of this command per device. Processes that a cluster starts
    (SLURM tasks, torchrun) get their own cores and are not counted."""
    environment = getattr(trainer.strategy, "cluster_environment", None)
    return trainer.num_devices if isinstance(environment, LightningEnvironment) else 1


def configure_threads(cfg: DictConfig, processes: int) -> int:
    """Split the job's cores between its processes: oversubscribed torch processes run many
    times slower than one (two processes of 2 threads on 2 cores: about 9x)."""
    threads = cfg.threads or max(1, cores_per_job() // processes)
    torch.set_num_threads(threads)
    return threads


def round_robin_devices(
    accelerator: str, devices: Any, job_num: int | None, n_gpus: int
) -> list[int] | None:
    """The GPU of job ``job_num`` of a sweep when several are visible: job k trains on GPU
    k % n_gpus, so parallel jobs spread over the GPUs instead of all landing on GPU 0.
    None keeps the trainer's devices: a single run, no GPU, CPU, or an explicit device list."""
    single_gpu = accelerator in ("auto", "gpu", "cuda") and str(devices) == "1"
    if job_num is None or n_gpus < 2 or not single_gpu:
        return None
    return [job_num % n_gpus]


def summarise(module: LitClassifier) -> dict[str, Any]:
    """The final metrics: test accuracy, best val accuracy and how fast the target was hit."""
    history, test = module.val_history, module.test_results
    reached = next((h for h in history if h["val/acc"] >= VAL_ACC_TARGET), None)
    return {
        "test_acc": test.get("test/acc"),
        "test_loss": test.get("test/loss"),
        "best_val_acc": max((h["val/acc"] for h in history), default=None),
        "final_val_acc": history[-1]["val/acc"] if history else None,
        "epoch_to_90_val_acc": reached["epoch"] if reached else None,
        "step_to_90_val_acc": reached["step"] if reached else None,
        "final_train_loss": module.records.last_finite_loss,
        "val_history": history,
        "epoch_seconds": module.epoch_seconds,
    }


def hparams(cfg: DictConfig) -> dict[str, Any]:
    """The settings that tell runs apart, for TensorBoard's HPARAMS tab."""
    keys = {
        "activation": "activation.name",
        "loss": "loss.name",
        "init": "model.init",
        "hidden_sizes": "model.hidden_sizes",
        "hidden_activation": "model.hidden_activation",
        "optimizer": "optimizer._target_",
        "lr": "optimizer.lr",
        "momentum": "optimizer.momentum",
        "batch_size": "data.batch_size",
        "dataset": "data.dataset",
        "max_epochs": "trainer.max_epochs",
        "seed": "seed",
    }
    values = {name: OmegaConf.select(cfg, key) for name, key in keys.items()}
    values["optimizer"] = str(values["optimizer"]).rsplit(".", 1)[-1]
    return {
        name: str(value) if isinstance(value, list | tuple) else value
        for name, value in values.items()
        if value is not None
    }


def log_hparams(loggers: list, cfg: DictConfig, summary: dict[str, Any]) -> None:
    metrics = {
        f"hparams/{name}": float(summary[name])
        for name in ("test_acc", "best_val_acc", "step_to_90_val_acc", "final_train_loss")
        if summary.get(name) is not None and math.isfinite(float(summary[name]))
    }
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(hparams(cfg), metrics)


@rank_zero_only  # with DDP every rank runs main(); the run folder has one metrics.json
def write_metrics(output_dir: Path, record: dict[str, Any]) -> None:
    write_atomically(output_dir / "metrics.json", json.dumps(record, indent=2).encode())


def instantiate_run(
    cfg: DictConfig, **trainer_kwargs: Any
) -> tuple[pl.LightningDataModule, LitClassifier, list[Logger], pl.Trainer]:
    """A run's objects from its config; the benchmark builds its Lightning runs with this too."""
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model)
    module = instantiate(cfg.module, model=model, optimizer=instantiate(cfg.optimizer))
    loggers = [instantiate(logger) for logger in cfg.get("logger", {}).values()]
    callbacks = [instantiate(callback) for callback in cfg.get("callbacks", {}).values()]
    trainer = instantiate(cfg.trainer, logger=loggers, callbacks=callbacks, **trainer_kwargs)
    return datamodule, module, loggers, trainer


@hydra.main(version_base="1.3", config_path="../../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    hydra_cfg = HydraConfig.get()
    output_dir = Path(hydra_cfg.runtime.output_dir)
    sweep = hydra_cfg.mode == RunMode.MULTIRUN
    pl.seed_everything(cfg.seed, workers=True, verbose=False)

    job_num = hydra_cfg.job.num if sweep else None
    gpu = round_robin_devices(
        cfg.trainer.accelerator, cfg.trainer.devices, job_num, torch.cuda.device_count()
    )
    datamodule, module, loggers, trainer = instantiate_run(cfg, **({"devices": gpu} if gpu else {}))
    processes = processes_started_by_lightning(trainer)
    if sweep and processes > 1:
        # Lightning's DDP launcher starts each extra process by re-running this command line,
        # which here is the whole sweep.
        raise ValueError(
            "a sweep cannot start DDP processes itself: run trainer=ddp as a single run, or "
            "sweep with hydra/launcher=slurm and hydra.launcher.tasks_per_node=<devices>"
        )
    threads = configure_threads(cfg, processes)

    record: dict[str, Any] = {
        "status": "running",
        "run_name": cfg.run_name,
        "output_dir": str(output_dir),
        "threads": threads,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    write_metrics(output_dir, record)
    started = time.perf_counter()
    try:
        trainer.fit(module, datamodule=datamodule)
        trainer.test(module, datamodule=datamodule, verbose=False)
        record["status"] = "completed"
    except Divergence as error:
        record |= {"status": "diverged", "error": str(error)}
    except (KeyboardInterrupt, SystemExit) as error:
        # Lightning turns Ctrl-C into a graceful shutdown that ends in SystemExit(1).
        record |= {"status": "interrupted", "error": repr(error)}
    except Exception as error:
        record |= {"status": "failed", "error": f"{type(error).__name__}: {error}"}
    record["wall_seconds"] = time.perf_counter() - started
    record["data_source"] = getattr(datamodule, "source", "")
    record["device"] = str(module.device)
    record["metrics"] = summarise(module)
    write_metrics(output_dir, record)
    if record["status"] == "completed":
        log_hparams(loggers, cfg, record["metrics"])
    for logger in loggers:
        logger.finalize(record["status"])

    if record["status"] != "completed":
        message = f"run {record['status']}: {record.get('error', '')} ({output_dir})"
        if sweep and record["status"] != "interrupted":
            raise RuntimeError(message)  # recorded as failed; the sweep goes on with its jobs
        sys.exit(message)
    test_acc = record["metrics"]["test_acc"]
    print(f"test accuracy {test_acc:.4f}; run folder {output_dir}")
    print(f"inspect: tensorboard --logdir {output_dir.parent if sweep else output_dir}")
    return test_acc


if __name__ == "__main__":
    main()
