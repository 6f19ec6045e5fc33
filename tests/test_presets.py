"""The study presets (optimizers, output_saturation, depth, long): what they run, the output
layer's own init scale, the long preset's lr table, and a tiny version of each trained through
the batched launcher up to its report."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from slowlearn.checks import check_config
from slowlearn.errors import ConfigError
from slowlearn.groups import build_module, form_groups, member_differences
from slowlearn.model import DMLP
from slowlearn.naming import run_name, settings_of_keys
from slowlearn.records import read_metrics, run_settings
from slowlearn.report import make_report
from tests.conftest import (
    REPO,
    TINY_ARGS,
    built_once,
    compose_config,
    run_train,
    runs_by_name,
    shared_folder,
)

LR_FAIR_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0)
# lr_fair's best lrs on MNIST (its report: best mean val accuracy after epoch 1).
LR_FAIR_BEST = {
    ("default", "sigmoid", "mse"): 1.0,
    ("default", "softmax", "mse"): 3.0,
    ("default", "sigmoid", "bce"): 1.0,
    ("default", "softmax", "bce"): 1.0,
    ("default", "softmax", "nll"): 1.0,
    ("default", "identity", "mse"): 0.1,
    ("large", "sigmoid", "mse"): 10.0,
    ("large", "softmax", "mse"): 3.0,
    ("large", "sigmoid", "bce"): 3.0,
    ("large", "softmax", "bce"): 3.0,
    ("large", "softmax", "nll"): 3.0,
    ("large", "identity", "mse"): 0.03,
}


def resolved(*overrides: str) -> OmegaConf:
    cfg = compose_config(*overrides, hydra_node=False)
    cfg.run_dir = "unused"
    return OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))


# ------------------------------------------------------------------ the output layer's init


def test_the_output_layer_alone_is_drawn_from_n_0_s2() -> None:
    torch.manual_seed(0)
    plain = DMLP(784, [100], 10, "sigmoid", "default")
    torch.manual_seed(0)
    scaled = DMLP(784, [100], 10, "sigmoid", "default", output_init_scale=3.0)
    assert torch.equal(plain[0].weight, scaled[0].weight)  # the hidden layer keeps its init
    assert torch.equal(plain[0].bias, scaled[0].bias)
    assert math.isclose(scaled[2].weight.std().item(), 3.0, rel_tol=0.1)
    assert abs(scaled[2].weight.mean().item()) < 0.3
    assert scaled[2].bias.abs().max() > 1.0  # N(0, 9), not PyTorch's U(+-0.1)


def test_a_member_with_an_output_scale_starts_as_its_single_run() -> None:
    base = ("experiment=output_saturation", "model.hidden_sizes=[16]")
    cfgs = [
        resolved(*base, "seed=0", "model.output_init_scale=3"),
        resolved(*base, "seed=0"),
        resolved(*base, "seed=1", "model.output_init_scale=0.3", "cell=softmax_nll"),
    ]
    assert [sorted(g) for g in form_groups(cfgs, max_members=64)] == [[0, 1, 2]]  # one program
    assert "model.output_init_scale" in member_differences(cfgs)
    group = build_module(cfgs)
    for member, cfg in enumerate(cfgs):
        alone = build_module([cfg]).network.member_state(0)
        for name, value in group.network.member_state(member).items():
            assert torch.equal(value, alone[name]), (member, name)
    assert run_settings(OmegaConf.to_container(cfgs[0]))["output_init_scale"] == 3


@pytest.mark.parametrize(
    ("overrides", "shown"),
    [
        (("model.output_init_scale=0",), "model.output_init_scale=0"),
        (("model.output_init_scale=-1",), "model.output_init_scale=-1"),
        (("model.output_init_scale=big",), "model.output_init_scale='big'"),
        (("experiment=neuron", "model.output_init_scale=1"), "model.output_init_scale=1"),
    ],
)
def test_a_bad_output_scale_fails_at_start_up_in_one_line(
    overrides: tuple[str, ...], shown: str
) -> None:
    cfg = compose_config(*overrides)
    with pytest.raises(ConfigError) as error:
        check_config(cfg)
    message = str(error.value)
    assert message.startswith(f"{shown} is not allowed: ") and "\n" not in message
    assert "null" in message  # the valid choices


# ------------------------------------------------------------------ the long preset's lrs


def test_the_long_preset_runs_lr_fairs_best_lr_and_its_grid_neighbours() -> None:
    cfg = compose_config("experiment=long")
    sweep = cfg.hydra.sweeper.params
    cells = [c.split("_") for c in sweep.cell.split(",")]
    inits, positions = sweep["model.init"].split(","), sweep.lr_position.split(",")
    assert positions == ["below", "best", "above"]
    for init, (activation, loss) in itertools.product(inits, cells):
        lrs = []
        for position in positions:
            cfg.model.init, cfg.lr_position = init, position
            cfg.activation.name, cfg.loss.name = activation, loss
            lrs.append(cfg.optimizer.lr)
        assert all(type(lr) is float for lr in lrs)  # a real lr in every resolved config
        best = LR_FAIR_BEST[init, activation, loss]
        at = LR_FAIR_GRID.index(best)
        assert lrs == [LR_FAIR_GRID[at - 1], best, LR_FAIR_GRID[at + 1]], (init, activation)


def test_a_run_is_named_by_the_lr_its_position_picks() -> None:
    swept = ("cell", "model.init", "lr_position", "seed")
    overrides = ["cell=sigmoid_mse", "model.init=large", "lr_position=above", "seed=2"]
    name = run_name("sigmoid+mse", overrides, swept, {"optimizer.lr": 30.0})
    assert name == "sigmoid+mse/init-large/lr30/seed2"
    assert run_name("sigmoid+mse", overrides, swept, {"optimizer.lr": 0.03}).count("lr0.03/")


# What each preset's sweep varies: the HPARAMS tab lists and checks these columns first.
VARIED = {
    "ablation": ["activation", "loss", "seed"],
    "saturated": ["activation", "loss", "seed"],
    "lr_fair": ["activation", "loss", "init", "lr", "seed"],
    "long": ["activation", "loss", "init", "lr", "seed"],
    "depth": ["activation", "loss", "init", "hidden_sizes", "lr", "seed", "depth"],
    "optimizers": ["activation", "loss", "init", "optimizer", "lr", "seed"],
    "output_saturation": ["activation", "loss", "output_init_scale", "lr", "seed"],
    "nielsen": ["loss"],
    "neuron": ["loss", "start"],
}


def test_every_preset_names_the_settings_its_sweep_varies() -> None:
    presets = {path.stem for path in (REPO / "conf" / "experiment").glob("*.yaml")}
    assert presets == set(VARIED)
    for preset, varied in VARIED.items():
        swept = compose_config(f"experiment={preset}").hydra.sweeper.params
        assert settings_of_keys(swept) == varied, preset
    assert settings_of_keys(["data", "optimizer", "model.output_init_scale"]) == [
        "output_init_scale",
        "optimizer",
        "dataset",
    ]


def test_fashion_mnist_composes_with_lr_fair() -> None:
    cfg = compose_config("experiment=lr_fair", "data=fashion_mnist")
    assert cfg.data.dataset == "fashion_mnist" and cfg.name == "lr_fair"
    check_config(cfg)


# ------------------------------------------------------------------ tiny sweeps, with reports

# Each preset cut to 1 seed, 2 lrs (or lr positions), 1-2 cells, 20 steps: run name -> lr.
TINY_SWEEPS: dict[str, tuple[list[str], dict[str, float]]] = {
    "optimizers": (
        ["cell=sigmoid_mse", "optimizer=sgd_momentum,adam", "model.init=default"]
        + ["optimizer.lr=0.001,0.1"],
        {
            "sigmoid+mse/sgd_momentum/lr0.001": 0.001,
            "sigmoid+mse/sgd_momentum/lr0.1": 0.1,
            "sigmoid+mse/adam/lr0.001": 0.001,
            "sigmoid+mse/adam/lr0.1": 0.1,
        },
    ),
    "output_saturation": (
        ["cell=sigmoid_mse", "model.output_init_scale=null,3", "optimizer.lr=0.3,3"],
        {
            "sigmoid+mse/outscale-null/lr0.3": 0.3,
            "sigmoid+mse/outscale-null/lr3": 3,
            "sigmoid+mse/outscale3/lr0.3": 0.3,
            "sigmoid+mse/outscale3/lr3": 3,
        },
    ),
    "depth": (
        ["cell=sigmoid_mse", "model.hidden_sizes=[8],[8,8]", "model.init=default"]
        + ["optimizer.lr=0.3,3"],
        {
            "sigmoid+mse/hidden8/lr0.3": 0.3,
            "sigmoid+mse/hidden8/lr3": 3,
            "sigmoid+mse/hidden8-8/lr0.3": 0.3,
            "sigmoid+mse/hidden8-8/lr3": 3,
        },
    ),
    "long": (
        ["cell=sigmoid_mse,identity_mse", "model.init=default", "lr_position=below,best"],
        {
            "sigmoid+mse/lr0.3": 0.3,
            "sigmoid+mse/lr1": 1.0,
            "identity+mse/lr0.03": 0.03,
            "identity+mse/lr0.1": 0.1,
        },
    ),
}


def build_tiny_preset(preset: str, tiny_data: Path, sweep_dir: Path) -> None:
    args = [a for a in TINY_ARGS if preset != "depth" or "hidden_sizes" not in a]
    result = run_train(
        ["-m", f"experiment={preset}", *TINY_SWEEPS[preset][0], "seed=0"]
        + ["hydra/launcher=batched", f"data.dir={tiny_data}", f"hydra.sweep.dir={sweep_dir}"]
        + [*args, "trainer.max_epochs=2"]
    )
    (sweep_dir / "stdout.txt").write_text(result.stdout + result.stderr)


@pytest.mark.parametrize("preset", sorted(TINY_SWEEPS))
def test_a_tiny_version_of_the_preset_trains_batched_and_writes_its_report(
    preset: str, tiny_data: Path, tmp_path_factory: pytest.TempPathFactory, worker_id: str
) -> None:
    sweep_dir = built_once(
        shared_folder(tmp_path_factory, worker_id, f"preset_{preset}"),
        lambda folder: build_tiny_preset(preset, tiny_data, folder),
    )
    runs = runs_by_name(sweep_dir)
    lrs = TINY_SWEEPS[preset][1]
    assert sorted(runs) == sorted(lrs)
    for name, folder in runs.items():
        record = read_metrics(folder)
        assert record["status"] in ("completed", "diverged"), name
        assert record["config"]["optimizer"]["lr"] == lrs[name]
        assert "lr_position" not in record["run_name"]
    make_report(sweep_dir)
    text = (sweep_dir / "report.md").read_text()
    assert "## Findings" in text
