"""Serving the data to training: device-resident tensors, one random order per member and
epoch, and chunks of mini-batches.

The whole dataset moves to the training device as uint8, is normalised there once (float32,
x / 255, flat rows of 784) and serves mini-batches by gathering a per-epoch random
permutation: no per-sample transform, no collate. The images are on the device once for any
number of members: member r's mini-batch is ``images[order[r, i:i+B]]``, so a step of R
members gathers ``[R, B, 784]`` and evaluation serves one ``[B, 784]`` batch to all.
Getting the files onto disk is ``slowlearn.prepare``.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor

from slowlearn.internals import chunks_completed
from slowlearn.prepare import load_split, prepare, raw_dir

log = logging.getLogger(__name__)

SPLITS = ("random", "tail")  # val_size samples held out at random (by split_seed), or the last


class EpochPermutation:
    """This rank's share of the random order of epoch e, seeded by (seed, e) alone, so a
    resumed run draws exactly the orders the uninterrupted run would have drawn."""

    def __init__(
        self, size: int, shuffle: bool, seed: int, rank: int = 0, world_size: int = 1
    ) -> None:
        self.size, self.shuffle, self.seed = size, shuffle, seed
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        return self.size // self.world_size

    def indices(self, epoch: int) -> Tensor:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            order = torch.randperm(self.size, generator=generator)
        else:
            order = torch.arange(self.size)
        # Equal shares per rank (DDP needs the same number of steps everywhere); the last
        # size % world_size samples of this epoch's order are left out of this epoch.
        usable = self.size - self.size % self.world_size
        return order[self.rank : usable : self.world_size]


Index = Tensor | slice  # [R, B] or [B] sample numbers, or a contiguous range of them


class Chunk:
    """K mini-batches: the K optimiser steps of one Lightning batch.

    Each mini-batch is gathered from the device tensors only when its step comes: gathering
    a whole chunk at once would write megabytes that fall out of the cache before use. An
    index [R, B] gathers each member's own mini-batch ([R, B, 784]); an index [B] or a slice
    serves one mini-batch to all members (a slice is a view: no copy).

    ``block`` is the chunk's part of the epoch's order, [R, L] or [L], of which the indices
    are consecutive pieces: a CUDA graph takes the chunk's data through one copy of it
    (``slowlearn.cuda_graphs``).
    """

    def __init__(
        self, images: Tensor, labels: Tensor, indices: list[Index], block: Tensor | None = None
    ) -> None:
        self.images, self.labels, self.indices, self.block = images, labels, indices, block

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def batch_sizes(self) -> list[int]:
        return [index.shape[-1] for index in self.indices]

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for index in self.indices:
            if isinstance(index, slice):
                yield self.images[index], self.labels[index]
            else:  # index_select: several times faster than advanced indexing on the CPU
                rows = index.reshape(-1)
                yield (
                    self.images.index_select(0, rows).view(*index.shape, -1),
                    self.labels.index_select(0, rows).view(index.shape),
                )


class DeviceBatches:
    """An iterable of chunks, each of ``steps_per_chunk`` (x, y) mini-batches.

    With ``orders`` (one per member) every member steps through its own random order of the
    epoch; without, the samples are served in order, one batch for all members.
    One Lightning batch carrying K mini-batches lets the LightningModule take K optimiser
    steps per call, paying Lightning's per-batch overhead once per K steps.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        batch_size: int,
        steps_per_chunk: int,
        orders: Sequence[EpochPermutation] | None,
        current_epoch: Callable[[], int],
        shard: EpochPermutation | None = None,
    ) -> None:
        self.images, self.labels = images, labels
        self.batch_size, self.steps_per_chunk = batch_size, steps_per_chunk
        self.orders, self.current_epoch = orders, current_epoch
        self.shard = shard  # evaluation under DDP: this rank's share, in order

    @property
    def samples(self) -> int:
        order = self.orders[0] if self.orders else self.shard
        return len(order) if order else len(self.labels)

    @property
    def steps(self) -> int:
        """Mini-batches per epoch: the optimiser steps of a training epoch."""
        return -(-self.samples // self.batch_size)

    def __len__(self) -> int:
        return -(-self.steps // self.steps_per_chunk)

    def epoch_order(self) -> Tensor | None:
        """This epoch's order on the device, one copy per epoch: [R, N] with one row per
        member, [N] for a DDP shard, or None for the samples in order (served as slices)."""
        if self.orders:
            epoch = self.current_epoch()
            return torch.stack([o.indices(epoch) for o in self.orders]).to(self.images.device)
        if self.shard:
            return self.shard.indices(0).to(self.images.device)
        return None

    def __iter__(self) -> Iterator[Chunk]:
        size, chunk_samples = self.batch_size, self.batch_size * self.steps_per_chunk
        order = self.epoch_order()
        if order is None:
            slices = [slice(start, start + size) for start in range(0, len(self.labels), size)]
            for start in range(0, len(slices), self.steps_per_chunk):
                yield Chunk(self.images, self.labels, slices[start : start + self.steps_per_chunk])
            return
        for start in range(0, order.shape[-1], chunk_samples):
            block = order[..., start : start + chunk_samples]
            yield Chunk(self.images, self.labels, list(block.split(size, dim=-1)), block)


class TrainingBatches(DeviceBatches):
    """The training epochs' chunks, resumable in the middle of an epoch: Lightning saves
    ``state_dict`` in each checkpoint and loads it before the resumed fit's first epoch, whose
    iteration then skips the chunks already trained. The orders depend on (seed, epoch)
    alone, so the rest of the epoch is exactly what the uninterrupted run served."""

    def __init__(self, *args: Any, chunks_completed: Callable[[], int], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.chunks_completed = chunks_completed
        self.resume_at: tuple[int, int] | None = None  # (epoch, chunks done) to skip once

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.current_epoch(), "chunks_completed": self.chunks_completed()}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.resume_at = (state["epoch"], state["chunks_completed"])

    def __iter__(self) -> Iterator[Chunk]:
        # Read when the epoch's first chunk is asked for: the epoch is set by then.
        resume_at, self.resume_at = self.resume_at, None
        chunks = super().__iter__()
        if resume_at is not None and resume_at[0] == self.current_epoch():
            chunks = itertools.islice(chunks, resume_at[1], None)
        yield from chunks


class ImageDataModule(pl.LightningDataModule):
    """MNIST or Fashion-MNIST: train/val from the 60k training set, test the official 10k.

    ``seed`` is one seed, or one per member of a group: member r's order of epoch e depends
    on (seed[r], e) alone, exactly as in a run of its own. The settings come from a config
    that ``slowlearn.checks`` has checked (the dataset, the split, val_size).
    """

    def __init__(
        self,
        dataset: str = "mnist",
        dir: str = "data",
        batch_size: int = 64,
        val_size: int = 5000,
        split: str = "random",
        split_seed: int = 0,
        steps_per_chunk: int = 60,
        eval_batch_size: int = 10000,
        seed: int | Sequence[int] = 0,
        test_every_epoch: bool = False,
        online: bool = True,
    ) -> None:
        super().__init__()
        self.dataset, self.dir, self.online = dataset, dir, online
        self.batch_size, self.val_size = batch_size, val_size
        self.split, self.split_seed = split, split_seed
        self.steps_per_chunk, self.eval_batch_size = steps_per_chunk, eval_batch_size
        self.seeds = [seed] if isinstance(seed, int) else list(seed)
        self.test_every_epoch = test_every_epoch
        self.source = ""
        self.tensors: dict[str, tuple[Tensor, Tensor]] = {}
        self.seconds = 0.0  # checking the files and moving them to the device

    def prepare_data(self) -> None:
        if self.source:  # fit and test both ask; the files were checked once
            return
        started = time.perf_counter()
        self.source = prepare(self.dir, self.dataset, self.online)
        log.info("%s in %s: %s", self.dataset, raw_dir(self.dir, self.dataset), self.source)
        self.seconds += time.perf_counter() - started

    def setup(self, stage: str | None = None) -> None:
        if self.tensors:
            return
        started = time.perf_counter()
        self.load()
        self.seconds += time.perf_counter() - started

    def load(self) -> None:
        device = self.trainer.strategy.root_device if self.trainer else torch.device("cpu")

        def on_device(images: np.ndarray, labels: np.ndarray) -> tuple[Tensor, Tensor]:
            # uint8 crosses to the device (a quarter of the bytes) and is normalised there once:
            # normalising every chunk instead costs about a fifth of a batch-512 CPU epoch.
            pixels = torch.from_numpy(images.reshape(len(images), -1).copy()).to(device)
            return pixels.float().div_(255.0), torch.from_numpy(labels.astype(np.int64)).to(device)

        train_images, train_labels = load_split(self.dir, self.dataset, "train")
        if self.split == "tail":  # the last val_size samples, as in Nielsen's 50k / 10k
            order = np.arange(len(train_labels))
        else:
            order = np.random.default_rng(self.split_seed).permutation(len(train_labels))
        train_index, val_index = order[: -self.val_size], order[-self.val_size :]
        self.tensors = {
            "train": on_device(train_images[train_index], train_labels[train_index]),
            "val": on_device(train_images[val_index], train_labels[val_index]),
            "test": on_device(*load_split(self.dir, self.dataset, "test")),
        }

    def _batches(self, part: str, shuffle: bool) -> DeviceBatches:
        images, labels = self.tensors[part]
        trainer = self.trainer
        rank, world_size = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)

        def order(seed: int, shuffled: bool) -> EpochPermutation:
            return EpochPermutation(len(labels), shuffled, seed, rank, world_size)

        def current_epoch() -> int:
            return trainer.current_epoch if trainer else 0

        if shuffle:
            orders = [order(seed, True) for seed in self.seeds]
            return TrainingBatches(
                images,
                labels,
                self.batch_size,
                self.steps_per_chunk,
                orders,
                current_epoch,
                chunks_completed=lambda: chunks_completed(trainer) if trainer else 0,
            )
        shard = order(0, False) if world_size > 1 else None
        return DeviceBatches(
            images, labels, self.eval_batch_size, 1, None, current_epoch, shard=shard
        )

    def train_dataloader(self) -> DeviceBatches:
        return self._batches("train", shuffle=True)

    def val_dataloader(self) -> DeviceBatches | list[DeviceBatches]:
        if self.test_every_epoch:
            return [self._batches("val", shuffle=False), self._batches("test", shuffle=False)]
        return self._batches("val", shuffle=False)

    def test_dataloader(self) -> DeviceBatches:
        return self._batches("test", shuffle=False)

    def fixed_training_sample(self, size: int = 1000) -> tuple[Tensor, Tensor]:
        """The first ``size`` training images: the fixed set on which the speed of learning is
        measured at initialisation (as Nielsen measures it), the same for every member."""
        images, labels = self.tensors["train"]
        return images[:size], labels[:size]


class RepeatedBatch:
    """One chunk holding the same full batch ``steps`` times: full-batch gradient descent."""

    def __init__(self, batch: tuple[Tensor, Tensor], steps: int) -> None:
        self.batch, self.steps = batch, steps

    def __len__(self) -> int:
        return 1

    def __iter__(self) -> Iterator[list[tuple[Tensor, Tensor]]]:
        yield [self.batch] * self.steps


class SingleSample(pl.LightningDataModule):
    """Figure 5-4's data: one input x with target y, served as ``steps`` full-batch steps."""

    def __init__(self, x: float = 1.0, y: float = 0.0, steps: int = 300) -> None:
        super().__init__()
        self.x, self.y, self.steps = x, y, steps

    def _repeated(self, steps: int) -> RepeatedBatch:
        device = self.trainer.strategy.root_device if self.trainer else torch.device("cpu")
        sample = (torch.tensor([[self.x]], device=device), torch.tensor([[self.y]], device=device))
        return RepeatedBatch(sample, steps)

    def train_dataloader(self) -> RepeatedBatch:
        return self._repeated(self.steps)

    def val_dataloader(self) -> RepeatedBatch:
        return self._repeated(1)

    test_dataloader = val_dataloader
