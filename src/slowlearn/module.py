"""The LightningModule: Lightning's hooks around the members' step (``slowlearn.step``).

One Lightning batch is a chunk of K mini-batches (see ``slowlearn.data.DeviceBatches``);
``training_step`` takes K optimiser steps through it with manual optimisation, so the SGD
semantics are those of K separate batches while Lightning's per-batch overhead is paid once
per K. Per-step values stay on the device and reach each member's loggers once per chunk
(``slowlearn.member_logs``): no host sync per step. On a GPU the K steps are captured once in
a CUDA graph and replayed (``slowlearn.cuda_graphs``, ``module.cuda_graphs``): the same step
code, one launch per chunk. Epoch times are taken by ``slowlearn.timing.EpochTimer``, and
checkpoints written and read by ``slowlearn.checkpoints``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.loggers import Logger
from pytorch_lightning.strategies import SingleDeviceStrategy
from torch import Tensor
from typing_extensions import override

from slowlearn import checkpoints, diagnostics
from slowlearn.cuda_graphs import ChunkGraphs, chunk_graphs
from slowlearn.data import Chunk
from slowlearn.internals import count_optimizer_steps
from slowlearn.member_logs import MemberHistory, MemberLogs
from slowlearn.model import MemberStack
from slowlearn.optimizers import MemberOptimizer
from slowlearn.step import Batch, Member, MemberStep
from slowlearn.timing import EpochTimer


class LitClassifier(pl.LightningModule):
    def __init__(
        self,
        network: MemberStack,
        members: Sequence[Member],
        optimizer: Callable[..., MemberOptimizer],
        loss_window: int = 10,
        diagnostics_every_n_steps: int = 10,
        diagnostics_window: int = 100,
        trace: bool = False,
        backward_hooks: bool = False,
        cuda_graphs: bool | str = "auto",
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.network = network  # registered here: the checkpoint's keys are network.*
        self.step = MemberStep(network, members, diagnostics_every_n_steps, trace)
        self.optimizer_rule = optimizer  # the rule with its settings; step gives the lrs
        self.backward_hooks = backward_hooks
        self.plain_backward = False  # decided in on_fit_start, once the strategy is known
        self.cuda_graphs = cuda_graphs  # auto: on for one CUDA device
        self.chunk_graphs: ChunkGraphs | None = None  # on_fit_start, where graphs are on
        self.logs = MemberLogs(
            self.step.records,
            len(self.members),
            network.layer_names,
            diagnostics.layer_fields(network.layer_names, self.step.sigmoid_hidden),
            self.step.trace_names(),
            loss_window,
            diagnostics_every_n_steps,
            diagnostics_window,
        )
        # The last chunk's values are logged before validation and the checkpoint, and count
        # as the training steps' time.
        self.timer = EpochTimer(end_of_steps=self.logs.flush_in_flight)
        self.resumed = False  # from a checkpoint

    @property
    def members(self) -> list[Member]:
        return self.step.members

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

    @override
    def configure_callbacks(self) -> list[pl.Callback]:
        # After the trainer's own callbacks, as the module's hooks are. Lightning asks again at
        # test time, when the timer is already there: it would announce replacing it by itself.
        return [] if self.timer in self.trainer.callbacks else [self.timer]

    @override
    def configure_optimizers(self) -> MemberOptimizer:
        return self.step.make_optimizer(self.optimizer_rule)

    # ------------------------------------------------------------ training

    @override
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
        trainer = self.trainer
        self.chunk_graphs = chunk_graphs(
            self.cuda_graphs,
            f"{self.device.type}, precision {trainer.precision}, {type(trainer.strategy).__name__}",
            self.device.type == "cuda" and self.plain_backward,
            getattr(trainer.datamodule, "steps_per_chunk", None),
            self.step.diagnostics_every_n_steps,
            # Lightning counts global_step in Python at each optimizer step; a replay does not.
            lambda: ChunkGraphs(self.take_steps, self.step.records, count_optimizer_steps(trainer)),
        )

    @override
    def on_train_start(self) -> None:
        if self.resumed:
            checkpoints.move_records(self.step.records, self.device)
        elif self.global_step == 0:
            self._log_fixed_sample()

    @override
    def training_step(self, batch: Batch, batch_idx: int) -> None:
        first_step = self.global_step  # updates made before this chunk
        diagnosed = self.step.diagnosed(first_step, len(batch))
        if self.chunk_graphs is not None and isinstance(batch, Chunk):
            self.chunk_graphs.run(batch, diagnosed)
        else:
            self.take_steps(batch, diagnosed, captured=False)
        losses = self.logs.pass_on(first_step, self.global_step)
        if losses is not None:
            self._show_progress(losses)

    def take_steps(self, batch: Batch, diagnosed: tuple[int, ...], captured: bool) -> None:
        """The chunk's steps (``MemberStep.take_steps``). ``captured``: into a CUDA graph,
        which replays the update itself (Lightning's optimizer wrapper counts steps in
        Python)."""
        optimizer = self.optimizers().optimizer if captured else self.optimizers()
        backward = Tensor.backward if self.plain_backward else self.manual_backward
        self.step.take_steps(batch, diagnosed, optimizer, backward)

    def _log_fixed_sample(self) -> None:
        """The fixed-sample diagnostics (``MemberStep.fixed_sample_values``), logged at the
        current step: at step 0 and at every epoch's end."""
        sample = getattr(self.trainer.datamodule, "fixed_training_sample", None)
        if sample is None or self.step.diagnostics_every_n_steps <= 0:
            return
        values = self.step.fixed_sample_values(*sample())
        for member in self.logs.training():
            finite = {n: v for n, v in values[member].items() if math.isfinite(v)}
            self.logs.log(member, finite, self.global_step)

    def _show_progress(self, losses: list[list[float]]) -> None:
        """The progress bar's values: the loss of a single run, the number of members still
        training in a group (their objectives differ: a mean would mean nothing)."""
        if len(self.members) == 1:
            self.log("loss", losses[0][-1], prog_bar=True, logger=False)
        else:
            self.log("members", float(len(self.logs.training())), prog_bar=True, logger=False)

    @override
    def on_train_epoch_end(self) -> None:
        self.logs.flush_diagnostics(self.global_step)
        self.logs.log_histograms(self.global_step)
        self._log_fixed_sample()
        metrics = {"time/epoch_seconds": self.timer.epoch_seconds[-1], "epoch": self.current_epoch}
        for member in self.logs.training():
            self.logs.log(member, metrics, self.global_step)

    # ------------------------------------------------------------ evaluation

    def _log_evaluation(self, stage: str) -> list[dict[str, float]]:
        """Each member's loss and accuracy over the stage's samples, logged at the optimiser
        step, the x-axis of every curve (Lightning's own would count chunks)."""
        # Under DDP each rank evaluated its own share: the sums cover all of them.
        sums = self.trainer.strategy.reduce(self.step.eval_sums.pop(stage), reduce_op="sum")
        results = self.step.evaluation_results(stage, sums)
        for member, values in enumerate(results):
            if not self.histories[member].diverged:
                self.logs.log(member, values, self.global_step)
        training = [r for r, h in zip(results, self.histories, strict=True) if not h.diverged]
        if len(results) == 1:  # for the progress bar and callbacks
            self.log_dict(results[0], prog_bar=True, logger=False)
        elif training:
            best = max(values[f"{stage}/acc"] for values in training)
            self.log(f"{stage}/best_acc", best, prog_bar=True, logger=False)
        return results

    @override
    def validation_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        # A second validation loader, if any, is the test set watched every epoch (Nielsen's
        # chapter 3 reports test accuracy per epoch); nothing is selected on it.
        self.step.evaluate(("val", "test")[dataloader_idx], batch)

    @override
    def on_validation_epoch_end(self) -> None:
        results = self._log_evaluation("val")
        if "test" in self.step.eval_sums:
            results = [v | t for v, t in zip(results, self._log_evaluation("test"), strict=True)]
        if self.trainer.sanity_checking:
            return
        for history, values in zip(self.histories, results, strict=True):
            if not history.diverged:
                history.val_history.append(
                    {"epoch": self.current_epoch + 1, "step": self.global_step} | values
                )

    @override
    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self.step.evaluate("test", batch)

    @override
    def on_test_epoch_end(self) -> None:
        for history, values in zip(self.histories, self._log_evaluation("test"), strict=True):
            if not history.diverged:  # alone, a diverged run never reaches its test
                history.test_results = values

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoints.restore(checkpoint, self.network, self.logs, self.timer)
        self.resumed = True
