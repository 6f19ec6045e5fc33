"""On a CUDA device: the default trainer picks the GPU, the data is moved there once, the
training steps do not wait for the host, the GPU learns what the CPU learns, and the chunks
replayed as CUDA graphs train exactly as the eager steps do.

Run by scripts/gpu_check.sh (pytest -m gpu); skipped where no CUDA device is visible.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from pytorch_lightning.loggers import Logger

from slowlearn.data import ImageDataModule
from slowlearn.groups import build_module
from slowlearn.module import LitClassifier
from tests.conftest import compose_config

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

TINY = [
    "data.val_size=100",
    "data.batch_size=50",
    "data.online=false",
    "model.hidden_sizes=[32]",
]


class Recorded(Logger):
    """A member's logger that keeps every value it is given: {(tag, step): value}."""

    def __init__(self) -> None:
        super().__init__()
        self.values: dict[tuple[str, int], float] = {}

    name = "recorded"
    version = 0

    def log_hyperparams(self, *args: object, **kwargs: object) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.values |= {(tag, step): value for tag, value in metrics.items()}


def fit_members(
    tiny_data: Path,
    members: list[list[str]],
    *overrides: str,
    callbacks: tuple[pl.Callback, ...] = (),
) -> tuple[ImageDataModule, LitClassifier, pl.Trainer]:
    """Fits the tiny data with the module, data and trainer of ``make train <overrides>``, one
    member per list of member overrides ([[]] is a single run), each member logging to a
    ``Recorded`` logger."""
    cfgs = [
        compose_config(f"data.dir={tiny_data}", *TINY, *overrides, *member, hydra_node=False)
        for member in members
    ]
    module = build_module(cfgs)
    module.member_loggers = [[Recorded()] for _ in cfgs]
    datamodule = instantiate(cfgs[0].data, seed=[cfg.data.seed for cfg in cfgs])
    trainer = pl.Trainer(
        accelerator=cfgs[0].trainer.accelerator,
        devices=1,
        max_epochs=cfgs[0].trainer.max_epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=list(callbacks),
    )
    trainer.fit(module, datamodule=datamodule)
    return datamodule, module, trainer


@pytest.fixture
def fit(tiny_data: Path) -> Iterator:
    def fit_tiny(
        *overrides: str, callbacks: tuple[pl.Callback, ...] = ()
    ) -> tuple[ImageDataModule, LitClassifier, pl.Trainer]:
        return fit_members(tiny_data, [[]], *overrides, callbacks=callbacks)

    yield fit_tiny


class SyncCounter(pl.Callback):
    """Counts the host-device synchronisations inside the training batches."""

    def __init__(self) -> None:
        self.syncs = 0

    def on_train_batch_start(self, *args: object) -> None:
        self.catcher = warnings.catch_warnings(record=True)
        self.caught = self.catcher.__enter__()
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")

    def on_train_batch_end(self, *args: object) -> None:
        torch.cuda.set_sync_debug_mode("default")
        self.catcher.__exit__(None, None, None)
        self.syncs += sum("synchroniz" in str(w.message) for w in self.caught)


def test_default_trainer_trains_on_the_gpu_with_the_data_moved_there_once(fit) -> None:
    datamodule, module, trainer = fit("trainer.max_epochs=1")  # accelerator: auto
    assert trainer.strategy.root_device.type == "cuda"  # Lightning returns the module to the CPU
    for images, labels in datamodule.tensors.values():
        assert images.device.type == labels.device.type == "cuda"
        assert images.dtype == torch.float32  # normalised on the device once


def test_training_steps_do_not_wait_for_the_host(fit) -> None:
    counter = SyncCounter()
    _, _, trainer = fit("trainer.max_epochs=1", "data.batch_size=5", callbacks=(counter,))
    steps = trainer.global_step
    assert steps == 100
    print(f"{counter.syncs} host-device synchronisations in {steps} training steps")
    assert counter.syncs < steps / 2, f"{counter.syncs} syncs in {steps} steps"


def test_gpu_and_cpu_runs_learn_alike(fit) -> None:
    results = {}
    for accelerator in ("cpu", "gpu"):
        _, module, _ = fit("trainer.max_epochs=2", f"trainer.accelerator={accelerator}")
        results[accelerator] = module.histories[0].val_history[-1]
    # Same seed, same initial weights and the same sample order: only rounding differs (more
    # of it if a speed option allows TF32 matmuls).
    assert results["gpu"]["val/loss"] == pytest.approx(results["cpu"]["val/loss"], rel=1e-2)
    assert abs(results["gpu"]["val/acc"] - results["cpu"]["val/acc"]) <= 0.02


# 500 training samples in batches of 20: 25 steps an epoch, in chunks of 10, 10 and 5, and 8
# epochs make 200 steps. Diagnosed every 10th step: at offset 0 of each chunk in even epochs,
# at offset 5 in odd ones (none in their 5-step chunk), so four kinds of chunk, four graphs.
GRAPHED = ["data.batch_size=20", "data.steps_per_chunk=10", "trainer.max_epochs=8"]
THREE_CELLS = [
    ["cell=sigmoid_mse", "seed=0"],
    ["cell=sigmoid_bce", "seed=1"],
    ["cell=softmax_nll", "seed=2", "optimizer.lr=0.3"],
]


@pytest.mark.parametrize(
    ("optimizer", "members"),
    [("sgd", [[]]), ("sgd_momentum", [[]]), ("adam", [[]]), ("sgd_momentum", THREE_CELLS)],
    ids=["sgd", "sgd_momentum", "adam", "group_of_three"],
)
def test_cuda_graphs_train_as_the_eager_steps(
    tiny_data: Path, optimizer: str, members: list[list[str]]
) -> None:
    runs = {}
    for graphs in ("false", "true"):
        overrides = [f"optimizer={optimizer}", f"module.cuda_graphs={graphs}", *GRAPHED]
        _, module, trainer = fit_members(tiny_data, members, *overrides)
        assert trainer.global_step == 200  # counted for the replayed steps too
        runs[graphs] = module
    eager, graphed = runs["false"], runs["true"]
    if optimizer == "adam":  # its step count, on the device, counted by the replays too
        states = trainer.optimizers[0].state.values()
        assert {state["step"].item() for state in states} == {200}
    assert eager.chunk_graphs is None and len(graphed.chunk_graphs.graphs) == 4
    for expected, actual in zip(eager.network.stacked, graphed.network.stacked, strict=True):
        torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5)
    # What the replays recorded: every logged value (losses, diagnostics, val), at its step.
    for expected, actual in zip(eager.member_loggers, graphed.member_loggers, strict=True):
        was, now = expected[0].values, actual[0].values
        assert set(now) == set(was)
        assert sum(tag.startswith("diag/error_signal") for tag, _ in now) >= 10
        for key, value in was.items():
            if not key[0].startswith("time/"):
                assert now[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
