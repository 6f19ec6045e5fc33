"""A callback the DDP test adds to a real run: each rank saves what it trained on and its weights.

Passed as a Hydra override, so every DDP process (Lightning re-runs the command line) has one.
"""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import Tensor


class RankProbe(pl.Callback):
    def __init__(self, out: str) -> None:
        self.out = Path(out)
        self.images: list[Tensor] = []

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: list, batch_idx: int
    ) -> None:
        self.images += [x.cpu() for x, _ in batch]

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        record = {
            "images": torch.cat(self.images),
            "weights": {k: v.detach().cpu() for k, v in pl_module.state_dict().items()},
            "global_step": trainer.global_step,
            "world_size": trainer.world_size,
            "val_history": pl_module.histories[0].val_history,
        }
        torch.save(record, self.out / f"rank{trainer.global_rank}.pt")
