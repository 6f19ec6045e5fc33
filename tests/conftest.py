"""Shared fixtures and helpers: small data in the real IDX format, runs of the real entry point
(as a user starts them, in a subprocess), Hydra composition in-process, and one event reader.

The sweeps that several test modules read are built once per pytest run (session fixtures):
every Python process started here pays about 3 s of imports.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from filelock import FileLock
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
from tensorboard.compat.proto.event_pb2 import Event

from slowlearn.naming import register_resolvers
from slowlearn.prepare import idx_bytes, idx_path, prepare
from slowlearn.records import read_metrics, write_atomically
from slowlearn.report.runs import read_scalars

REPO = Path(__file__).resolve().parents[1]
register_resolvers()
torch.set_num_threads(1)  # two pytest workers on two cores: one thread each

__all__ = ["read_metrics", "read_scalars"]  # shared with the test modules


# The test files that take longest, first: each worker takes the next file when it is done
# with one, so a long file started last would leave the other worker idle.
LONGEST_FILES_FIRST = (
    "test_run_faults.py",
    "test_presets.py",  # four tiny preset sweeps
    "test_batched.py",
    "test_launchers.py",
    "test_fair.py",
    "test_sweep_status.py",
    "test_results.py",
    "test_neuron.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Longest files first; every other file, and the tests inside each file, keep their order."""
    rank = {name: place for place, name in enumerate(LONGEST_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


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
def tiny_data(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Path:
    """A data folder with a small learnable MNIST in torchvision's layout."""
    return built_once(shared_folder(tmp_path_factory, worker_id, "data"), write_idx_dataset)


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
    "+trainer.enable_progress_bar=false",
]


def env(threads: int = 1) -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore")


def run_train(
    args: list[str], check: bool = True, timeout: float = 600, threads: int | None = 1
) -> subprocess.CompletedProcess:
    """Run ``python -m slowlearn.train`` as a user would, with one torch thread (None: the
    entry point's own split of the cores)."""
    result = subprocess.run(
        [sys.executable, "-m", "slowlearn.train", *args, f"threads={threads or 'null'}"],
        cwd=REPO,
        env=env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"train failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result


def wait_for_file(path: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    """Until ``path`` exists, while ``process`` runs; fails after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"the process ended before {path} appeared"
        assert time.monotonic() < deadline, f"{path} did not appear in {timeout:.0f} s"
        time.sleep(0.02)


def job_dirs(sweep_dir: Path) -> list[Path]:
    return sorted(p.parent for p in sweep_dir.rglob("metrics.json"))


def runs_by_name(sweep_dir: Path) -> dict[str, Path]:
    """A sweep's run folders by the runs' own names (sigmoid+mse/seed0, ...)."""
    return {read_metrics(p)["run_name"]: p for p in job_dirs(sweep_dir)}


def cell_of(run_dir: Path) -> str:
    config = read_metrics(run_dir)["config"]
    return f"{config['activation']['name']}+{config['loss']['name']}"


def raw_values(run_dir: Path) -> dict[tuple[str, int], list[float]]:
    """Every scalar and histogram (its sum) in the run's event files, purges not applied:
    (tag, step): values."""
    found: dict[tuple[str, int], list[float]] = {}
    for path in sorted(run_dir.glob("events.out.tfevents.*")):
        for record in RawEventFileLoader(str(path)).Load():
            event = Event.FromString(record)
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    found.setdefault((value.tag, event.step), []).append(value.simple_value)
                elif value.HasField("histo"):
                    found.setdefault((value.tag, event.step), []).append(value.histo.sum)
    return found


def compose_config(*overrides: str, hydra_node: bool = True) -> DictConfig:
    """The config ``python -m slowlearn.train <overrides>`` composes, in this process."""
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=hydra_node)


@pytest.fixture
def hydra_config() -> Iterator:
    """Sets HydraConfig as a running job sees it; restores the previous one afterwards."""
    previous = HydraConfig.instance().cfg

    def set_config(*overrides: str) -> DictConfig:
        cfg = compose_config(*overrides)
        HydraConfig.instance().set_config(cfg)
        return cfg

    yield set_config
    HydraConfig.instance().cfg = previous


# ------------------------------------------------------------------ sweeps shared by modules

DIVERGED = "diverged"  # the folder of the tiny sweep's run that diverges


def shared_folder(tmp_path_factory: pytest.TempPathFactory, worker_id: str, name: str) -> Path:
    """A folder that every pytest worker of this run shares; None-like (absent) until built."""
    if worker_id == "master":  # no workers: this process alone
        return tmp_path_factory.getbasetemp() / name
    return tmp_path_factory.getbasetemp().parent / name


BUILD_TIMEOUT = 600  # seconds a worker waits for another's build of a shared folder


def built_once(folder: Path, build: Callable[[Path], None]) -> Path:
    """``build(folder)`` by the first worker that asks; the others wait for it and reuse it.
    A failed build leaves ``.failed`` with its error, which every later asker raises."""
    with FileLock(str(folder) + ".lock", timeout=BUILD_TIMEOUT):
        failed = folder / ".failed"
        if failed.exists():
            raise AssertionError(f"building {folder} failed:\n{failed.read_text()}")
        if not (folder / ".built").exists():
            folder.mkdir(parents=True, exist_ok=True)
            try:
                build(folder)
            except BaseException as error:
                failed.write_text(f"{type(error).__name__}: {error}"[-4000:])
                raise
            (folder / ".built").touch()
    return folder


@pytest.fixture(scope="session")
def tiny_sweep(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Path:
    """Two cells x two seeds on the batched launcher, and beside them a single run that
    really diverges (at lr 1e30 sigmoid + bce's loss is NaN at the second step)."""
    return built_once(
        shared_folder(tmp_path_factory, worker_id, "tiny_sweep"),
        lambda sweep_dir: build_tiny_sweep(tiny_data, sweep_dir),
    )


def build_tiny_sweep(tiny_data: Path, sweep_dir: Path) -> None:
    data = f"data.dir={tiny_data}"
    sweep = ["-m", "cell=sigmoid_mse,softmax_nll", "seed=0,1", f"hydra.sweep.dir={sweep_dir}"]
    result = run_train([*sweep, "hydra/launcher=batched", data, *TINY_ARGS])
    (sweep_dir / "stdout.txt").write_text(result.stdout + result.stderr)
    diverging = ["cell=sigmoid_bce", "optimizer.lr=1e30", f"hydra.run.dir={sweep_dir / DIVERGED}"]
    result = run_train([*diverging, data, *TINY_ARGS], check=False)
    assert read_metrics(sweep_dir / DIVERGED)["status"] == "diverged", result.stderr[-2000:]
    (sweep_dir / f"{DIVERGED}.stderr.txt").write_text(result.stderr)


@pytest.fixture(scope="session")
def single_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Path:
    """One completed single run of the default cell, 3 epochs, with its progress bar (read-only:
    copy it to change it); what it printed is in ../output.txt."""
    folder = built_once(
        shared_folder(tmp_path_factory, worker_id, "single"),
        lambda folder: build_single_run(tiny_data, folder / "run"),
    )
    return folder / "run"


def build_single_run(tiny_data: Path, run_dir: Path) -> None:
    args = [a for a in TINY_ARGS if "progress_bar" not in a]
    result = run_train(
        [f"data.dir={tiny_data}", f"hydra.run.dir={run_dir}", *args, "trainer.max_epochs=3"]
    )
    (run_dir.parent / "output.txt").write_text(result.stdout + result.stderr)
