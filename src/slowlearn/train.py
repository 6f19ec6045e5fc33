"""The Hydra entry point: compose, check, wire, train, test, and write metrics.json.

python -m slowlearn.train activation=sigmoid loss=mse
python -m slowlearn.train -m experiment=ablation
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from pytorch_lightning.loggers import Logger, TensorBoardLogger
from pytorch_lightning.plugins.environments import LightningEnvironment
from pytorch_lightning.utilities import rank_zero_only
from torch.utils.tensorboard.summary import hparams as hparams_summaries

from slowlearn.data import DATASETS, write_atomically
from slowlearn.losses import ACTIVATIONS, LOSSES
from slowlearn.model import HIDDEN_ACTIVATIONS, INITS
from slowlearn.module import Divergence, LitClassifier

VAL_ACC_TARGET = 0.9  # "steps to 90% val accuracy": how fast an objective learns
HPARAM_METRICS = ("test_acc", "best_val_acc", "step_to_90_val_acc", "final_train_loss")


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
        "final_train_loss": module.records.last_logged_loss,  # mean of the last window
        "val_history": history,
        "epoch_seconds": module.epoch_seconds,
    }


# The settings that tell runs apart: name -> key in the config. TensorBoard's HPARAMS tab and
# the report's summary.csv both show them.
RUN_SETTINGS = {
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


def run_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """The RUN_SETTINGS of a plain config (None where one does not apply), the optimizer by
    its class name."""
    values = {}
    for name, key in RUN_SETTINGS.items():
        value: Any = config
        for part in key.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        values[name] = value
    values["optimizer"] = str(values["optimizer"]).rsplit(".", 1)[-1]
    return values


def hparams(cfg: DictConfig) -> dict[str, Any]:
    """The settings for TensorBoard's HPARAMS tab. Every run names every column, "none" where
    a setting does not apply (Adam's momentum, the neuron's init): TensorBoard takes the
    columns of a sweep from one arbitrary run."""
    settings = run_settings(OmegaConf.to_container(cfg, resolve=True))
    return {name: "none" if value is None else value for name, value in settings.items()}


def log_hparams(loggers: list, cfg: DictConfig, summary: dict[str, Any]) -> None:
    """The HPARAMS tab's data: the settings, the metric columns, and this run's values.

    Every run declares all four metric columns, also one it has no value for (90% never
    reached): TensorBoard takes the columns of the whole sweep from one arbitrary run.
    """
    tags = {name: f"hparams/{name}" for name in HPARAM_METRICS}
    metrics = {
        tags[name]: float(summary[name])
        for name in HPARAM_METRICS
        if summary.get(name) is not None and math.isfinite(float(summary[name]))
    }
    # TensorBoard takes numbers, strings and bools; the rest (hidden_sizes, a ListConfig) as
    # text, as Lightning's log_hyperparams would.
    params = {
        name: value if isinstance(value, bool | int | float | str) else str(value)
        for name, value in hparams(cfg).items()
    }
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_metrics(metrics, step=0)
            # What Lightning's log_hyperparams writes, with every column declared.
            writer = logger.experiment._get_file_writer()
            for summary_proto in hparams_summaries(params, dict.fromkeys(tags.values())):
                writer.add_summary(summary_proto)


@rank_zero_only  # with DDP every rank runs main(); the run folder has one metrics.json
def write_metrics(output_dir: Path, record: dict[str, Any]) -> None:
    write_atomically(output_dir / "metrics.json", json.dumps(record, indent=2).encode())


class ConfigError(ValueError):
    """A config value that is not allowed: one line naming the key, the value and the choices."""


TRAINING_SET_SIZE = 60_000  # MNIST and Fashion-MNIST alike
RESUME_MAY_CHANGE = ("trainer.max_epochs", "threads")  # the rest is the run's own config


def folder_is_writable(folder: str) -> bool:
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def check_config(cfg: DictConfig) -> None:
    """Fail fast, before any data or training work, on a value that cannot work."""

    def require(ok: bool, key: str, allowed: str) -> None:
        if not ok:
            value = OmegaConf.select(cfg, key)
            shown = list(value) if isinstance(value, ListConfig) else value
            raise ConfigError(f"{key}={shown!r} is not allowed: {allowed}")

    def number(key: str) -> Any:
        value = OmegaConf.select(cfg, key)
        return value if isinstance(value, int | float) and not isinstance(value, bool) else None

    def positive(key: str, integer: bool = False) -> None:
        value = number(key)
        ok = value is not None and value > 0 and (isinstance(value, int) or not integer)
        require(ok, key, "a positive integer" if integer else "a positive number")

    def one_of(key: str, choices: Iterable[str]) -> None:
        require(OmegaConf.select(cfg, key) in choices, key, f"one of {', '.join(choices)}")

    one_of("activation.name", ACTIVATIONS)
    one_of("loss.name", LOSSES)
    base = OmegaConf.select(cfg, "loss.log_base")
    require(
        base == "e" or (number("loss.log_base") is not None and base > 0 and base != 1),
        "loss.log_base",
        "e, or a positive number other than 1 (2 gives bits)",
    )
    positive("optimizer.lr")
    if OmegaConf.select(cfg, "optimizer.momentum") is not None:
        momentum = number("optimizer.momentum")
        require(momentum is not None and momentum >= 0, "optimizer.momentum", "0 or more")
    if cfg.get("threads") is not None:
        positive("threads", integer=True)
    for key in ("module.log_every_n_steps", "module.diagnostics_window"):
        positive(key, integer=True)
    every = number("module.diagnostics_every_n_steps")
    require(
        isinstance(every, int) and every >= 0,
        "module.diagnostics_every_n_steps",
        "0 (off) or a positive integer",
    )
    try:
        get_class(cfg.optimizer._target_)
    except Exception:  # noqa: BLE001 - any import failure means the same to the user
        require(False, "optimizer._target_", "an importable optimizer class, e.g. torch.optim.SGD")
    positive("trainer.max_epochs", integer=True)
    model, data = cfg.model, cfg.data
    if "hidden_sizes" in model:
        sizes = model.hidden_sizes
        require(
            isinstance(sizes, ListConfig)
            and len(sizes) > 0
            and all(isinstance(size, int) and size > 0 for size in sizes),
            "model.hidden_sizes",
            "a non-empty list of positive integers, e.g. [100, 100]",
        )
    if "hidden_activation" in model:
        one_of("model.hidden_activation", HIDDEN_ACTIVATIONS)
    if "init" in model:
        one_of("model.init", INITS)
    if "dataset" in data:
        one_of("data.dataset", DATASETS)
    for key in ("batch_size", "steps_per_chunk", "eval_batch_size", "steps"):
        if key in data:
            positive(f"data.{key}", integer=True)
    if "split" in data:
        one_of("data.split", ("random", "tail"))
    if "val_size" in data:
        value = number("data.val_size")
        require(
            isinstance(value, int) and 0 < value < TRAINING_SET_SIZE,
            "data.val_size",
            f"1 to {TRAINING_SET_SIZE - 1} (the training set has {TRAINING_SET_SIZE} samples)",
        )
    if "dir" in data:
        require(
            folder_is_writable(data.dir), "data.dir", "a folder that can be created and written"
        )


def resumed_config(cfg: DictConfig, overrides: Iterable[str]) -> tuple[DictConfig, Path]:
    """The config of the run in ``cfg.resume`` and its last checkpoint. Only the settings in
    RESUME_MAY_CHANGE may be overridden: a continued run is the same experiment."""
    run_dir = Path(cfg.resume)
    saved, checkpoint = run_dir / ".hydra" / "config.yaml", run_dir / "checkpoints" / "last.ckpt"
    if not saved.is_file():
        raise ConfigError(f"resume={str(run_dir)!r} is not allowed: not a run folder (no {saved})")
    if not checkpoint.is_file():
        raise ConfigError(
            f"resume={str(run_dir)!r} is not allowed: no {checkpoint} yet (the run stopped "
            "before its first epoch ended); start it again instead"
        )

    def key_of(override: str) -> str:
        return override.split("=", 1)[0].lstrip("+~")

    changed = [o for o in overrides if key_of(o) != "resume"]
    refused = [o for o in changed if key_of(o) not in RESUME_MAY_CHANGE]
    if refused:
        raise ConfigError(
            f"{', '.join(refused)} is not allowed with resume: a resumed run keeps its own "
            f"config; only {', '.join(RESUME_MAY_CHANGE)} may change"
        )
    resumed = OmegaConf.load(saved)
    resumed.resume = str(run_dir)
    for override in changed:
        OmegaConf.update(resumed, key_of(override), OmegaConf.select(cfg, key_of(override)))
    saved_state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    epochs_done = saved_state["epoch"] + 1
    if epochs_done >= resumed.trainer.max_epochs:  # nothing to train: keep its results as they are
        raise ConfigError(
            f"resume={str(run_dir)!r} is not allowed: it has trained all its "
            f"{epochs_done} epochs; add trainer.max_epochs=N with N > {epochs_done} to go on"
        )
    # Hide what the interrupted run logged after its checkpoint: the curves continue from it.
    step = saved_state["global_step"]
    for logger in resumed.get("logger", {}).values():
        if str(logger.get("_target_", "")).endswith("TensorBoardLogger"):
            logger.purge_step = step + 1
    return resumed, checkpoint


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
    sweep = hydra_cfg.mode == RunMode.MULTIRUN
    checkpoint = None
    try:
        if not OmegaConf.is_missing(cfg, "resume"):
            cfg, checkpoint = resumed_config(cfg, hydra_cfg.overrides.task)
        check_config(cfg)
        output_dir = Path(cfg.run_dir)
        # With DDP, Lightning re-runs this command for the other ranks, in rank 0's folder.
        rank_zero = rank_zero_only.rank == 0
        if checkpoint is None and rank_zero and (output_dir / "metrics.json").exists():
            raise ConfigError(
                f"run folder {output_dir} already holds a run; resume it with "
                f"resume={output_dir}, or start a new one elsewhere"
            )
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
        job_num = hydra_cfg.job.num if sweep else None
        gpu = round_robin_devices(
            cfg.trainer.accelerator, cfg.trainer.devices, job_num, torch.cuda.device_count()
        )
        datamodule, module, loggers, trainer = instantiate_run(
            cfg, **({"devices": gpu} if gpu else {})
        )
        processes = processes_started_by_lightning(trainer)
        if sweep and processes > 1:
            # Lightning's DDP launcher starts each extra process by re-running this command
            # line, which here is the whole sweep.
            raise ConfigError(
                "a sweep cannot start DDP processes itself: run trainer=ddp as a single run, "
                "or sweep with hydra/launcher=slurm and hydra.launcher.tasks_per_node=<devices>"
            )
    except Exception as error:
        if not sweep:
            sys.exit(f"error: {error}")
        # The report and whoever reads the sweep find this job's status in its folder too.
        job_dir = Path(hydra_cfg.runtime.output_dir)
        if not (job_dir / "metrics.json").exists():  # never over an earlier run's record
            record = {"status": "failed", "error": f"{type(error).__name__}: {error}"}
            # Unresolved: a broken value may not resolve; the settings are plain values.
            write_metrics(job_dir, record | {"config": OmegaConf.to_container(cfg)})
        raise  # Hydra records this job as failed and goes on with the others
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
        trainer.fit(module, datamodule=datamodule, ckpt_path=checkpoint)
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
    record["device"] = str(trainer.strategy.root_device)  # the module is back on the CPU now
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


CONF_DIR = Path(__file__).resolve().parents[2] / "conf"  # hydra.main's config_path above


def unknown_group_option(overrides: list[str]) -> str | None:
    """The first command-line choice of a config group option that does not exist, as one
    line naming it and the choices; Hydra's own message spans a screen."""
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        group = CONF_DIR / key
        if key.startswith("hydra") or not group.is_dir():
            continue  # a key, or Hydra's own groups (launchers come from plugins)
        if not value.replace(",", "").isidentifier():
            continue  # not a plain choice: a sweep function, an interpolation...
        choices = sorted(path.stem for path in group.glob("*.yaml"))
        for choice in value.split(","):
            if choice not in choices and choice != "null":
                return f"{key}={choice} is not allowed: one of {', '.join(choices)}"
    return None


if __name__ == "__main__":
    if problem := unknown_group_option(sys.argv[1:]):
        sys.exit(f"error: {problem}")
    main()
