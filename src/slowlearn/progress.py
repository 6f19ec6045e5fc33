"""The progress bar counts optimiser steps, with steps/s: a Lightning batch here is a chunk of
many steps, which means nothing to a person watching a run."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import TQDMProgressBar
from pytorch_lightning.callbacks.progress.tqdm_progress import Tqdm

from slowlearn.internals import set_bar_count


class StepProgressBar(TQDMProgressBar):
    """Lightning's bar, in optimiser steps of the epoch instead of Lightning batches."""

    def init_train_tqdm(self) -> Tqdm:
        bar = super().init_train_tqdm()
        bar.unit = "step"
        return bar

    @property
    def total_train_batches(self) -> int | float:
        """The epoch's optimiser steps: the bar's total, set before the bar is first drawn (set
        after it, every epoch began with a line counting chunks, "0/14")."""
        steps = getattr(self.trainer.train_dataloader, "steps", None)
        return steps if steps is not None else super().total_train_batches

    def on_train_start(self, trainer: pl.Trainer, *args: Any) -> None:
        super().on_train_start(trainer, *args)
        # A fit resumed in the middle of an epoch does not start that epoch again: the bar
        # starts at the steps its first part took (every epoch takes the same steps).
        steps = getattr(trainer.train_dataloader, "steps", None)
        self.epoch_start_step = trainer.current_epoch * steps if steps else trainer.global_step
        if not self.train_progress_bar.disable:
            self.train_progress_bar.reset(self.total_train_batches)
            set_bar_count(self.train_progress_bar, trainer.global_step - self.epoch_start_step)

    def on_train_epoch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        self.epoch_start_step = trainer.global_step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if self.train_progress_bar.disable:
            return
        set_bar_count(self.train_progress_bar, trainer.global_step - self.epoch_start_step)
        self.train_progress_bar.set_postfix(self.get_metrics(trainer, args[0]))
