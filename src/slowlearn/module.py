"""The LightningModule: R >= 1 members trained as one program, one step implementation.

A single run is a group of one. The members' weights are stacked (``model.MemberStack``);
each member gathers its own mini-batch from its own data order; each objective runs once per
cell over that cell's members; the step's loss is the SUM of the members' batch means, so
that each member's gradient is exactly its own (a mean would divide every member's learning
rate by R); one update (``optimizers.MemberOptimizer``) steps every member with its own lr.
A member whose loss stops being finite is frozen and recorded as diverged; the rest go on.

One Lightning batch is a chunk of K mini-batches (see ``slowlearn.data.DeviceBatches``);
``training_step`` takes K optimiser steps through it with manual optimisation, so the SGD
semantics are those of K separate batches while Lightning's per-batch overhead is paid once
per K. Per-step values stay on the device and reach each member's loggers once per chunk: no
host sync per step. On a GPU the K steps are captured once in a CUDA graph and replayed
(``slowlearn.cuda_graphs``, ``module.cuda_graphs``): the same step code, one launch per chunk.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import Logger
from pytorch_lightning.strategies import SingleDeviceStrategy
from torch import Tensor

from slowlearn import diagnostics
from slowlearn.checkpoints import member_checkpoint, stack_checkpoint
from slowlearn.cuda_graphs import ChunkGraphs
from slowlearn.data import Chunk
from slowlearn.errors import ConfigError
from slowlearn.internals import count_optimizer_steps
from slowlearn.losses import ACTIVATIONS, Objective, objective, targets_like
from slowlearn.member_logs import MemberHistory, MemberLogs, Transfer
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
    """What may differ between the members of a group, besides the initial weights and the
    data order, which come from the seed."""

    activation: str
    loss: str
    log_base: float
    lr: float

    @property
    def cell(self) -> tuple[str, str, float]:
        return self.activation, self.loss, self.log_base


def log_base_value(base: str | float) -> float:
    return math.e if base == "e" else float(base)


class LitClassifier(pl.LightningModule):
    def __init__(
        self,
        network: MemberStack,
        members: Sequence[Member],
        optimizer: type[MemberOptimizer],
        optimizer_settings: dict[str, Any],
        log_every_n_steps: int = 10,
        diagnostics_every_n_steps: int = 10,
        diagnostics_window: int = 100,
        trace: bool = False,
        backward_hooks: bool = False,
        cuda_graphs: bool | str = "auto",
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.network, self.members = network, list(members)
        self.optimizer_class, self.optimizer_settings = optimizer, optimizer_settings
        self.diagnostics_every_n_steps = diagnostics_every_n_steps
        self.trace = trace
        self.backward_hooks = backward_hooks
        self.plain_backward = False  # decided in on_fit_start, once the strategy is known
        self.cuda_graphs = cuda_graphs  # auto: on for one CUDA device
        self.chunk_graphs: ChunkGraphs | None = None  # on_fit_start, where graphs are on
        self.in_flight: Transfer | None = None  # the last chunk's values, on their way to the host
        # Members of one cell sit side by side: each objective runs once over its slice.
        self.cells: list[Cell] = []
        start = 0
        for stop in range(1, len(self.members) + 1):
            if stop == len(self.members) or self.members[stop].cell != self.members[start].cell:
                activation, loss, base = self.members[start].cell
                cell_objective = objective(activation, loss, base)
                self.cells.append(
                    Cell(slice(start, stop), cell_objective, ACTIVATIONS[activation].outputs)
                )
                start = stop
        probabilities = [ACTIVATIONS[m.activation].log_outputs is not None for m in members]
        self.register_buffer("probabilities", torch.tensor(probabilities), persistent=False)
        self.sigmoid_hidden = network.hidden_activation == "sigmoid"
        self.logs = MemberLogs(
            len(self.members),
            network.layer_names,
            diagnostics.layer_fields(network.layer_names, self.sigmoid_hidden),
            [
                f"param/{n}"
                for n, p in zip(network.names, network.stacked, strict=True)
                if p.dim() == 1
            ],
            log_every_n_steps,
            diagnostics_every_n_steps,
            diagnostics_window,
        )
        self.epoch_seconds: list[float] = []  # whole epochs: steps, logging, validation
        self.epoch_training_seconds: list[float] = []  # each epoch's training steps alone
        # Where the time went: training steps (until validation begins) and evaluation.
        self.seconds = {"training": 0.0, "evaluation": 0.0}
        self.epoch_started = self.evaluation_started = 0.0
        self.eval_sums: dict[str, Tensor] = {}
        # A single run has no other members to protect: its divergence ends it (at the next
        # flush), so it skips the freezing masks.
        self.freeze = len(self.members) > 1

    @property
    def histories(self) -> list[MemberHistory]:
        return self.logs.histories

    @property
    def member_loggers(self) -> list[list[Logger]]:
        """Each member's own loggers (its TensorBoard run); the trainer holds all of them."""
        return self.logs.loggers

    @member_loggers.setter
    def member_loggers(self, loggers: list[list[Logger]]) -> None:
        self.logs.loggers = loggers

    # ------------------------------------------------------------ the objectives

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

    # ------------------------------------------------------------ training

    def on_fit_start(self) -> None:
        # manual_backward costs about 10% of a small model's CPU step in hook calls. Where it
        # does nothing else (one device, 32-bit) a plain backward is the same computation;
        # DDP needs it to re-arm gradient sync before each backward, mixed precision to scale.
        self.plain_backward = (
            not self.backward_hooks
            and isinstance(self.trainer.strategy, SingleDeviceStrategy)
            and str(self.trainer.precision) == "32-true"
        )
        # On CUDA the optimizer's counts live on the device (torch.optim's ``capturable``):
        # a graph can replay the update, and eager and graphed steps do the same arithmetic.
        # (Adam's bias corrections as host numbers moved a graphed run 1.6e-4 off the eager
        # one in 200 steps: its steps amplify rounding where a moment is near zero.)
        self.optimizers().optimizer.capturable = self.device.type == "cuda"
        self.chunk_graphs = self._chunk_graphs()

    def _chunk_graphs(self) -> ChunkGraphs | None:
        """The CUDA graphs of the training chunks, where ``cuda_graphs`` turns them on."""
        if self.cuda_graphs is False:
            return None
        if self.device.type != "cuda" or not self.plain_backward:
            if self.cuda_graphs is True:
                raise ConfigError(
                    f"module.cuda_graphs=true needs one CUDA device, 32-bit precision and "
                    f"module.backward_hooks=false; this run has {self.device.type}, "
                    f"precision {self.trainer.precision}, {type(self.trainer.strategy).__name__}"
                    f"; valid choices: auto, true, false"
                )
            return None
        chunk = getattr(self.trainer.datamodule, "steps_per_chunk", None)
        every = self.diagnostics_every_n_steps
        if chunk and every > 0 and chunk % every:
            # Then every chunk diagnoses the same of its steps, and one graph serves them all.
            raise ConfigError(
                f"data.steps_per_chunk={chunk} must be a multiple of "
                f"module.diagnostics_every_n_steps={every} under CUDA graphs "
                f"(module.cuda_graphs={self.cuda_graphs}); or set module.cuda_graphs=false"
            )
        # Lightning counts global_step in Python at each optimizer step; a replay does not.
        return ChunkGraphs(self.take_steps, self.logs.records, count_optimizer_steps(self.trainer))

    def on_train_start(self) -> None:
        if self.global_step == 0:
            self._log_fixed_sample()

    def training_step(self, batch: Batch, batch_idx: int) -> None:
        first_step = self.global_step  # updates made before this chunk
        every = self.diagnostics_every_n_steps
        # The chunk's steps whose global step is a multiple of ``every``.
        diagnosed = tuple(range(-first_step % every, len(batch), every)) if every > 0 else ()
        if self.chunk_graphs is not None and isinstance(batch, Chunk):
            self.chunk_graphs.run(batch, diagnosed)
        else:
            self.take_steps(batch, diagnosed, captured=False)
        handed_over = self.logs.hand_over(first_step, self.global_step)
        if self.in_flight is not None:  # the chunk before: on the host by now
            self._show_progress(self.logs.flush(self.in_flight))
        self.in_flight = handed_over

    def take_steps(self, batch: Batch, diagnosed: tuple[int, ...], captured: bool) -> None:
        """One optimiser step per mini-batch of the chunk; the chunk's losses [K, R] and the
        diagnosed steps' values go to the records. ``captured``: into a CUDA graph, which
        replays the update itself (Lightning's optimizer wrapper counts steps in Python)."""
        optimizer = self.optimizers().optimizer if captured else self.optimizers()
        records = self.logs.records
        freeze = self.optimizers().optimizer.freeze  # the mask's owner
        step_losses = []
        for offset, (x, y) in enumerate(batch):
            diagnose = offset in diagnosed and not y.is_floating_point()
            logits, hidden = self.network(
                x,
                keep_hidden=diagnose and self.sigmoid_hidden,
                training=freeze.training,
            )
            if diagnose:
                logits.retain_grad()
            targets = targets_like(logits.detach(), y)  # one-hot rows, once for every cell
            losses = self.member_losses(logits, targets)
            # Freeze a member whose loss is not finite, from this step on: the backward pass
            # and the update select its gradient away (on the device, no host sync).
            freeze.stop_diverged(losses)
            optimizer.zero_grad(set_to_none=True)
            if self.plain_backward:
                losses.sum().backward()
            else:
                self.manual_backward(losses.sum())
            if diagnose:
                self._record_diagnostics(logits.detach(), y, targets, logits.grad, hidden)
            if self.trace:  # before the update: the values this step's gradient was taken at
                self._trace_step(logits.detach())
            optimizer.step()
            step_losses.append(losses.detach())
        records.losses.append(torch.stack(step_losses))

    def _record_diagnostics(
        self, logits: Tensor, labels: Tensor, targets: Tensor, grad: Tensor, hidden: list[Tensor]
    ) -> None:
        labels = labels.expand(logits.shape[:-1])
        outputs = self.outputs(logits)
        sums, true_class = diagnostics.error_signal_sums(
            outputs, logits, labels, grad, self.probabilities
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
        records = self.logs.records
        records.signal_sums.append(sums)
        records.layer_values.append(values)
        records.true_class.append(true_class)
        records.unit_bias_grads.append(
            [bias.grad.abs().reshape(len(bias), -1) for *_, bias in layers]
        )
        records.unit_slopes.append([slope.mean(dim=1) for slope in slopes])

    def _trace_step(self, logits: Tensor) -> None:
        columns = [self.outputs(logits).flatten(1).mean(dim=1)]
        columns += [p.detach() for p in self.network.stacked if p.dim() == 1]
        self.logs.records.trace.append(torch.stack(columns, dim=1))

    def _log_fixed_sample(self) -> None:
        """The why, measured over a fixed set of training images (the same at every call, for
        every member), logged under ``diag/fixed/`` at the current step: saturation, the output
        factor, the error signal of wrong and right samples, and each layer's ||dC/db||
        (Nielsen's "speed of learning"). Taken at step 0 and at every epoch's end."""
        sample = getattr(self.trainer.datamodule, "fixed_training_sample", None)
        if sample is None or self.diagnostics_every_n_steps <= 0:
            return
        x, y = sample()
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
            self.probabilities,
            bias_grads,
        ).tolist()
        names = [f"diag/fixed/{n}" for n in diagnostics.fixed_fields(self.network.layer_names)]
        for member in self.logs.training():
            pairs = zip(names, values[member], strict=True)
            self.logs.log(member, {n: v for n, v in pairs if math.isfinite(v)}, self.global_step)

    def _show_progress(self, losses: list[list[float]]) -> None:
        """The progress bar's values: the loss of a single run, the number of members still
        training in a group (their objectives differ: a mean would mean nothing)."""
        if len(self.members) == 1:
            self.log("loss", losses[0][-1], prog_bar=True, logger=False)
        else:
            self.log("members", float(len(self.logs.training())), prog_bar=True, logger=False)

    def clock(self) -> float:
        """Now, once the device has caught up (a CUDA step may still be running)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def on_train_epoch_start(self) -> None:
        self.epoch_started = self.evaluation_started = self.clock()

    def _end_training_steps(self) -> float:
        """The epoch's training steps are over: its last chunk's values are logged (before
        validation and the checkpoint) and its steps' time counted. Returns now."""
        if self.in_flight is not None:
            transfer, self.in_flight = self.in_flight, None
            self.logs.flush(transfer)
        now = self.clock()
        self.seconds["training"] += now - self.epoch_started
        self.epoch_training_seconds.append(now - self.epoch_started)
        return now

    def on_validation_start(self) -> None:
        fitting = self.trainer.state.fn == "fit" and not self.trainer.sanity_checking
        self.evaluation_started = self._end_training_steps() if fitting else self.clock()

    def on_validation_end(self) -> None:
        self.seconds["evaluation"] += self.clock() - self.evaluation_started

    on_test_start = on_validation_start
    on_test_end = on_validation_end

    def on_train_epoch_end(self) -> None:
        validated = self.evaluation_started != self.epoch_started
        now = self.clock() if validated else self._end_training_steps()
        self.epoch_seconds.append(now - self.epoch_started)
        self.logs.flush_diagnostics(self.global_step)
        self.logs.log_histograms(self.global_step)
        self._log_fixed_sample()
        metrics = {"time/epoch_seconds": self.epoch_seconds[-1], "epoch": self.current_epoch}
        for member in self.logs.training():
            self.logs.log(member, metrics, self.global_step)

    # ------------------------------------------------------------ evaluation

    @staticmethod
    def predictions(logits: Tensor) -> Tensor:
        return logits.argmax(dim=-1) if logits.shape[-1] > 1 else (logits[..., 0] > 0).long()

    def _evaluate(self, stage: str, batch: Batch) -> None:
        """One batch for all members: never copied once per member."""
        for x, y in batch:
            logits, _ = self.network(x)
            labels = y if not y.is_floating_point() else y.reshape(-1).long()
            count = logits.new_full((len(self.members),), len(labels))
            sums = [
                self.member_losses(logits, targets_like(logits, y)) * count,
                (self.predictions(logits) == labels).to(logits.dtype).sum(dim=-1),
                count,
            ]
            if self.trace:  # the mean output: the neuron's final o
                sums.append(self.outputs(logits).flatten(1).mean(dim=1) * count)
            sums = torch.stack(sums, dim=1)
            self.eval_sums[stage] = (
                self.eval_sums[stage] + sums if stage in self.eval_sums else sums
            )

    def _log_evaluation(self, stage: str) -> list[dict[str, float]]:
        """Each member's loss and accuracy over the stage's samples, logged at the optimiser
        step, the x-axis of every curve (Lightning's own would count chunks)."""
        # Under DDP each rank evaluated its own share: the sums cover all of them.
        sums = self.trainer.strategy.reduce(self.eval_sums.pop(stage), reduce_op="sum")
        rows = sums.tolist()
        results = []
        for member, row in enumerate(rows):
            values = {f"{stage}/loss": row[0] / row[2], f"{stage}/acc": row[1] / row[2]}
            if self.trace:
                values[f"{stage}/output"] = row[3] / row[2]
            results.append(values)
            if not self.histories[member].diverged:
                self.logs.log(member, values, self.global_step)
        training = [r for r, h in zip(results, self.histories, strict=True) if not h.diverged]
        if len(results) == 1:  # for the progress bar and callbacks
            self.log_dict(results[0], prog_bar=True, logger=False)
        elif training:
            best = max(values[f"{stage}/acc"] for values in training)
            self.log(f"{stage}/best_acc", best, prog_bar=True, logger=False)
        return results

    def validation_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        # A second validation loader, if any, is the test set watched every epoch (Nielsen's
        # chapter 3 reports test accuracy per epoch); nothing is selected on it.
        self._evaluate(("val", "test")[dataloader_idx], batch)

    def on_validation_epoch_end(self) -> None:
        results = self._log_evaluation("val")
        if "test" in self.eval_sums:
            results = [v | t for v, t in zip(results, self._log_evaluation("test"), strict=True)]
        if self.trainer.sanity_checking:
            return
        for history, values in zip(self.histories, results, strict=True):
            if not history.diverged:
                history.val_history.append(
                    {"epoch": self.current_epoch + 1, "step": self.global_step} | values
                )

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate("test", batch)

    def on_test_epoch_end(self) -> None:
        for history, values in zip(self.histories, self._log_evaluation("test"), strict=True):
            if not history.diverged:  # alone, a diverged run never reaches its test
                history.test_results = values

    # ------------------------------------------------------------ checkpoints

    def member_checkpoint(self, checkpoint: dict[str, Any], member: int) -> dict[str, Any]:
        """A single run's checkpoint of ``member``, from the group's (``slowlearn.checkpoints``)."""
        records = {
            "val_history": self.histories[member].val_history,
            "epoch_seconds": self.epoch_seconds,
            "epoch_training_seconds": self.epoch_training_seconds,
        }
        optimizer = self.optimizers().optimizer
        return member_checkpoint(checkpoint, self.network, optimizer, member, records)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Resume from a single run's checkpoint (a group of one), and its records."""
        stack_checkpoint(checkpoint, self.network)
        records = checkpoint.get("slowlearn", {})
        self.histories[0].val_history = records.get("val_history", [])
        self.epoch_seconds = records.get("epoch_seconds", [])
        self.epoch_training_seconds = records.get("epoch_training_seconds", [])

    def configure_optimizers(self) -> MemberOptimizer:
        optimizer = self.optimizer_class(
            list(self.network.stacked),
            [member.lr for member in self.members],
            selected=self.network.input_layer_parameters(),
            freeze=self.freeze,
            **self.optimizer_settings,
        )
        return optimizer
