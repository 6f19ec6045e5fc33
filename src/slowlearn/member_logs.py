"""What each member's TensorBoard run gets, and when, and each member's host-side record.

Per-step values (losses, traces, diagnostics) wait on the device and reach the loggers once
per chunk, in one host transfer for all members, which starts when the chunk's steps are
queued and is read one chunk later (``hand_over``, then ``flush``): a GPU never waits for the
host's logging between chunks. ``train/loss`` is the mean over each window
of ``loss_window`` steps; the diagnostics are means over windows of at least
``diagnostics_window`` steps; histograms are written once per epoch. A value is logged at the
number of updates made before it was computed, the x-axis of every curve. A member whose loss
stopped being finite is recorded as diverged, with its step, and gets nothing more.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from pytorch_lightning.loggers import Logger, TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_only
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from torch import Tensor

from slowlearn import diagnostics
from slowlearn.internals import tensorboard_writer
from slowlearn.step import StepRecords


class Divergence(RuntimeError):
    """The training loss of every member became NaN or infinite."""


@dataclass
class MemberHistory:
    """One member's host-side record, written to its metrics.json by the entry point."""

    val_history: list[dict[str, float]] = field(default_factory=list)
    test_results: dict[str, float] = field(default_factory=dict)
    diverged: str = ""  # why, once its training loss was not finite
    last_finite_loss: float = math.nan
    last_logged_loss: float = math.nan  # the last train/loss value: a mean over its window
    interval_sum: float = 0.0
    interval_count: int = 0


def to_host(tensor: Tensor) -> Tensor:
    """A copy on the host that does not wait for the device (``Transfer.wait`` does)."""
    return tensor.to("cpu", non_blocking=True)


@dataclass
class Transfer:
    """One chunk's values on their way to the host (``MemberLogs.hand_over``)."""

    first_step: int  # the number of updates before the chunk: the step of its first loss
    losses: Tensor  # [K, R]
    trace: Tensor | None  # [R, K, columns]
    window: tuple[Tensor, Tensor, int] | None  # a full diagnostics window and its step
    ready: torch.cuda.Event | None = None  # recorded after the copies from a CUDA device

    def started(self, device: torch.device) -> Transfer:
        if device.type == "cuda":
            self.ready = torch.cuda.Event()
            self.ready.record()
        return self

    def wait(self) -> None:
        if self.ready is not None:
            self.ready.synchronize()


def log_scalars(logger: Logger, metrics: dict[str, float], step: int) -> None:
    """All of one step's values: for TensorBoard as one event (its writer costs about 0.1 ms
    per event, and Lightning's log_metrics writes one per value: a diagnostics window of 20
    values for each of 18 members would cost 36 ms); other loggers as Lightning logs."""
    if not isinstance(logger, TensorBoardLogger) or rank_zero_only.rank != 0:
        logger.log_metrics(metrics, step)  # rank zero only, as Lightning logs
        return
    values = [Summary.Value(tag=tag, simple_value=value) for tag, value in metrics.items()]
    event = Event(step=step, wall_time=time.time(), summary=Summary(value=values))
    tensorboard_writer(logger).add_event(event)


