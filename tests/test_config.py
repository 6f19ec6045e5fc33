"""The Hydra configs compose for every cell and preset, and build the real objects."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import instantiate
from omegaconf import DictConfig

from slowlearn.module import LitClassifier
from tests.conftest import REPO

CELLS = list(itertools.product(["sigmoid", "softmax"], ["mse", "bce", "nll"]))


@pytest.fixture(scope="module")
def composer() -> Iterator:
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):

        def composed(*overrides: str) -> DictConfig:
            return compose("train", overrides=list(overrides), return_hydra_config=True)

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


PRESET_SETTINGS = {
    "ablation": {"model.hidden_sizes": [100], "model.init": "default", "optimizer.lr": 0.1},
    "saturated": {"model.hidden_sizes": [100], "model.init": "large", "optimizer.lr": 0.1},
    "optimizers": {"trainer.max_epochs": 1, "optimizer.momentum": 0.0},
    "nielsen": {
        "model.hidden_sizes": [30],
        "model.init": "scaled_normal",
        "optimizer.lr": 0.5,
        "data.batch_size": 10,
        "data.val_size": 10000,
        "data.split": "tail",
    },
    "neuron": {"optimizer.lr": 0.15, "data.steps": 300, "model.start": [2.0, 2.0]},
}
PRESET_SWEEPS = {
    "ablation": {"cell": 6, "seed": 3},
    "saturated": {"cell": 6, "seed": 3},
    "optimizers": {"cell": 3, "optimizer": 2, "seed": 3},
    "nielsen": {"loss": 2},
    "neuron": {"loss": 2, "model.start": 2},
}


@pytest.mark.parametrize("preset", sorted(PRESET_SETTINGS))
def test_every_preset_composes_with_its_settings_and_sweep(composer, preset: str) -> None:
    from omegaconf import OmegaConf

    from slowlearn.train import check_config

    cfg = composer(f"experiment={preset}")
    assert cfg.name == preset
    for key, value in PRESET_SETTINGS[preset].items():
        selected = OmegaConf.select(cfg, key, default=None)
        plain = OmegaConf.to_object(selected) if OmegaConf.is_config(selected) else selected
        assert plain == value, key
    parser = OverridesParser.create()  # how Hydra's sweeper reads its params
    sizes = {
        key: len(list(parser.parse_override(f"{key}={value}").sweep_iterator()))
        for key, value in cfg.hydra.sweeper.params.items()
    }
    assert sizes == PRESET_SWEEPS[preset]
    check_config(cfg)  # every preset passes the start-up checks
