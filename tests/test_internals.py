"""The private Lightning, TensorBoard and Hydra APIs behind ``slowlearn.internals`` are still
where it reaches for them: a release that moves one fails here, by name."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.loggers import TensorBoardLogger

from slowlearn import internals


def test_every_internal_is_still_there(tmp_path: Path) -> None:
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    logger = TensorBoardLogger(tmp_path)
    moved = [name for name, found in internals.probes(trainer, logger).items() if not found]
    assert not moved, f"moved in this release, see slowlearn.internals: {', '.join(moved)}"
