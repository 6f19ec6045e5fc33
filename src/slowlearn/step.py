"""The stacked members' step, without Lightning: R >= 1 members trained as one program.

A single run is a group of one. The members' weights are stacked (``model.MemberStack``);
each member gathers its own mini-batch from its own data order; each objective runs once per
cell over that cell's members; the step's loss is the SUM of the members' batch means, so
that each member's gradient is exactly its own (a mean would divide every member's learning
rate by R); one update (``optimizers.MemberOptimizer``) steps every member with its own lr.
A member whose loss stops being finite is frozen (``optimizers.Freeze``); the rest go on.

Per-step values (losses, traces, diagnostics) stay on the device in ``StepRecords``, which
``member_logs.MemberLogs`` sends to the loggers once per chunk. Nothing here reads a file,
writes one or syncs with the host during training steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor

from slowlearn import diagnostics
from slowlearn.losses import ACTIVATIONS, Objective, objective, targets_like
from slowlearn.model import MemberStack
from slowlearn.optimizers import MemberOptimizer

Batch = Iterable[tuple[Tensor, Tensor]]  # one Lightning batch: a chunk of (x, y) mini-batches


class Cell(NamedTuple):
    """The members of one cell, side by side in the stack, and their objective and outputs."""

    members: slice
    objective: Objective
    outputs: Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class Member:
    """What the step needs of a member's settings (``groups.MEMBER_SETTINGS`` fills it)."""

    activation: str
    loss: str
    log_base: float
    lr: float

    @property
    def cell(self) -> tuple[str, str, float]:
        return self.activation, self.loss, self.log_base


def log_base_value(base: str | float | None) -> float:
    """A loss's log base as a number: ``e``, or none given (mse takes no log), is natural."""
    return math.e if base is None or base == "e" else float(base)


@dataclass
class StepRecords:
    """Per-step values waiting on the device for the next flush to the loggers.

    A plain object: nn.Module.__setattr__ is slow enough to show in the training loop.
    """

    losses: list[Tensor] = field(default_factory=list)  # [K, R] per chunk
    trace: list[Tensor] = field(default_factory=list)  # [R, 1 + scalar parameters]
    signal_sums: list[Tensor] = field(default_factory=list)  # [R, ERROR_SIGNAL_FIELDS]
    layer_values: list[Tensor] = field(default_factory=list)  # [R, layer fields]
    true_class: list[Tensor] = field(default_factory=list)  # [R, B] per diagnosed step
    unit_bias_grads: list[list[Tensor]] = field(default_factory=list)  # per layer [R, units]
    unit_slopes: list[list[Tensor]] = field(default_factory=list)  # per sigmoid layer


def cells_of(members: Sequence[Member]) -> list[Cell]:
    """Members of one cell sit side by side: each objective runs once over its slice."""
    cells, start = [], 0
    for stop in range(1, len(members) + 1):
        if stop == len(members) or members[stop].cell != members[start].cell:
            activation, loss, base = members[start].cell
            cell_objective = objective(activation, loss, base)
            cells.append(Cell(slice(start, stop), cell_objective, ACTIVATIONS[activation].outputs))
            start = stop
    return cells


def predictions(logits: Tensor) -> Tensor:
    return logits.argmax(dim=-1) if logits.shape[-1] > 1 else (logits[..., 0] > 0).long()


