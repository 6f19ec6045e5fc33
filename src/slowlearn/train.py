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
from pytorch_lightning.loggers import TensorBoardLogger

from slowlearn.data import write_atomically
from slowlearn.module import Divergence, LitClassifier

VAL_ACC_TARGET = 0.9  # "steps to 90% val accuracy": how fast an objective learns


def parallel_jobs() -> int:
    """How many jobs of this sweep run at once (the joblib launcher's n_jobs, else 1)."""
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return 1
    n_jobs = hydra_cfg.launcher.get("n_jobs", 1) or 1
    return os.cpu_count() or 1 if n_jobs < 0 else int(n_jobs)


def configure_threads(cfg: DictConfig) -> int:
    """Split the cores between parallel jobs before the first torch op: oversubscribed
    torch processes run many times slower than one."""
    threads = cfg.threads or max(1, (os.cpu_count() or 1) // parallel_jobs())
    torch.set_num_threads(threads)
    return threads


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


def write_metrics(output_dir: Path, record: dict[str, Any]) -> None:
    write_atomically(output_dir / "metrics.json", json.dumps(record, indent=2).encode())


@hydra.main(version_base="1.3", config_path="../../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    threads = configure_threads(cfg)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)

    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model)
    module = instantiate(cfg.module, model=model, optimizer=instantiate(cfg.optimizer))
    loggers = [instantiate(logger) for logger in cfg.get("logger", {}).values()]
    callbacks = [instantiate(callback) for callback in cfg.get("callbacks", {}).values()]
    trainer: pl.Trainer = instantiate(cfg.trainer, logger=loggers, callbacks=callbacks)

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
        if HydraConfig.get().mode == RunMode.MULTIRUN and record["status"] != "interrupted":
            raise RuntimeError(message)  # recorded as failed; the sweep goes on with its jobs
        sys.exit(message)
    test_acc = record["metrics"]["test_acc"]
    sweep = HydraConfig.get().mode == RunMode.MULTIRUN
    print(f"test accuracy {test_acc:.4f}; run folder {output_dir}")
    print(f"inspect: tensorboard --logdir {output_dir.parent if sweep else output_dir}")
    return test_acc


if __name__ == "__main__":
    main()