class MemberLogs:
    def __init__(
        self,
        records: StepRecords,
        members: int,
        layer_names: Sequence[str],
        layer_fields: Sequence[str],
        trace_names: Sequence[str],
        loss_window: int,
        diagnostics_every_n_steps: int,
        diagnostics_window: int,
    ) -> None:
        self.layer_names, self.layer_fields = list(layer_names), list(layer_fields)
        self.trace_names = ["train/output", *trace_names]
        self.loss_window = loss_window
        self.diagnostics_every_n_steps = diagnostics_every_n_steps
        self.diagnostics_window = diagnostics_window
        self.loggers: list[list[Logger]] = [[] for _ in range(members)]  # each member's own
        self.histories = [MemberHistory() for _ in range(members)]
        self.records = records  # the step's, which it appends to and this clears
        self.in_flight: Transfer | None = None  # the last chunk's values, on their way

    def training(self) -> list[int]:
        """The members still training (not diverged)."""
        return [member for member, history in enumerate(self.histories) if not history.diverged]

    def log(self, member: int, metrics: dict[str, float], step: int) -> None:
        for logger in self.loggers[member]:
            log_scalars(logger, metrics, step)

    def hand_over(self, first_step: int, step: int) -> Transfer:
        """Start this chunk's values (and a full diagnostics window, logged at ``step``) on
        their way to the host, without waiting for the device: ``flush`` logs them later, so
        that a GPU runs the next chunk meanwhile."""
        records = self.records
        device = records.losses[0].device
        window = None
        if self.window_is_full():
            window = self._window_tensors()
        transfer = Transfer(
            first_step,
            to_host(torch.cat(records.losses)),
            to_host(torch.stack(records.trace, dim=1)) if records.trace else None,
            (to_host(window[0]), to_host(window[1]), step) if window else None,
        )
        records.losses.clear()
        records.trace.clear()
        return transfer.started(device)

    def pass_on(self, first_step: int, step: int) -> list[list[float]] | None:
        """Hand this chunk's values over and flush the chunk's before, on the host by now;
        return its losses [R][K] (None after the first chunk)."""
        handed_over = self.hand_over(first_step, step)
        losses = self.flush(self.in_flight) if self.in_flight is not None else None
        self.in_flight = handed_over
        return losses

    def flush_in_flight(self) -> None:
        """Flush the last chunk's values (the training steps are over), waiting for them."""
        if self.in_flight is not None:
            transfer, self.in_flight = self.in_flight, None
            self.flush(transfer)

    def flush(self, transfer: Transfer) -> list[list[float]]:
        """Send a chunk's per-step values to the loggers; return its losses [R][K].

        Raises Divergence once every member's loss has stopped being finite.
        """
        transfer.wait()
        losses = transfer.losses.T.tolist()
        for member in self.training():
            history = self.histories[member]
            for step, value in enumerate(losses[member], start=transfer.first_step):
                if not math.isfinite(value):
                    history.diverged = (
                        f"training loss is {value} at step {step}; "
                        f"last finite loss {history.last_finite_loss:.6g}"
                    )
                    break
                history.last_finite_loss = value
                history.interval_sum += value
                history.interval_count += 1
                if (step + 1) % self.loss_window == 0:
                    history.last_logged_loss = history.interval_sum / history.interval_count
                    self.log(member, {"train/loss": history.last_logged_loss}, step)
                    history.interval_sum, history.interval_count = 0.0, 0
        if transfer.trace is not None:
            for member, rows in enumerate(transfer.trace.tolist()):  # [R][K][columns]
                for step, row in enumerate(rows, transfer.first_step):
                    self.log(member, dict(zip(self.trace_names, row, strict=True)), step)
        if transfer.window is not None:
            self._log_window(*transfer.window)
        if not self.training():
            only = len(self.histories) == 1
            raise Divergence(
                self.histories[0].diverged if only else "every member's loss stopped being finite"
            )
        return losses

    def window_is_full(self) -> bool:
        diagnosed_steps = len(self.records.signal_sums) * self.diagnostics_every_n_steps
        return diagnosed_steps >= self.diagnostics_window

    def _window_tensors(self) -> tuple[Tensor, Tensor]:
        """The window's error-signal sums and mean layer values, [R, F] each; cleared."""
        records = self.records
        sums = torch.stack(records.signal_sums).sum(dim=0)
        values = torch.stack(records.layer_values).mean(dim=0)
        records.signal_sums.clear()
        records.layer_values.clear()
        return sums, values

    def _log_window(self, sums: Tensor, values: Tensor, step: int) -> None:
        member_sums, member_values = sums.tolist(), values.tolist()
        for member in self.training():
            metrics = diagnostics.window_means(member_sums[member])
            metrics |= dict(zip(self.layer_fields, member_values[member], strict=True))
            self.log(member, {f"diag/{name}": v for name, v in metrics.items()}, step)

    def flush_diagnostics(self, step: int) -> None:
        """Log the diagnostics window so far (the end of an epoch), waiting for the device."""
        if self.records.signal_sums:
            self._log_window(*self._window_tensors(), step)

    def log_histograms(self, step: int) -> None:
        """Per epoch: the per-sample |de/dz_y|, and per layer the per-unit mean |dC/db_j| and
        (sigmoid layers) mean slope, each under a tag that no scalar uses."""
        records = self.records
        if not records.true_class:
            return
        series = {"hist/error_signal_true_class": torch.cat(records.true_class, dim=1)}
        for index, name in enumerate(self.layer_names):
            units = torch.stack([step[index] for step in records.unit_bias_grads]).mean(dim=0)
            series[f"hist/bias_grad/{name}"] = units
        for index, name in enumerate(self.layer_names[:-1] if records.unit_slopes[0] else []):
            units = torch.stack([step[index] for step in records.unit_slopes]).mean(dim=0)
            series[f"hist/sigmoid_slope/{name}"] = units
        for member in self.training():
            for logger in self.loggers[member]:
                if isinstance(logger, TensorBoardLogger):
                    for tag, values in series.items():
                        logger.experiment.add_histogram(tag, values[member], step)
        records.true_class.clear()
        records.unit_bias_grads.clear()
        records.unit_slopes.clear()
