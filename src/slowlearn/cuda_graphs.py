"""Whole-chunk CUDA graphs: a chunk's K training steps captured once, then replayed.

On a GPU a small MLP's step is a few dozen tiny kernels, and launching them from Python costs
more than running them. Here a chunk's steps (forward, objectives, backward, update and the
on-device records) are captured in one CUDA graph per kind of chunk and replayed for every
later chunk of that kind: one launch per chunk. The steps are the caller's own step code;
what a replay needs that eager steps get for free is done here:

- Inputs through a static buffer: the chunk's block of the epoch's order (drawn on the CPU
  and copied to the device once per epoch, as without graphs) is copied into the graph's own
  block, from which the captured steps gather their mini-batches.
- Outputs: what the steps append to the records during the capture are the graph's static
  tensors; after each replay they are cloned into the records, as eager steps append them.
- Python state does not replay: ``on_replay(K)`` counts the steps (Lightning's global_step),
  and the optimizer keeps its step count on the device (``capturable``).
- Warm-up: the first chunk runs eagerly, on a side stream as the CUDA-graph documentation
  asks, and creates the optimizer's state (SGD's momentum buffers appear at its first step).
  It is a chunk of the run's own training, not extra steps.

A kind of chunk is its mini-batch shapes and ``variant``, whatever else makes the steps differ
(which of them are diagnosed): the last, shorter chunk of an epoch has a graph of its own.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Hashable
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor

from slowlearn.data import Chunk
from slowlearn.errors import ConfigError

# steps(chunk, variant, captured): the K steps of a chunk; ``captured`` is True while they
# are being captured (then they must not sync with the host, nor count steps in Python).
Steps = Callable[[Chunk, Hashable, bool], None]


def cloned(entry: Any) -> Any:
    """A record's copy: a tensor, or a list of them (per-layer records)."""
    return entry.clone() if isinstance(entry, Tensor) else [cloned(item) for item in entry]


@dataclass
class CapturedChunk:
    graph: torch.cuda.CUDAGraph
    block: Tensor  # the static input: the chunk's part of the epoch's order
    outputs: dict[str, list[Any]]  # the static records, by records field


class ChunkGraphs:
    """Runs chunks as CUDA graphs: ``run(chunk, variant)`` instead of ``steps(chunk, variant,
    False)``, with the same effect on the weights, the optimizer and ``records`` (None, or a
    dataclass whose list fields the steps append to: ``member_logs.StepRecords``)."""

    def __init__(
        self,
        steps: Steps,
        records: Any = None,
        on_replay: Callable[[int], None] = lambda steps: None,
    ) -> None:
        self.steps, self.records, self.on_replay = steps, records, on_replay
        self.graphs: dict[Hashable, CapturedChunk] = {}
        # Never used eagerly: cuBLAS's workspace for it is made during the first capture, in
        # the graph's own memory. One made outside (by eager steps on this stream) is freed
        # by Lightning at every fit's start and end, under a graph that still writes to it.
        self.capture_stream: torch.cuda.Stream | None = None  # after the warm-up

    def run(self, chunk: Chunk, variant: Hashable = None) -> None:
        if chunk.block is None:
            raise ValueError("a CUDA graph takes a chunk of index mini-batches (with a block)")
        if self.capture_stream is None:  # the warm-up chunk, on a side stream of its own
            side, current = torch.cuda.Stream(), torch.cuda.current_stream()
            side.wait_stream(current)
            with torch.cuda.stream(side):
                self.steps(chunk, variant, False)
            current.wait_stream(side)
            self.capture_stream = torch.cuda.Stream()
            return
        key = (tuple(chunk.block.shape), tuple(chunk.batch_sizes), variant)
        captured = self.graphs.get(key) or self.capture(chunk, variant, key)
        captured.block.copy_(chunk.block)
        captured.graph.replay()
        for name, outputs in captured.outputs.items():
            getattr(self.records, name).extend(cloned(entry) for entry in outputs)
        self.on_replay(len(chunk))

    def capture(self, chunk: Chunk, variant: Hashable, key: Hashable) -> CapturedChunk:
        block = chunk.block.clone()  # allocated outside the graph's memory pool
        static = Chunk(chunk.images, chunk.labels, list(block.split(chunk.batch_sizes, -1)), block)
        names = [field.name for field in fields(self.records)] if self.records is not None else []
        before = {name: len(getattr(self.records, name)) for name in names}
        graph = torch.cuda.CUDAGraph()
        # No garbage collection while capturing: collecting an earlier run's graphs frees
        # device memory, which a capturing stream does not permit (torch >= 2.9 no longer
        # collects before a capture; it crashed the benchmark's second round on the H200).
        collecting = gc.isenabled()
        gc.disable()
        try:
            with torch.cuda.graph(graph, stream=self.capture_stream):
                self.steps(static, variant, True)
        finally:
            if collecting:
                gc.enable()
        outputs = {}
        for name in names:  # nothing ran yet: the captured entries are the graph's outputs
            entries = getattr(self.records, name)
            if len(entries) > before[name]:
                outputs[name] = entries[before[name] :]
                del entries[before[name] :]
        self.graphs[key] = CapturedChunk(graph, block, outputs)
        return self.graphs[key]


def chunk_graphs(
    setting: bool | str,
    where: str,
    eager: bool,
    steps_per_chunk: int | None,
    diagnostics_every_n_steps: int,
    make: Callable[[], ChunkGraphs],
) -> ChunkGraphs | None:
    """``make()``, where ``module.cuda_graphs`` (``setting``: auto, true or false) turns CUDA
    graphs on: ``auto`` where ``eager`` (one CUDA device, 32-bit, a plain backward), which
    ``true`` requires. ``where`` describes the run for the error."""
    if setting is False:
        return None
    if not eager:
        if setting is True:
            raise ConfigError(
                f"module.cuda_graphs=true needs one CUDA device, 32-bit precision and "
                f"module.backward_hooks=false; this run has {where}"
                f"; valid choices: auto, true, false"
            )
        return None
    chunk, every = steps_per_chunk, diagnostics_every_n_steps
    if chunk and every > 0 and chunk % every:
        # Then every chunk diagnoses the same of its steps, and one graph serves them all.
        raise ConfigError(
            f"data.steps_per_chunk={chunk} must be a multiple of "
            f"module.diagnostics_every_n_steps={every} under CUDA graphs "
            f"(module.cuda_graphs={setting}); or set module.cuda_graphs=false"
        )
    return make()
