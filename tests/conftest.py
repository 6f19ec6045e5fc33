"""Shared fixtures: small data in the real IDX format, and runs of the real entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from slowlearn.data import idx_bytes, idx_path, prepare, write_atomically

REPO = Path(__file__).resolve().parents[1]


def learnable_digits(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Images whose class is a bright 7x7 block at a class-specific place, plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 10
    rng.shuffle(labels)
    images = rng.integers(0, 60, size=(count, 28, 28)).astype(np.uint8)
    for image, label in zip(images, labels, strict=True):
        row, col = divmod(int(label), 5)
        image[row * 14 : row * 14 + 7, col * 5 : col * 5 + 7] = 255
    return images, labels.astype(np.uint8)


def write_idx_dataset(root: Path, name: str = "mnist", train: int = 600, test: int = 200) -> Path:
    for split, count in (("train", train), ("test", test)):
        images, labels = learnable_digits(count, seed=len(split))
        write_atomically(idx_path(root, name, split, "images"), idx_bytes(images))
        write_atomically(idx_path(root, name, split, "labels"), idx_bytes(labels))
    return root


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder with a small learnable MNIST in torchvision's layout."""
    return write_idx_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The real MNIST in the repository's data/ (prepared once, offline route if needed)."""
    prepare(REPO / "data", "mnist")
    return REPO / "data"


TINY_ARGS = [
    "data.val_size=100",
    "data.batch_size=50",
    "data.online=false",
    "model.hidden_sizes=[32]",
    "trainer.max_epochs=2",
    "trainer.accelerator=cpu",
]


def run_train(
    args: list[str], check: bool = True, timeout: float = 600, threads: int | None = 1
) -> subprocess.CompletedProcess:
    """Run ``python -m slowlearn.train`` as a user would, with one torch thread (None: the
    entry point's own split of the cores)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    result = subprocess.run(
        [sys.executable, "-m", "slowlearn.train", *args, f"threads={threads or 'null'}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"train failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result


def read_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def job_dirs(sweep_dir: Path) -> list[Path]:
    return sorted(p.parent for p in sweep_dir.glob("*/metrics.json"))