class MemberStep:
    """The members' objectives, their optimiser steps, the values those steps record, and the
    evaluation sums. ``optimizer`` is set by ``make_optimizer``."""

    def __init__(
        self,
        network: MemberStack,
        members: Sequence[Member],
        diagnostics_every_n_steps: int = 10,
        trace: bool = False,
    ) -> None:
        self.network, self.members = network, list(members)
        self.cells = cells_of(self.members)
        self.diagnostics_every_n_steps = diagnostics_every_n_steps
        self.trace = trace
        self.sigmoid_hidden = network.hidden_activation == "sigmoid"
        probabilities = [ACTIVATIONS[m.activation].log_outputs is not None for m in members]
        # Per device, made on first use: a CUDA graph's warm-up chunk makes it before capture.
        self.probabilities = {torch.device("cpu"): torch.tensor(probabilities)}
        self.records = StepRecords()
        self.eval_sums: dict[str, Tensor] = {}
        self.optimizer: MemberOptimizer | None = None

    def make_optimizer(self, rule: Callable[..., MemberOptimizer]) -> MemberOptimizer:
        """The update of every member with its own lr: ``rule`` is an update rule of
        ``slowlearn.optimizers`` with its settings (the config's, a partial; its lr is the
        first member's, and the members' own replace it). A single run has no other members to
        protect: its divergence ends it (at the next flush), so it freezes nothing."""
        self.optimizer = rule(
            list(self.network.stacked),
            lr=[member.lr for member in self.members],
            selected=self.network.input_layer_parameters(),
            freeze=len(self.members) > 1,
        )
        return self.optimizer

    def member_losses(self, logits: Tensor, targets: Tensor) -> Tensor:
        """[R]: each member's batch mean of its own objective, one call per cell. ``targets``
        are float rows shaped like the logits (``losses.targets_like``, made once per step
        for every cell)."""
        if len(self.cells) == 1:  # a single run, or a group of one cell: no slices to join
            return self.cells[0].objective(logits, targets)
        return torch.cat(
            [cell.objective(logits[cell.members], targets[cell.members]) for cell in self.cells]
        )

    def outputs(self, logits: Tensor) -> Tensor:
        """o = activation(z) of every member, [R, B, c]."""
        if len(self.cells) == 1:
            return self.cells[0].outputs(logits)
        return torch.cat([cell.outputs(logits[cell.members]) for cell in self.cells])

    def probabilities_on(self, device: torch.device) -> Tensor:
        """[R] bool: whether each member's outputs are probabilities (a log is taken of them)."""
        if device not in self.probabilities:
            self.probabilities[device] = self.probabilities[torch.device("cpu")].to(device)
        return self.probabilities[device]

    def diagnosed(self, first_step: int, steps: int) -> tuple[int, ...]:
        """The chunk's steps whose global step is a multiple of ``diagnostics_every_n_steps``."""
        every = self.diagnostics_every_n_steps
        return tuple(range(-first_step % every, steps, every)) if every > 0 else ()

    def take_steps(
        self,
        batch: Batch,
        diagnosed: tuple[int, ...],
        optimizer: Any,
        backward: Callable[[Tensor], None],
    ) -> None:
        """One optimiser step per mini-batch of the chunk; the chunk's losses [K, R] and the
        diagnosed steps' values go to the records. ``optimizer``: ``self.optimizer`` or a
        wrapper of it (Lightning's counts the steps); ``backward``: of the summed loss."""
        assert self.optimizer is not None, "make_optimizer first"
        freeze = self.optimizer.freeze  # the mask's owner
        records = self.records
        step_losses = []
        for offset, (x, y) in enumerate(batch):
            diagnose = offset in diagnosed and not y.is_floating_point()
            logits, hidden = self.network(
                x, keep_hidden=diagnose and self.sigmoid_hidden, training=freeze.training
            )
            if diagnose:
                logits.retain_grad()
            targets = targets_like(logits.detach(), y)  # one-hot rows, once for every cell
            losses = self.member_losses(logits, targets)
            # Freeze a member whose loss is not finite, from this step on: the backward pass
            # and the update select its gradient away (on the device, no host sync).
            freeze.stop_diverged(losses)
            optimizer.zero_grad(set_to_none=True)
            backward(losses.sum())
            if diagnose:
                self.record_diagnostics(logits.detach(), y, targets, logits.grad, hidden)
            if self.trace:  # before the update: the values this step's gradient was taken at
                self.trace_step(logits.detach())
            optimizer.step()
            step_losses.append(losses.detach())
        records.losses.append(torch.stack(step_losses))

    def record_diagnostics(
        self, logits: Tensor, labels: Tensor, targets: Tensor, grad: Tensor, hidden: list[Tensor]
    ) -> None:
        labels = labels.expand(logits.shape[:-1])
        outputs = self.outputs(logits)
        sums, true_class = diagnostics.error_signal_sums(
            outputs, logits, labels, grad, self.probabilities_on(logits.device)
        )
        layers = self.network.layer_parameters()
        slopes = [diagnostics.sigmoid_slopes(h) for h in hidden]
        factor = diagnostics.output_factor(grad, outputs, targets)
        values = diagnostics.layer_values(
            [weight.grad for _, weight, _ in layers],
            [bias.grad for _, _, bias in layers],
            slopes,
            factor,
        )
        records = self.records
        records.signal_sums.append(sums)
        records.layer_values.append(values)
        records.true_class.append(true_class)
        records.unit_bias_grads.append(
            [bias.grad.abs().reshape(len(bias), -1) for *_, bias in layers]
        )
        records.unit_slopes.append([slope.mean(dim=1) for slope in slopes])

    def trace_step(self, logits: Tensor) -> None:
        columns = [self.outputs(logits).flatten(1).mean(dim=1)]
        columns += [p.detach() for p in self.network.stacked if p.dim() == 1]
        self.records.trace.append(torch.stack(columns, dim=1))

    def trace_names(self) -> list[str]:
        """The trace's scalar parameters, after its mean output (``trace_step``)."""
        names = zip(self.network.names, self.network.stacked, strict=True)
        return [f"param/{n}" for n, p in names if p.dim() == 1]

    def fixed_sample_values(self, x: Tensor, y: Tensor) -> list[dict[str, float]]:
        """The why, measured over a fixed set of training images: saturation, the output
        factor, the error signal of wrong and right samples, and each layer's ||dC/db||
        (Nielsen's "speed of learning"): each member's, under ``diag/fixed/``."""
        with torch.inference_mode(False), torch.enable_grad():
            logits, _ = self.network(x)
            targets = targets_like(logits.detach(), y)
            biases = [bias for _, _, bias in self.network.layer_parameters()]
            losses = self.member_losses(logits, targets)
            # autograd.grad leaves the parameters' .grad alone: training is not disturbed.
            logits_grad, *bias_grads = torch.autograd.grad(losses.sum(), [logits, *biases])
        logits = logits.detach()
        values = diagnostics.fixed_sample_values(
            self.outputs(logits),
            logits,
            y.expand(logits.shape[:-1]),
            targets,
            logits_grad,
            self.probabilities_on(logits.device),
            bias_grads,
        ).tolist()
        names = [f"diag/fixed/{n}" for n in diagnostics.fixed_fields(self.network.layer_names)]
        return [dict(zip(names, row, strict=True)) for row in values]

    def evaluate(self, stage: str, batch: Batch) -> None:
        """One batch for all members, never copied once per member, added to the stage's sums
        [R, EVALUATION_SUMS]."""
        for x, y in batch:
            logits, _ = self.network(x)
            labels = y if not y.is_floating_point() else y.reshape(-1).long()
            count = logits.new_full((len(self.members),), len(labels))
            sums = [
                self.member_losses(logits, targets_like(logits, y)) * count,
                (predictions(logits) == labels).to(logits.dtype).sum(dim=-1),
                count,
            ]
            if self.trace:  # the mean output: the neuron's final o
                sums.append(self.outputs(logits).flatten(1).mean(dim=1) * count)
            sums = torch.stack(sums, dim=1)
            self.eval_sums[stage] = (
                self.eval_sums[stage] + sums if stage in self.eval_sums else sums
            )

    def evaluation_results(self, stage: str, sums: Tensor) -> list[dict[str, float]]:
        """Each member's means over the stage's samples, from its (reduced) sums."""
        results = []
        for loss, correct, count, *output in sums.tolist():
            values = {f"{stage}/loss": loss / count, f"{stage}/acc": correct / count}
            if self.trace:
                values[f"{stage}/output"] = output[0] / count
            results.append(values)
        return results
