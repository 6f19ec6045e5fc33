"""On a CUDA device: the default trainer picks the GPU, the data is moved there once, the
training steps do not wait for the host, and the GPU learns what the CPU learns.

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


@pytest.fixture
def fit(tiny_data: Path) -> Iterator:
    """Fits the tiny data with the module, data and trainer of ``make train <overrides>``."""

    def fit_tiny(
        *overrides: str, callbacks: tuple[pl.Callback, ...] = ()
    ) -> tuple[ImageDataModule, LitClassifier, pl.Trainer]:
        cfg = compose_config(f"data.dir={tiny_data}", *TINY, *overrides, hydra_node=False)
        module, datamodule = build_module([cfg]), instantiate(cfg.data)
        trainer = pl.Trainer(
            accelerator=cfg.trainer.accelerator,
            devices=1,
            max_epochs=cfg.trainer.max_epochs,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            callbacks=list(callbacks),
        )
        trainer.fit(module, datamodule=datamodule)
        return datamodule, module, trainer

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
