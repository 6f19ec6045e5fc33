"""Every member's checkpoints, in a single run's format: ``checkpoints/last.ckpt`` (rewritten at
every epoch end, for resume and eval) and ``checkpoints/best-epochNNN.ckpt`` (its own best val
accuracy so far).

Lightning's ModelCheckpoint watches one ``val/acc`` of one model, so a group writes its members'
checkpoints here: the group's checkpoint is taken once per epoch and split into one per member
(``LitClassifier.member_checkpoint``), each written atomically. A single run is a group of one,
so its checkpoints come from here too. A member that diverged keeps its last finite one.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from slowlearn.module import LitClassifier
from slowlearn.records import write_atomically

LAST = "last.ckpt"


def best_name(epoch: int) -> str:
    """ModelCheckpoint's ``best-epoch{epoch:03d}`` of earlier runs, epoch counted from 0."""
    return f"best-epoch{epoch:03d}.ckpt"


def link_or_copy(source: Path, target: Path) -> None:
    """``target`` becomes a copy of ``source``, atomically; a hard link costs no bytes (a
    later rewrite of ``source`` replaces its inode, and leaves this one as it was)."""
    temporary = target.with_name(f".{target.name}.tmp")
    temporary.unlink(missing_ok=True)
    try:
        os.link(source, temporary)
    except OSError:  # a file system without hard links
        temporary.write_bytes(source.read_bytes())
    os.replace(temporary, target)


class MemberCheckpoints(pl.Callback):
    """At each validation end: every training member's last.ckpt, and its best when its val
    accuracy beat its own earlier best (ties keep the earlier, as ModelCheckpoint does)."""

    def __init__(self, run_dirs: Sequence[Path]) -> None:
        self.folders = [Path(run_dir) / "checkpoints" for run_dir in run_dirs]
        self.seconds = 0.0  # spent writing them

    def on_validation_end(self, trainer: pl.Trainer, module: LitClassifier) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        started = time.perf_counter()
        self.write(trainer, module)
        self.seconds += time.perf_counter() - started

    def write(self, trainer: pl.Trainer, module: LitClassifier) -> None:
        group: dict[str, Any] = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
        for member, folder in enumerate(self.folders):
            history = module.histories[member]
            if history.diverged or not history.val_history:
                continue
            payload = io.BytesIO()
            torch.save(module.member_checkpoint(group, member), payload)
            write_atomically(folder / LAST, payload.getvalue(), durable=False)
            *earlier, latest = [entry["val/acc"] for entry in history.val_history]
            if not earlier or latest > max(earlier):
                best = folder / best_name(trainer.current_epoch)
                link_or_copy(folder / LAST, best)
                for old in folder.glob("best-epoch*.ckpt"):
                    if old != best:
                        old.unlink()
