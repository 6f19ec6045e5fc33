"""The LightningModule: SGD steps on the configured objective, metrics and diagnostics logging.

One Lightning batch is a chunk of K mini-batches (see ``slowlearn.data.DeviceBatches``);
``training_step`` takes K ordinary optimiser steps through it with manual optimisation, so
the SGD semantics are those of K separate batches while Lightning's per-batch overhead is
paid once per K. Per-step values stay on the device and reach the loggers once per chunk:
no host sync per step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.strategies import SingleDeviceStrategy
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from slowlearn import diagnostics
from slowlearn.losses import ACTIVATIONS, LOSSES, check_choice, objective, probabilities

Batch = Iterable[tuple[Tensor, Tensor]]  # one Lightning batch: a chunk of (x, y) mini-batches
OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


@dataclass
class StepRecords:
    """Per-step values waiting on the device for the next flush to the loggers.

    A plain object: nn.Module.__setattr__ is slow enough to show in the training loop.
    """

    losses: list[Tensor] = field(default_factory=list)
    trace: list[Tensor] = field(default_factory=list)
    error_signal_sums: list[Tensor] = field(default_factory=list)
    grad_norms: list[Tensor] = field(default_factory=list)
    grad_norm_names: list[str] = field(default_factory=list)
    histogram: list[Tensor] = field(default_factory=list)  # per-sample |de/dz_y|, per epoch
    interval_sum: float = 0.0
    interval_count: int = 0
    last_finite_loss: float = math.nan
    last_logged_loss: float = math.nan  # the last train/loss value: a mean over its window
    epoch_started: float = 0.0


class Divergence(RuntimeError):
    """The training loss became NaN or infinite."""


def log_base_value(base: str | float) -> float:
    return math.e if base == "e" else float(base)


class LitClassifier(pl.LightningModule):
    def __init__(
        self,
        model: nn.Module,
        optimizer: OptimizerFactory,
        activation: str = "softmax",
        loss: str = "nll",
        log_base: str | float = "e",
        num_classes: int = 10,
        log_every_n_steps: int = 10,
        diagnostics_every_n_steps: int = 10,
        diagnostics_window: int = 100,
        trace: bool = False,
        backward_hooks: bool = False,
    ) -> None:
        super().__init__()
        check_choice("activation", activation, ACTIVATIONS)
        check_choice("loss", loss, LOSSES)
        self.automatic_optimization = False
        self.model, self.optimizer_factory = model, optimizer
        self.activation, self.loss_name = activation, loss
        self.log_base = log_base_value(log_base)
        self.log_every_n_steps = log_every_n_steps
        self.diagnostics_every_n_steps = diagnostics_every_n_steps
        self.diagnostics_window = diagnostics_window
        self.trace = trace
        self.backward_hooks = backward_hooks
        self.plain_backward = False  # decided in on_fit_start, once the strategy is known
        self.metrics = nn.ModuleDict(
            {
                stage: nn.ModuleDict(
                    {
                        "loss": MeanMetric(),
                        "acc": MulticlassAccuracy(max(2, num_classes), average="micro"),
                    }
                )
                for stage in ("val", "test")
            }
        )
        # Host-side records, written to metrics.json by the entry point.
        self.val_history: list[dict[str, float]] = []
        self.epoch_seconds: list[float] = []
        self.test_results: dict[str, float] = {}
        self.records = StepRecords()

    # ------------------------------------------------------------ training

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def objective(self, logits: Tensor, target: Tensor) -> Tensor:
        return objective(self.activation, self.loss_name, logits, target, self.log_base)

    def on_fit_start(self) -> None:
        # manual_backward costs about 10% of a small model's CPU step in hook calls. Where it
        # does nothing else (one device, 32-bit) a plain backward is the same computation;
        # DDP needs it to re-arm gradient sync before each backward, mixed precision to scale.
        self.plain_backward = (
            not self.backward_hooks
            and isinstance(self.trainer.strategy, SingleDeviceStrategy)
            and str(self.trainer.precision) == "32-true"
        )

    def training_step(self, batch: Batch, batch_idx: int) -> None:
        optimizer = self.optimizers()
        records, every = self.records, self.diagnostics_every_n_steps
        first_step = self.global_step  # updates made before this chunk
        for offset, (x, y) in enumerate(batch):
            diagnose = (
                every > 0 and (first_step + offset) % every == 0 and not y.is_floating_point()
            )
            logits = self.model(x)
            if diagnose:
                logits.retain_grad()
            loss = self.objective(logits, y)
            optimizer.zero_grad(set_to_none=True)
            if self.plain_backward:
                loss.backward()
            else:
                self.manual_backward(loss)
            if diagnose:
                self._record_diagnostics(logits.detach(), y, logits.grad)
            if self.trace:  # before the update: the values this step's gradient was taken at
                self._trace_step(logits.detach())
            optimizer.step()
            records.losses.append(loss.detach())
        self._flush_step_logs(first_step)

    def _record_diagnostics(self, logits: Tensor, labels: Tensor, grad: Tensor) -> None:
        sums, true_class = diagnostics.error_signal_sums(self.activation, logits, labels, grad)
        names, norms = diagnostics.weight_grad_norms(self.model)
        self.records.grad_norm_names = names
        self.records.error_signal_sums.append(sums)
        self.records.grad_norms.append(norms)
        self.records.histogram.append(true_class)

    def _trace_step(self, logits: Tensor) -> None:
        scalars = [probabilities(self.activation, logits).mean()]
        scalars += [p.detach().reshape(()) for p in self.model.parameters() if p.numel() == 1]
        self.records.trace.append(torch.stack(scalars))

    def _flush_step_logs(self, first_step: int) -> None:
        """Send this chunk's per-step values to the loggers: one host sync per chunk.

        A value is logged at the number of updates made before it was computed, the same
        x-axis as validation: the loss at step 0 is the loss of the initial weights.
        """
        records = self.records
        losses = torch.stack(records.losses).tolist()
        for step, value in enumerate(losses, start=first_step):
            if not math.isfinite(value):
                raise Divergence(
                    f"training loss is {value} at step {step}; "
                    f"last finite loss {records.last_finite_loss:.6g}"
                )
            records.last_finite_loss = value
            records.interval_sum += value
            records.interval_count += 1
            if (step + 1) % self.log_every_n_steps == 0:
                records.last_logged_loss = records.interval_sum / records.interval_count
                self._log({"train/loss": records.last_logged_loss}, step)
                records.interval_sum, records.interval_count = 0.0, 0
        if records.trace:
            names = ["train/output"] + [
                f"param/{name}" for name, p in self.model.named_parameters() if p.numel() == 1
            ]
            for step, row in enumerate(torch.stack(records.trace).tolist(), first_step):
                self._log(dict(zip(names, row, strict=True)), step)
        self.log("loss", losses[-1], prog_bar=True, logger=False)
        records.losses.clear()
        records.trace.clear()
        diagnosed_steps = len(records.error_signal_sums) * self.diagnostics_every_n_steps
        if diagnosed_steps >= self.diagnostics_window:
            self._flush_diagnostics()

    def _flush_diagnostics(self) -> None:
        records = self.records
        if not records.error_signal_sums:
            return
        sums = torch.stack(records.error_signal_sums).sum(dim=0)
        metrics = {f"diag/{name}": value for name, value in diagnostics.window_means(sums).items()}
        norms = torch.stack(records.grad_norms).mean(dim=0).tolist()
        metrics |= {
            f"diag/grad_norm/{name}": value
            for name, value in zip(records.grad_norm_names, norms, strict=True)
        }
        self._log(metrics, self.global_step)
        records.error_signal_sums.clear()
        records.grad_norms.clear()

    def _log(self, metrics: dict[str, float], step: int) -> None:
        for logger in self.loggers:
            logger.log_metrics(metrics, step)

    def on_train_epoch_start(self) -> None:
        self.records.epoch_started = time.perf_counter()

    def on_train_epoch_end(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.epoch_seconds.append(time.perf_counter() - self.records.epoch_started)
        self._flush_diagnostics()
        if self.records.histogram:
            values = torch.cat(self.records.histogram)
            for logger in self.loggers:
                if isinstance(logger, TensorBoardLogger):
                    logger.experiment.add_histogram(
                        "diag/error_signal/true_class", values, self.global_step
                    )
            self.records.histogram.clear()
        self._log(
            {"time/epoch_seconds": self.epoch_seconds[-1], "epoch": self.current_epoch},
            self.global_step,
        )

    # ------------------------------------------------------------ evaluation

    def _predictions(self, logits: Tensor) -> Tensor:
        return logits.argmax(dim=1) if logits.shape[1] > 1 else (logits[:, 0] > 0).long()

    def _evaluate(self, stage: str, batch: Batch) -> None:
        metrics = self.metrics[stage]
        for x, y in batch:
            logits = self.model(x)
            metrics["loss"].update(self.objective(logits, y), weight=len(y))
            labels = y if not y.is_floating_point() else y.reshape(-1).long()
            metrics["acc"].update(self._predictions(logits), labels)

    def _log_evaluation(self, stage: str) -> dict[str, float]:
        metrics = self.metrics[stage]
        values = {f"{stage}/{name}": metric.compute() for name, metric in metrics.items()}
        for metric in metrics.values():
            metric.reset()
        # For the progress bar and callbacks; the loggers get the values at the optimiser
        # step, the x-axis of every curve (Lightning's own would count chunks).
        self.log_dict(values, prog_bar=True, logger=False)
        values = {name: float(value) for name, value in values.items()}
        self._log(values, self.global_step)
        return values

    def validation_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        # A second validation loader, if any, is the test set watched every epoch (Nielsen's
        # chapter 3 reports test accuracy per epoch); nothing is selected on it.
        self._evaluate(("val", "test")[dataloader_idx], batch)

    def on_validation_epoch_end(self) -> None:
        values = self._log_evaluation("val")
        if self.metrics["test"]["acc"].update_called:
            values |= self._log_evaluation("test")
        if not self.trainer.sanity_checking:
            self.val_history.append(
                {"epoch": self.current_epoch + 1, "step": self.global_step} | values
            )

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate("test", batch)

    def on_test_epoch_end(self) -> None:
        self.test_results = self._log_evaluation("test")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["slowlearn"] = {
            "val_history": self.val_history,
            "epoch_seconds": self.epoch_seconds,
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        records = checkpoint.get("slowlearn", {})
        self.val_history = records.get("val_history", [])
        self.epoch_seconds = records.get("epoch_seconds", [])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer_factory(self.model.parameters())
