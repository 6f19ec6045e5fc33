"""What a run leaves behind for people and for the report: metrics.json, the settings that tell
runs apart (the HPARAMS tab and summary.csv show the same list), and atomic file writes.

metrics.json holds the status (``running`` while it trains, then ``completed``, ``diverged``,
``interrupted`` or ``failed``), the final metrics, the val history, the wall time of every
epoch and the resolved config.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from slowlearn.internals import tensorboard_writer

VAL_ACC_TARGET = 0.9  # "steps to 90% val accuracy": how fast an objective learns
HPARAM_METRICS = ("test_acc", "best_val_acc", "step_to_90_val_acc", "final_train_loss")

# The settings that tell runs apart: name -> key in the config. TensorBoard's HPARAMS tab and
# the report's summary.csv both show them, with ``depth`` (the number of hidden layers).
RUN_SETTINGS = {
    "activation": "activation.name",
    "loss": "loss.name",
    "log_base": "loss.log_base",
    "init": "model.init",
    "output_init_scale": "model.output_init_scale",  # None: the output layer keeps init's
    "hidden_sizes": "model.hidden_sizes",
    "hidden_activation": "model.hidden_activation",
    "start": "model.start",  # the neuron's (w, b)
    "optimizer": "optimizer._target_",
    "lr": "optimizer.lr",
    "momentum": "optimizer.momentum",
    "batch_size": "data.batch_size",
    "dataset": "data.dataset",
    "max_epochs": "trainer.max_epochs",
    "seed": "seed",
}
SETTINGS = (*RUN_SETTINGS, "depth")


def write_atomically(path: Path, payload: bytes, durable: bool = True) -> None:
    """Write to a temporary file beside ``path`` and rename: readers see all or nothing.

    ``durable`` also forces the bytes to disk before the rename, so that a power cut cannot
    leave a renamed but empty file; checkpoints, rewritten every epoch, skip it as Lightning's
    own do (a killed process loses nothing either way).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as f:
        f.write(payload)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.chmod(f.name, 0o644)
    os.replace(f.name, path)


def run_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """The SETTINGS of a plain (resolved) config, None where one does not apply; the optimizer
    by its class name, the depth as the number of hidden layers."""
    values = {}
    for name, key in RUN_SETTINGS.items():
        value: Any = config
        for part in key.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        values[name] = value
    values["optimizer"] = str(values["optimizer"]).rsplit(".", 1)[-1]
    sizes = values["hidden_sizes"]
    values["depth"] = len(sizes) if isinstance(sizes, list | tuple) else None
    return values


def hparams(cfg: DictConfig) -> dict[str, Any]:
    """The settings for TensorBoard's HPARAMS tab. Every run names every column, "none" where
    a setting does not apply (Adam's momentum, the neuron's init): TensorBoard takes the
    columns of a sweep from one arbitrary run. Lists (hidden_sizes) become text."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    return {
        name: "none"
        if value is None
        else value
        if isinstance(value, bool | int | float | str)
        else str(value)
        for name, value in run_settings(plain).items()
    }


def hparam_metrics(summary: Mapping[str, Any]) -> dict[str, float]:
    """The HPARAMS tab's metric values of a run (those it has; 90% may never be reached)."""
    return {
        f"hparams/{name}": float(summary[name])
        for name in HPARAM_METRICS
        if summary.get(name) is not None and math.isfinite(float(summary[name]))
    }


def summarise(
    history: list[dict[str, float]],
    test: Mapping[str, float],
    epoch_seconds: list[float],
    last_logged_loss: float,
    extra: Mapping[str, Any] = (),
) -> dict[str, Any]:
    """The final metrics: test accuracy, best val accuracy and how fast the target was hit."""
    reached = next((h for h in history if h["val/acc"] >= VAL_ACC_TARGET), None)
    return {
        "test_acc": test.get("test/acc"),
        "test_loss": test.get("test/loss"),
        "best_val_acc": max((h["val/acc"] for h in history), default=None),
        "final_val_acc": history[-1]["val/acc"] if history else None,
        "epoch_to_90_val_acc": reached["epoch"] if reached else None,
        "step_to_90_val_acc": reached["step"] if reached else None,
        "final_train_loss": last_logged_loss,  # mean of the last window
        "val_history": history,
        "epoch_seconds": epoch_seconds,
        **dict(extra),
    }


def log_hparams(loggers: Iterable[Any], cfg: DictConfig, summary: Mapping[str, Any]) -> None:
    """The HPARAMS tab's data: the settings, the metric columns, and this run's values.

    Every run declares all four metric columns, also one it has no value for (90% never
    reached): TensorBoard takes the columns of the whole sweep from one arbitrary run.
    """
    from pytorch_lightning.loggers import TensorBoardLogger
    from torch.utils.tensorboard.summary import hparams as hparams_summaries

    columns = dict.fromkeys(f"hparams/{name}" for name in HPARAM_METRICS)
    experiment, *sessions = hparams_summaries(hparams(cfg), columns)
    mark_varied(experiment, cfg.get("varied_settings") or [])
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_metrics(hparam_metrics(summary), step=0)
            # What Lightning's log_hyperparams writes, with every column declared.
            writer = tensorboard_writer(logger)
            for summary_proto in (experiment, *sessions):
                writer.add_summary(summary_proto)


def mark_varied(experiment: Any, varied: Iterable[str]) -> None:
    """Marks the settings a sweep varies as ``differs`` in the experiment summary, and lists
    them first: the HPARAMS tab orders its columns by that mark, then by name, and checks the
    first five."""
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    varied = list(varied)
    plugin_data = experiment.value[0].metadata.plugin_data
    content = HParamsPluginData.FromString(plugin_data.content)
    infos = sorted(
        content.experiment.hparam_infos,
        key=lambda info: varied.index(info.name) if info.name in varied else len(varied),
    )
    for info in infos:
        info.differs = info.name in varied
    del content.experiment.hparam_infos[:]
    content.experiment.hparam_infos.extend(infos)
    plugin_data.content = content.SerializeToString()


def write_metrics(output_dir: Path, record: Mapping[str, Any]) -> None:
    write_atomically(output_dir / "metrics.json", json.dumps(record, indent=2).encode())


def read_metrics(output_dir: Path) -> dict[str, Any]:
    return json.loads((output_dir / "metrics.json").read_text())


def record_failure(job_dir: Path, cfg: DictConfig, error: str) -> None:
    """A job that failed before training: its status in its folder, for the report and for
    whoever reads the sweep; never over an earlier run's record."""
    if (job_dir / "metrics.json").exists():
        return
    name = OmegaConf.select(cfg, "run_name", throw_on_resolution_failure=False)
    record = {"status": "failed", "error": error, "run_name": name or job_dir.name}
    # Unresolved: a broken value may not resolve; the settings are plain values.
    write_metrics(job_dir, record | {"config": OmegaConf.to_container(cfg)})
