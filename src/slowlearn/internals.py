"""Every private Lightning, TensorBoard-writer and Hydra API the suite uses, each behind one
named function: a new release that moves one breaks here, and ``tests/test_internals.py`` names
it. pyproject.toml pins the versions these were read from.

Lightning is imported only where a function needs it: the batched launcher imports this
module while Hydra starts, before any training.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.core.utils import _flush_loggers, _save_config


def dump_checkpoint(trainer: Any) -> dict[str, Any]:
    """The checkpoint Lightning would save now, in memory, optimizer states included."""
    return trainer._checkpoint_connector.dump_checkpoint(weights_only=False)


def count_optimizer_steps(trainer: Any) -> Callable[[int], None]:
    """Adds n optimizer steps to Lightning's count (global_step) of a manually optimised fit:
    a CUDA graph's replay steps without Lightning's optimizer wrapper, which counts them."""
    return trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress.increment_by


def chunks_completed(trainer: Any) -> int:
    """The training batches (chunks) of the current epoch whose steps are done."""
    return trainer.fit_loop.epoch_loop.batch_progress.current.completed


def tensorboard_writer(logger: Any) -> Any:
    """A TensorBoardLogger's event writer, which takes whole events and summaries."""
    return logger.experiment._get_file_writer()


def set_bar_count(bar: Any, count: int) -> None:
    """A Lightning tqdm bar at ``count``, refreshed as Lightning refreshes it."""
    from pytorch_lightning.callbacks.progress.tqdm_progress import _update_n

    _update_n(bar, count)


def save_hydra_config(config: Any, filename: str, folder: Path) -> None:
    """A job's config file in its .hydra folder, as Hydra's own launchers write it."""
    _save_config(config, filename, folder)


def flush_hydra_loggers() -> None:
    """Flush the logging handlers, as Hydra does at a job's end."""
    _flush_loggers()


def probes(trainer: Any, logger: Any) -> dict[str, bool]:
    """Whether each internal above is still there, by name, on a fresh Trainer and a
    TensorBoardLogger."""
    from pytorch_lightning.callbacks.progress import tqdm_progress

    loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
    manual = getattr(loop, "manual_optimization", None)
    progress = getattr(getattr(loop, "batch_progress", None), "current", None)
    return {
        "Trainer._checkpoint_connector.dump_checkpoint": callable(
            getattr(getattr(trainer, "_checkpoint_connector", None), "dump_checkpoint", None)
        ),
        "Trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress.increment_by": (
            callable(getattr(getattr(manual, "optim_step_progress", None), "increment_by", None))
        ),
        "Trainer.fit_loop.epoch_loop.batch_progress.current.completed": isinstance(
            getattr(progress, "completed", None), int
        ),
        "TensorBoardLogger.experiment._get_file_writer": callable(
            getattr(logger.experiment, "_get_file_writer", None)
        ),
        "pytorch_lightning.callbacks.progress.tqdm_progress._update_n": callable(
            getattr(tqdm_progress, "_update_n", None)
        ),
        "hydra.core.utils._save_config": callable(_save_config),
        "hydra.core.utils._flush_loggers": callable(_flush_loggers),
    }
