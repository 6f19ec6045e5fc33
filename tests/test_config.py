"""The Hydra configs compose for every cell and preset, and build the real objects."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig

from slowlearn.module import LitClassifier
from tests.conftest import REPO

CELLS = list(itertools.product(["sigmoid", "softmax"], ["mse", "bce", "nll"]))


@pytest.fixture(scope="module")
def composer() -> Iterator:
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):

        def composed(*overrides: str) -> DictConfig:
            return compose("train", overrides=list(overrides))

        yield composed


def test_default_is_a_two_hidden_layer_dmlp_with_softmax_and_nll(composer) -> None:
    cfg = composer()
    assert (cfg.activation.name, cfg.loss.name) == ("softmax", "nll")
    assert len(cfg.model.hidden_sizes) == 2
    assert cfg.trainer.accelerator == "auto"


@pytest.mark.parametrize(("activation", "loss"), CELLS)
def test_every_cell_composes_and_builds(composer, activation: str, loss: str) -> None:
    cfg = composer(f"activation={activation}", f"loss={loss}", "model.init=large")
    model = instantiate(cfg.model)
    module = instantiate(cfg.module, model=model, optimizer=instantiate(cfg.optimizer))
    assert isinstance(module, LitClassifier)
    assert (module.activation, module.loss_name) == (activation, loss)
    assert cfg.run_name == f"{activation}+{loss}_large_seed0"


def test_documented_keys_exist(composer) -> None:
    from omegaconf import OmegaConf

    cfg = composer()
    for key in (
        "optimizer.lr",
        "data.batch_size",
        "data.val_size",
        "data.dir",
        "model.hidden_sizes",
        "model.hidden_activation",
        "model.init",
        "trainer.max_epochs",
        "seed",
    ):
        assert OmegaConf.select(cfg, key, default="missing") != "missing", key
