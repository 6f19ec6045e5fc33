"""Where a fit's time goes: each epoch's wall time, its training steps' alone, and the seconds
of training and of evaluation, taken once the device has caught up."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
from typing_extensions import override


def clock(device: torch.device) -> float:
    """Now, once the device has caught up (a CUDA step may still be running)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


class EpochTimer(pl.Callback):
    """An epoch's training steps end where its validation starts, or at its end when it has
    none. ``end_of_steps`` runs then, before their time is taken: work that belongs to them
    (the last chunk's logging)."""

    def __init__(self, end_of_steps: Callable[[], Any] = lambda: None) -> None:
        self.end_of_steps = end_of_steps
        self.epoch_seconds: list[float] = []  # whole epochs: steps, logging, validation
        self.epoch_training_seconds: list[float] = []  # each epoch's training steps alone
        # Where the time went: training steps (until validation begins) and evaluation.
        self.seconds = {"training": 0.0, "evaluation": 0.0}
        self.epoch_started = 0.0
        self.evaluation_started: float | None = None  # None: this epoch has not validated
        self.carried: float | None = None  # seconds of a resumed epoch spent before its stop

    def epoch_elapsed(self, device: torch.device) -> float:
        """Seconds of the current epoch so far (for a checkpoint in its middle)."""
        return clock(device) - self.epoch_started

    def carry_epoch(self, seconds: float) -> None:
        """A fit resumed in the middle of an epoch: its time counts from the first part's
        ``seconds`` (Lightning does not start a resumed epoch again)."""
        self.carried = seconds

    @override
    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if self.carried is not None:
            self.epoch_started, self.carried = clock(module.device) - self.carried, None

    def _end_training_steps(self, device: torch.device) -> float:
        self.end_of_steps()
        now = clock(device)
        self.seconds["training"] += now - self.epoch_started
        self.epoch_training_seconds.append(now - self.epoch_started)
        return now

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.epoch_started = clock(module.device)
        self.evaluation_started = None

    @override
    def on_validation_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        fitting = trainer.state.fn == "fit" and not trainer.sanity_checking
        device = module.device
        self.evaluation_started = self._end_training_steps(device) if fitting else clock(device)

    @override
    def on_validation_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        assert self.evaluation_started is not None
        self.seconds["evaluation"] += clock(module.device) - self.evaluation_started

    @override
    def on_test_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.on_validation_start(trainer, module)

    @override
    def on_test_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.on_validation_end(trainer, module)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        validated = self.evaluation_started is not None
        now = clock(module.device) if validated else self._end_training_steps(module.device)
        self.epoch_seconds.append(now - self.epoch_started)
