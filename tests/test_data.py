"""Data preparation and serving: the offline conversion, IDX checks, the device batches."""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from slowlearn.data import DeviceBatches, EpochPermutation, ImageDataModule
from slowlearn.prepare import (
    DataError,
    idx_bytes,
    idx_path,
    load_split,
    nielsen_pickle_to_idx,
    prepare,
)
from slowlearn.records import write_atomically
from tests.conftest import learnable_digits


def nielsen_pickle(counts: tuple[int, int, int]) -> tuple[bytes, list]:
    """A small pickle in the deeplearning.net format: float32 = pixel / 256."""
    parts = []
    for seed, count in enumerate(counts):
        images, labels = learnable_digits(count, seed)
        parts.append((images.reshape(count, 784).astype(np.float32) / 256, labels.astype(np.int64)))
    return gzip.compress(pickle.dumps(tuple(parts), protocol=2)), parts


def test_pickle_converts_exactly_to_idx_that_torchvision_reads(tmp_path: Path) -> None:
    payload, parts = nielsen_pickle((50, 20, 30))
    for (split, kind), array in nielsen_pickle_to_idx(payload).items():
        write_atomically(idx_path(tmp_path, "mnist", split, kind), idx_bytes(array))

    images, labels = load_split(tmp_path, "mnist", "train")
    assert images.shape == (70, 28, 28) and images.dtype == np.uint8
    expected = np.concatenate([parts[0][0], parts[1][0]]) * 256  # train, then valid, in order
    np.testing.assert_array_equal(images.reshape(70, 784), expected.astype(np.uint8))
    np.testing.assert_array_equal(labels, np.concatenate([parts[0][1], parts[1][1]]))

    reference = torchvision.datasets.MNIST(str(tmp_path), train=False, download=False)
    test_images, test_labels = load_split(tmp_path, "mnist", "test")
    np.testing.assert_array_equal(reference.data.numpy(), test_images)
    np.testing.assert_array_equal(reference.targets.numpy(), test_labels)


def test_pixels_off_the_1_256_grid_are_refused() -> None:
    payload, _ = nielsen_pickle((5, 5, 5))
    (train, valid, test) = pickle.loads(gzip.decompress(payload))
    bad = ((train[0] + 0.001, train[1]), valid, test)
    with pytest.raises(DataError, match="1/256"):
        nielsen_pickle_to_idx(gzip.compress(pickle.dumps(bad)))


def test_official_size_with_wrong_counts_is_refused(tmp_path: Path) -> None:
    images, _ = learnable_digits(10000, 0)
    labels = np.zeros(10000, dtype=np.uint8)
    write_atomically(idx_path(tmp_path, "mnist", "test", "images"), idx_bytes(images))
    write_atomically(idx_path(tmp_path, "mnist", "test", "labels"), idx_bytes(labels))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte: label counts"):
        load_split(tmp_path, "mnist", "test")


def test_each_epoch_order_depends_on_seed_and_epoch_alone() -> None:
    first, again = EpochPermutation(100, True, seed=3), EpochPermutation(100, True, seed=3)
    assert torch.equal(first.indices(5), again.indices(5))
    assert not torch.equal(first.indices(5), first.indices(6))
    assert sorted(first.indices(5).tolist()) == list(range(100))


def test_rank_shards_are_disjoint_and_cover_the_epoch() -> None:
    shards = [EpochPermutation(101, True, seed=0, rank=r, world_size=2).indices(4) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 50
    assert not set(shards[0].tolist()) & set(shards[1].tolist())
    assert len(set(shards[0].tolist()) | set(shards[1].tolist())) == 100


def test_each_member_gets_its_own_order_in_chunks_from_one_copy_of_the_data() -> None:
    images = torch.arange(10, dtype=torch.float32).reshape(10, 1).expand(10, 784)
    labels = torch.arange(10)
    orders = [EpochPermutation(10, True, seed=seed) for seed in (1, 2, 1)]
    batches = DeviceBatches(images, labels, 3, 2, orders, current_epoch=lambda: 2)
    chunks = list(batches)
    assert len(batches) == len(chunks) == 2  # 4 mini-batches (3, 3, 3, 1) in chunks of 2
    assert batches.steps == 4
    minibatches = [pair for chunk in chunks for pair in chunk]
    assert [tuple(y.shape) for _, y in minibatches] == [(3, 3), (3, 3), (3, 3), (3, 1)]
    served = torch.cat([y for _, y in minibatches], dim=1)  # [member, sample]
    for member, order in enumerate(orders):  # each member's order is its run's order
        assert torch.equal(served[member], order.indices(2))
    for x, y in minibatches:  # each image still paired with its label
        assert x.shape == (*y.shape, 784) and torch.equal(x[..., 0], y.float())


def test_evaluation_serves_one_batch_to_every_member_without_copies() -> None:
    images, labels = torch.rand(10, 784), torch.arange(10)
    batches = DeviceBatches(images, labels, 4, 1, None, current_epoch=lambda: 0)
    served = [pair for chunk in batches for pair in chunk]
    assert [len(y) for _, y in served] == [4, 4, 2]
    assert all(x.data_ptr() == images[4 * i].data_ptr() for i, (x, _) in enumerate(served))


def test_datamodule_splits_train_and_val_and_serves_test(tiny_data: Path) -> None:
    data = ImageDataModule(dir=str(tiny_data), val_size=100, online=False)
    data.prepare_data()
    data.setup("fit")
    assert data.source == "existing files"
    assert len(data.tensors["train"][1]) == 500 and len(data.tensors["val"][1]) == 100
    assert len(data.tensors["test"][1]) == 200
    tail = ImageDataModule(dir=str(tiny_data), val_size=100, split="tail", online=False)
    tail.setup("fit")
    _, all_labels = load_split(tiny_data, "mnist", "train")
    assert torch.equal(tail.tensors["val"][1], torch.from_numpy(all_labels[-100:].astype(np.int64)))


def test_fashion_mnist_takes_the_debian_route_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Made-up Fashion-MNIST as Debian's dataset-fashion-mnist lays it out (gzipped IDX files,
    found through dpkg -L), with a stand-in dpkg on PATH."""
    package = tmp_path / "usr" / "share" / "fashion-mnist"
    package.mkdir(parents=True)
    for prefix, count in (("train", 60000), ("t10k", 10000)):
        labels = (np.arange(count) % 10).astype(np.uint8)
        images = (labels[:, None, None] * np.ones((1, 28, 28), np.uint8)).astype(np.uint8)
        for kind, array, dims in (("images", images, 3), ("labels", labels, 1)):
            data = gzip.compress(idx_bytes(array), compresslevel=1)
            (package / f"{prefix}-{kind}-idx{dims}-ubyte.gz").write_bytes(data)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    dpkg = bin_dir / "dpkg"
    listing = "\n".join(str(p) for p in sorted(package.iterdir()))
    dpkg.write_text(
        f'#!/bin/sh\n[ "$*" = "-L dataset-fashion-mnist" ] || exit 1\necho "{listing}"\n'
    )
    dpkg.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    root = tmp_path / "data"
    assert prepare(root, "fashion_mnist", online=False).startswith("offline: Debian's")
    images, labels = load_split(root, "fashion_mnist", "train")
    assert images.shape == (60000, 28, 28) and list(labels[:3]) == [0, 1, 2]
    assert int(images[7, 0, 0]) == 7
