"""Every member's checkpoints, in a single run's format: ``checkpoints/last.ckpt`` (rewritten at
every epoch end, for resume and eval) and ``checkpoints/best-epochNNN.ckpt`` (its own best val
accuracy so far).

Lightning's ModelCheckpoint watches one ``val/acc`` of one model, so a group writes its members'
checkpoints here: the group's checkpoint is taken once per epoch and split into one per member
(``member_checkpoint``), each written atomically. A single run is a group of one,
so its checkpoints come from here too. A member that diverged keeps its last finite one.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import pytorch_lightning as pl
import torch

from slowlearn.internals import dump_checkpoint
from slowlearn.member_logs import MemberHistory
from slowlearn.model import MemberStack, stacked_layout
from slowlearn.optimizers import MemberOptimizer, stack_optimizer_states
from slowlearn.records import write_atomically
from slowlearn.step import MemberStep
from slowlearn.timing import EpochTimer

LAST = "last.ckpt"


def member_checkpoint(
    group: dict[str, Any],
    network: MemberStack,
    optimizer: MemberOptimizer,
    member: int,
    records: dict[str, Any],
) -> dict[str, Any]:
    """A single run's checkpoint of ``member``, from the group's: its own weights under a
    single run's keys (``model.0.weight``, ...), its optimizer state in torch.optim's format
    and its own ``records`` (val history, epoch times). Stacking exists in memory only."""
    state = {f"model.{name}": t for name, t in network.member_state(member).items()}
    return group | {
        "state_dict": state,
        "optimizer_states": [optimizer.member_state_dict(member)],
        "slowlearn": records,
    }


def member_records(history: MemberHistory, timer: EpochTimer) -> dict[str, Any]:
    """What a member's checkpoint keeps besides its weights: its val history, epoch times."""
    return {
        "val_history": history.val_history,
        "epoch_seconds": timer.epoch_seconds,
        "epoch_training_seconds": timer.epoch_training_seconds,
    }


def restore(
    checkpoint: dict[str, Any], network: MemberStack, history: MemberHistory, timer: EpochTimer
) -> None:
    """Resume from a single run's checkpoint (a group of one), and its records."""
    stack_checkpoint(checkpoint, network)
    records = checkpoint.get("slowlearn", {})
    history.val_history = records.get("val_history", [])
    timer.epoch_seconds = records.get("epoch_seconds", [])
    timer.epoch_training_seconds = records.get("epoch_training_seconds", [])


def stack_checkpoint(checkpoint: dict[str, Any], network: MemberStack) -> None:
    """A single run's checkpoint, in place, in the layout of a group of one, so that Lightning
    loads it into the stack (its own keys ``model.<name>``; a group's are left as they are)."""
    state = checkpoint["state_dict"]
    if not any(key.startswith("model.") for key in state):
        return
    checkpoint["state_dict"] = {
        f"network.stacked.{index}": stacked_layout(state[f"model.{name}"]).unsqueeze(0)
        for index, name in enumerate(network.names)
    }
    if checkpoint.get("optimizer_states"):  # a weights-only checkpoint has none
        checkpoint["optimizer_states"] = [
            stack_optimizer_states(checkpoint["optimizer_states"][:1])
        ]


def best_name(epoch: int) -> str:
    """ModelCheckpoint's ``best-epoch{epoch:03d}`` of earlier runs, epoch counted from 0."""
    return f"best-epoch{epoch:03d}.ckpt"


def link_or_write(source: Path, target: Path, payload: bytes) -> None:
    """``target`` becomes a copy of ``source``, whose bytes are ``payload``, atomically: a hard
    link costs no bytes (a later rewrite of ``source`` replaces its inode, and leaves this one
    as it was); a file system without hard links gets the bytes written."""
    temporary = target.with_name(f".{target.name}.tmp")
    temporary.unlink(missing_ok=True)
    try:
        os.link(source, temporary)
    except OSError:
        write_atomically(target, payload, durable=False)
        return
    os.replace(temporary, target)


class Trained(Protocol):
    """What a checkpoint is written from: the module (``slowlearn.module``)."""

    step: MemberStep
    histories: list[MemberHistory]
    timer: EpochTimer


class MemberCheckpoints(pl.Callback):
    """At each validation end: every training member's last.ckpt, and its best when its val
    accuracy beat its own earlier best (ties keep the earlier, as ModelCheckpoint does)."""

    def __init__(self, run_dirs: Sequence[Path]) -> None:
        self.folders = [Path(run_dir) / "checkpoints" for run_dir in run_dirs]
        self.seconds = 0.0  # spent writing them

    def on_validation_end(self, trainer: pl.Trainer, module: Trained) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        started = time.perf_counter()
        self.write(trainer, module)
        self.seconds += time.perf_counter() - started

    def write(self, trainer: pl.Trainer, module: Trained) -> None:
        group: dict[str, Any] = dump_checkpoint(trainer)
        for member, folder in enumerate(self.folders):
            history = module.histories[member]
            if history.diverged or not history.val_history:
                continue
            payload = io.BytesIO()
            records = member_records(history, module.timer)
            optimizer = module.step.optimizer
            assert optimizer is not None  # training made it
            saved = member_checkpoint(group, module.step.network, optimizer, member, records)
            torch.save(saved, payload)
            write_atomically(folder / LAST, payload.getvalue(), durable=False)
            *earlier, latest = [entry["val/acc"] for entry in history.val_history]
            if not earlier or latest > max(earlier):
                best = folder / best_name(trainer.current_epoch)
                link_or_write(folder / LAST, best, payload.getvalue())
                for old in folder.glob("best-epoch*.ckpt"):
                    if old != best:
                        old.unlink()
