"""Every speed option leaves the SGD trajectory unchanged: bit-identical weights on CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate

from slowlearn.errors import ConfigError
from slowlearn.groups import build_module
from tests.conftest import compose_config


def train_weights(
    data_dir: Path, steps_per_chunk: int, backward_hooks: bool, *overrides: str
) -> list[torch.Tensor]:
    torch.set_num_threads(1)
    cfg = compose_config(
        f"data.dir={data_dir}",
        "cell=sigmoid_mse",
        "optimizer=sgd",
        "model.hidden_sizes=[16]",
        "model.hidden_activation=sigmoid",
        "data.batch_size=32",
        "data.val_size=100",
        "data.online=false",
        f"data.steps_per_chunk={steps_per_chunk}",
        f"module.backward_hooks={backward_hooks}",
        *overrides,
        hydra_node=False,
    )
    module = build_module([cfg])
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=instantiate(cfg.data))
    assert trainer.global_step == 2 * 16  # 500 samples in batches of 32, per epoch
    assert module.plain_backward is not backward_hooks
    return [p.detach().clone() for p in module.network.stacked]


@pytest.mark.parametrize(("steps_per_chunk", "backward_hooks"), [(1, True), (5, False), (64, True)])
def test_chunking_and_plain_backward_do_not_change_the_weights(
    tiny_data: Path, steps_per_chunk: int, backward_hooks: bool
) -> None:
    reference = train_weights(tiny_data, steps_per_chunk=64, backward_hooks=False)
    variant = train_weights(tiny_data, steps_per_chunk, backward_hooks)
    for expected, actual in zip(reference, variant, strict=True):
        assert torch.equal(expected, actual)


def test_cuda_graphs_on_the_cpu_are_refused_and_auto_leaves_the_steps_as_they_were(
    tiny_data: Path,
) -> None:
    """CUDA graphs (tests/test_gpu.py) need a CUDA device: asked for on the CPU, the run
    stops with a one-line error; ``auto`` and ``false`` train the CPU steps bit for bit."""
    with pytest.raises(ConfigError, match="module.cuda_graphs=true needs one CUDA device") as e:
        train_weights(tiny_data, 5, False, "module.cuda_graphs=true")
    assert "\n" not in str(e.value) and "cpu" in str(e.value)
    auto = train_weights(tiny_data, 5, False, "module.cuda_graphs=auto")
    off = train_weights(tiny_data, 5, False, "module.cuda_graphs=false")
    assert all(torch.equal(a, b) for a, b in zip(auto, off, strict=True))
