"""Every member's checkpoints, in a single run's format: ``checkpoints/last.ckpt`` (rewritten at
every epoch end and at a stop, for resume and eval: after a stop it holds that step's weights)
and ``checkpoints/best-epochNNN.ckpt`` (its own best val accuracy so far).

Lightning's ModelCheckpoint watches one ``val/acc`` of one model, so a group writes its members'
checkpoints here: the group's checkpoint is taken once per epoch and split into one per member
(``member_checkpoint``), each written atomically. A single run is a group of one,
so its checkpoints come from here too. A member that diverged keeps its last finite one.

A stop asked for (Ctrl-C, or a cluster's preemption signal: ``slowlearn.interrupts``) at the
start of a training chunk rewrites every member's last.ckpt at that step, mid-epoch: besides
the weights, the optimizer and the loops' progress (with the data order's position,
``slowlearn.data.TrainingBatches``), it holds what the epoch has gathered and not yet logged
(the diagnostics window, the epoch's histogram values, the epoch's seconds so far), so that
the resumed run logs exactly what the uninterrupted one would. Every checkpoint holds the
loss window's running sum, which may straddle an epoch's end.
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
from pytorch_lightning.callbacks import Checkpoint

from slowlearn.internals import dump_checkpoint
from slowlearn.interrupts import StopRequested
from slowlearn.member_logs import Divergence, MemberHistory, MemberLogs
from slowlearn.model import MemberStack, stacked_layout
from slowlearn.optimizers import MemberOptimizer, stack_optimizer_states
from slowlearn.records import write_atomically
from slowlearn.step import MemberStep, StepRecords
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


def pending_records(
    history: MemberHistory, records: StepRecords, member: int, epoch_elapsed: float | None
) -> dict[str, Any]:
    """What ``member`` has gathered and not yet logged, on the host: the loss window's running
    sum (which may straddle an epoch's end), and in the middle of an epoch its step records
    and seconds so far (``epoch_elapsed``; None at an epoch's end, where they were logged)."""
    return {
        "epoch_elapsed_seconds": epoch_elapsed,
        "loss_window": [history.interval_sum, history.interval_count],
        "last_finite_loss": history.last_finite_loss,
        "last_logged_loss": history.last_logged_loss,
        "step_records": {
            name: [
                [t[member].cpu() for t in entry] if isinstance(entry, list) else entry[member].cpu()
                for entry in getattr(records, name)
            ]
            for name in IN_EPOCH_RECORDS
        },
    }


# The step records an epoch gathers across chunks; the losses and traces go every chunk.
IN_EPOCH_RECORDS = ("signal_sums", "layer_values", "true_class", "unit_bias_grads", "unit_slopes")


def restore_pending(members: Sequence[dict[str, Any]], logs: MemberLogs, timer: EpochTimer) -> None:
    """What the group had gathered and not logged, from each member's pending records (in
    member order)."""
    for history, member in zip(logs.histories, members, strict=True):
        history.interval_sum, history.interval_count = member["loss_window"]
        history.last_finite_loss = member["last_finite_loss"]
        history.last_logged_loss = member["last_logged_loss"]
    if members[0]["epoch_elapsed_seconds"] is not None:
        timer.carry_epoch(members[0]["epoch_elapsed_seconds"])
    for name in IN_EPOCH_RECORDS:
        per_member = [m["step_records"][name] for m in members]
        entries = getattr(logs.records, name)
        entries.clear()
        for saved in zip(*per_member, strict=True):  # one entry, every member's part
            if isinstance(saved[0], list):
                entries.append([torch.stack(parts) for parts in zip(*saved, strict=True)])
            else:
                entries.append(torch.stack(saved))


def move_records(records: StepRecords, device: torch.device) -> None:
    """A resumed epoch's records onto the training device (a checkpoint is restored before
    Lightning moves the module there)."""
    for name in IN_EPOCH_RECORDS:
        entries = getattr(records, name)
        entries[:] = [
            [t.to(device) for t in entry] if isinstance(entry, list) else entry.to(device)
            for entry in entries
        ]


def restore(
    checkpoint: dict[str, Any], network: MemberStack, logs: MemberLogs, timer: EpochTimer
) -> None:
    """Resume from a single run's checkpoint (a group of one), or a group's stacked from its
    members' (``slowlearn.group_resume``), with each member's records."""
    stack_checkpoint(checkpoint, network)
    members = checkpoint.get("slowlearn_members") or [checkpoint.get("slowlearn", {})]
    for history, records in zip(logs.histories, members, strict=True):
        history.val_history = records.get("val_history", [])
    timer.epoch_seconds = members[0].get("epoch_seconds", [])
    timer.epoch_training_seconds = members[0].get("epoch_training_seconds", [])
    if all("pending" in records for records in members):
        restore_pending([records["pending"] for records in members], logs, timer)


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
    logs: MemberLogs
    timer: EpochTimer

    @property
    def histories(self) -> list[MemberHistory]: ...


class MemberCheckpoints(Checkpoint):
    """At each epoch's end: every training member's last.ckpt, and its best when its val
    accuracy beat its own earlier best (ties keep the earlier, as ModelCheckpoint does).

    A Checkpoint to Lightning, so that its epoch-end hook runs after the module's, as
    ModelCheckpoint's does: the checkpoint then follows everything the epoch logs, and a fit
    resumed from it does not end that epoch (and log its end) a second time.
    """

    def __init__(self, run_dirs: Sequence[Path]) -> None:
        self.folders = [Path(run_dir) / "checkpoints" for run_dir in run_dirs]
        self.seconds = 0.0  # spent writing them

    def on_train_epoch_end(self, trainer: pl.Trainer, module: Trained) -> None:
        if not trainer.is_global_zero:
            return
        started = time.perf_counter()
        self.write(trainer, module)
        self.seconds += time.perf_counter() - started

    def on_exception(self, trainer: pl.Trainer, module: Trained, exception: BaseException) -> None:
        """A stop asked for at the start of a training chunk: every member's checkpoint at
        this step, before Lightning closes the loggers (the last chunk's values go first)."""
        stopped = isinstance(exception, StopRequested) and exception.in_training
        if not stopped or trainer.state.fn != "fit" or not trainer.is_global_zero:
            return
        try:
            module.logs.flush_in_flight()
        except Divergence:
            return  # every member diverged: each keeps its last finite checkpoint
        self.write(trainer, module, in_epoch=True)

    def write(self, trainer: pl.Trainer, module: Trained, in_epoch: bool = False) -> None:
        group: dict[str, Any] = dump_checkpoint(trainer)
        device = trainer.strategy.root_device
        epoch_elapsed = module.timer.epoch_elapsed(device) if in_epoch else None
        for member, folder in enumerate(self.folders):
            history = module.histories[member]
            if history.diverged:
                continue
            payload = io.BytesIO()
            records = member_records(history, module.timer)
            step_records = module.step.records
            records["pending"] = pending_records(history, step_records, member, epoch_elapsed)
            optimizer = module.step.optimizer
            assert optimizer is not None  # training made it
            saved = member_checkpoint(group, module.step.network, optimizer, member, records)
            torch.save(saved, payload)
            write_atomically(folder / LAST, payload.getvalue(), durable=False)
            validated = history.val_history and history.val_history[-1]["epoch"] == (
                trainer.current_epoch + 1
            )
            if in_epoch or not validated:
                continue  # a best checkpoint is that of an epoch end with its val accuracy
            *earlier, latest = [entry["val/acc"] for entry in history.val_history]
            if not earlier or latest > max(earlier):
                best = folder / best_name(trainer.current_epoch)
                link_or_write(folder / LAST, best, payload.getvalue())
                for old in folder.glob("best-epoch*.ckpt"):
                    if old != best:
                        old.unlink()
