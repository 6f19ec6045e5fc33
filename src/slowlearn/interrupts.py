"""Ctrl-C during training stops at the next batch, never in the middle of writing a file.

Python raises KeyboardInterrupt between any two bytecodes of the main thread: inside a
TensorBoard writer's queue bookkeeping, it left a flush waiting for its writer thread (a
sweep that hung after Ctrl-C). Here the first SIGINT only asks to stop; the trainer stops at
the start of its next chunk of training steps or test batch, where Lightning's own graceful
shutdown takes over as if Ctrl-C had come there. A second Ctrl-C interrupts at once, as it
would have without this.

The stop is a ``StopRequested``, a KeyboardInterrupt that says where it came: at the start of
a training chunk the members' state is whole (the last chunk's steps done, the next one not
begun), so ``slowlearn.checkpoints`` writes each member's checkpoint at that very step.
Validation runs to its end (one batch of a few thousand images; seconds): a stop inside it
would leave an epoch whose end was half logged, to be logged again by the resumed run.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from pytorch_lightning.callbacks import Callback


class StopRequested(KeyboardInterrupt):
    """The asked-for stop; ``in_training``: at the start of a training chunk."""

    def __init__(self, in_training: bool) -> None:
        super().__init__("stopped at the next batch, as asked")
        self.in_training = in_training


class StopAtNextBatch(Callback):
    """Raises KeyboardInterrupt at the start of the first training chunk or test batch after
    a Ctrl-C, or once ``asked_elsewhere`` says so (a cluster's preemption signal, which may
    come before this callback is installed)."""

    def __init__(self, asked_elsewhere: Callable[[], bool] = lambda: False) -> None:
        self.requested = False
        self.asked_elsewhere = asked_elsewhere
        self.stopped = False  # handed over to Lightning's shutdown

    def request(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:  # the second Ctrl-C: the person does not want to wait
            raise KeyboardInterrupt
        self.requested = True

    def stop_if_requested(self, *args: Any, in_training: bool = False) -> None:
        if self.requested or (self.asked_elsewhere() and not self.stopped):
            self.requested, self.stopped = False, True
            raise StopRequested(in_training)

    def on_train_batch_start(self, *args: Any) -> None:
        self.stop_if_requested(in_training=True)

    on_test_batch_start = stop_if_requested

    @contextmanager
    def installed(self) -> Iterator[None]:
        """SIGINT asks this callback to stop while the block runs (main thread only: a signal
        handler cannot be set elsewhere, and there Ctrl-C never arrives anyway)."""
        try:
            previous = signal.signal(signal.SIGINT, self.request)
        except ValueError:  # not the main thread
            yield
            return
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)
            if self.requested:  # asked to stop, and the block ended before a batch began
                raise KeyboardInterrupt
