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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from omegaconf import DictConfig

VAL_ACC_TARGET = 0.9  # "steps to 90% val accuracy": how fast an objective learns
HPARAM_METRICS = ("test_acc", "best_val_acc", "step_to_90_val_acc", "final_train_loss")


@dataclass(frozen=True)
class Setting:
    """A setting that tells runs apart, as every list of them names it."""

    name: str  # its column in TensorBoard's HPARAMS tab and the report's summary.csv
    key: str | None  # its config key; None: worked out from the others (the depth)
    short: str | None = None  # a run name's word for it (naming.label); None: the key's last part
    # Where a report's labels name it, first to last (report.runs.context_settings); None: the
    # cell and the seed, which labels show otherwise.
    label: int | None = None
    default: Any = None  # its value where a config lacks the key


# The settings that tell runs apart, in the order of the HPARAMS tab and summary.csv. A label
# leaves out a setting that the ones before it determine (momentum with the optimizer,
# hidden_sizes with the depth); lr comes late: an lr that only follows the optimizer is no lr
# sweep.
SETTING_TABLE = (
    Setting("activation", "activation.name"),
    Setting("loss", "loss.name"),
    # mse takes no log, so its config has no log base: natural, as the objectives' default.
    Setting("log_base", "loss.log_base", short="base", label=3, default="e"),
    Setting("init", "model.init", label=4),
    # None: the output layer keeps init's.
    Setting("output_init_scale", "model.output_init_scale", short="outscale", label=5),
    Setting("hidden_sizes", "model.hidden_sizes", short="hidden", label=7),
    Setting("hidden_activation", "model.hidden_activation", short="units", label=8),
    Setting("start", "model.start", label=2),  # the neuron's (w, b)
    Setting("optimizer", "optimizer._target_", label=1),
    Setting("lr", "optimizer.lr", label=12),
    Setting("momentum", "optimizer.momentum", label=11),
    Setting("batch_size", "data.batch_size", short="batch", label=9),
    Setting("dataset", "data.dataset", label=0),
    Setting("max_epochs", "trainer.max_epochs", short="epochs", label=10),
    Setting("seed", "seed"),
    Setting("depth", None, label=6),  # the number of hidden layers
)
SETTINGS = tuple(setting.name for setting in SETTING_TABLE)
# name -> config key, of the settings a config holds.
RUN_SETTINGS = {s.name: s.key for s in SETTING_TABLE if s.key is not None}


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
    values: dict[str, Any] = {}
    for setting in SETTING_TABLE:
        if setting.key is None:
            values[setting.name] = None  # below
            continue
        node: Any = config
        *parents, last = setting.key.split(".")
        for part in parents:
            node = node.get(part) if isinstance(node, Mapping) else None
        found = isinstance(node, Mapping)
        values[setting.name] = node.get(last, setting.default) if found else None
    values["optimizer"] = str(values["optimizer"]).rsplit(".", 1)[-1]
    sizes = values["hidden_sizes"]
    values["depth"] = len(sizes) if isinstance(sizes, list | tuple) else None
    return values


def hparams(cfg: DictConfig) -> dict[str, Any]:
    """The settings for TensorBoard's HPARAMS tab. Every run names every column, "none" where
    a setting does not apply (Adam's momentum, the neuron's init): TensorBoard takes the
    columns of a sweep from one arbitrary run. Lists (hidden_sizes) become text."""
    from omegaconf import OmegaConf  # here: a report reads this module and needs no OmegaConf

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

    from slowlearn.internals import tensorboard_writer  # imports Hydra, which a report skips

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
    from omegaconf import OmegaConf

    if (job_dir / "metrics.json").exists():
        return
    name = OmegaConf.select(cfg, "run_name", throw_on_resolution_failure=False)
    record = {"status": "failed", "error": error, "run_name": name or job_dir.name}
    # Unresolved: a broken value may not resolve; the settings are plain values.
    write_metrics(job_dir, record | {"config": OmegaConf.to_container(cfg)})
