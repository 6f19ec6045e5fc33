"""The Hydra configs compose for every cell and preset, and build the real objects."""

from __future__ import annotations

import itertools
import math

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from slowlearn.checks import check_config
from slowlearn.groups import build_module
from slowlearn.module import LitClassifier
from tests.conftest import REPO, compose_config

CELLS = [*itertools.product(["sigmoid", "softmax"], ["mse", "bce", "nll"]), ("identity", "mse")]


def test_default_is_a_two_hidden_layer_dmlp_with_softmax_and_nll() -> None:
    cfg = compose_config()
    assert (cfg.activation.name, cfg.loss.name) == ("softmax", "nll")
    assert len(cfg.model.hidden_sizes) == 2
    assert cfg.trainer.accelerator == "auto"


@pytest.mark.parametrize(("activation", "loss"), CELLS)
def test_every_cell_composes_and_builds(activation: str, loss: str) -> None:
    cfg = compose_config(f"activation={activation}", f"loss={loss}", "model.init=xavier")
    check_config(cfg)
    module = build_module([cfg])
    assert isinstance(module, LitClassifier)
    assert [(m.activation, m.loss) for m in module.members] == [(activation, loss)]
    assert cfg.run_name == f"{activation}+{loss}"  # a single run is named by its cell


def test_documented_keys_exist() -> None:
    cfg = compose_config()
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
        "module.diagnostics_every_n_steps",
    ):
        assert OmegaConf.select(cfg, key, default="missing") != "missing", key


CELL_GRID = "sigmoid_mse,sigmoid_bce,sigmoid_nll,softmax_mse,softmax_bce,softmax_nll"
PRESET_SETTINGS = {
    "ablation": {"model.hidden_sizes": [100], "model.init": "default", "optimizer.lr": 0.1},
    "saturated": {"model.hidden_sizes": [100], "model.init": "large", "optimizer.lr": 0.1},
    "optimizers": {
        "trainer.max_epochs": 1,
        "optimizer.momentum": 0.9,
        "model.hidden_sizes": [100],
        "model.hidden_activation": "sigmoid",
    },
    "output_saturation": {
        "trainer.max_epochs": 1,
        "optimizer.momentum": 0.0,
        "model.init": "default",
        "model.output_init_scale": None,
    },
    "long": {
        "trainer.max_epochs": 20,
        "optimizer.momentum": 0.0,
        "model.hidden_sizes": [100],
        "optimizer.lr": 1.0,  # softmax+nll's best lr from the default init
    },
    "nielsen": {
        "model.hidden_sizes": [30],
        "model.init": "scaled_normal",
        "optimizer.lr": 0.5,
        "data.batch_size": 10,
        "data.val_size": 10000,
        "data.split": "tail",
    },
    "neuron": {"optimizer.lr": 0.15, "data.steps": 300, "model.start": [2.0, 2.0]},
    "lr_fair": {"trainer.max_epochs": 1, "model.hidden_activation": "sigmoid"},
    "depth": {"trainer.max_epochs": 3, "model.hidden_activation": "sigmoid"},
}
PRESET_SWEEPS = {
    "ablation": {"cell": 6, "seed": 3},
    "saturated": {"cell": 6, "seed": 3},
    "optimizers": {"cell": 5, "optimizer": 2, "model.init": 2, "optimizer.lr": 10, "seed": 3},
    "output_saturation": {"cell": 5, "model.output_init_scale": 5, "optimizer.lr": 7, "seed": 3},
    "long": {"cell": 5, "model.init": 2, "lr_position": 3, "seed": 3},
    "nielsen": {"loss": 2},
    "neuron": {"loss": 2, "model.start": 2},
    "lr_fair": {"cell": 7, "model.init": 2, "optimizer.lr": 8, "seed": 3},
    "depth": {"cell": 4, "model.hidden_sizes": 4, "model.init": 2, "optimizer.lr": 4, "seed": 3},
}
# Runs per preset: the product of its sweep's sizes.
PRESET_RUNS = {
    "ablation": 18,
    "saturated": 18,
    "optimizers": 600,
    "output_saturation": 525,
    "long": 90,
    "nielsen": 2,
    "neuron": 4,
    "lr_fair": 336,
    "depth": 384,
}


def sweep_values(cfg: OmegaConf, key: str) -> list:
    parser = OverridesParser.create()  # how Hydra's sweeper reads its params
    override = parser.parse_override(f"{key}={cfg.hydra.sweeper.params[key]}")
    return list(override.sweep_iterator())


def test_every_preset_is_tested() -> None:
    presets = {path.stem for path in (REPO / "conf" / "experiment").glob("*.yaml")}
    assert presets == set(PRESET_SETTINGS) == set(PRESET_SWEEPS) == set(PRESET_RUNS)


@pytest.mark.parametrize("preset", sorted(PRESET_SETTINGS))
def test_every_preset_composes_with_its_settings_and_sweep(preset: str) -> None:
    cfg = compose_config(f"experiment={preset}")
    assert cfg.name == preset
    for key, value in PRESET_SETTINGS[preset].items():
        selected = OmegaConf.select(cfg, key, default=None)
        plain = OmegaConf.to_object(selected) if OmegaConf.is_config(selected) else selected
        assert plain == value, key
    sizes = {key: len(sweep_values(cfg, key)) for key in cfg.hydra.sweeper.params}
    assert sizes == PRESET_SWEEPS[preset]
    assert math.prod(sizes.values()) == PRESET_RUNS[preset]
    check_config(cfg)  # every preset passes the start-up checks


def test_the_lr_grid_is_log_spaced_and_spans_at_least_0_03_to_10() -> None:
    grid = sweep_values(compose_config("experiment=lr_fair"), "optimizer.lr")
    lrs = sorted(float(v) for v in grid)
    assert lrs[0] <= 0.03 and lrs[-1] >= 10 and len(lrs) >= 6
    ratios = [b / a for a, b in itertools.pairwise(lrs)]
    assert max(ratios) / min(ratios) < 1.2  # evenly spaced on a log scale


def test_the_depth_preset_sweeps_1_to_4_sigmoid_layers_of_100() -> None:
    sizes = sweep_values(compose_config("experiment=depth"), "model.hidden_sizes")
    assert [list(s) for s in sizes] == [[100] * depth for depth in range(1, 5)]
