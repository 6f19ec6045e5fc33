"""Which jobs of a sweep train as one program, and that program built from their configs:
jobs whose configs are equal except in what a member of a group may differ in.

A member may differ in its seed (its initial weights and its data order), its output
activation, its objective, ``model.init``, ``model.output_init_scale``, ``optimizer.lr`` (and
``lr_position``, which picks it from a preset's table) and ``loss.log_base``, and in its own
paths and names. Everything else (the architecture, the data, the batch size, the
optimiser's other settings, the epochs) is one program's and must be equal.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from slowlearn.model import MemberStack
from slowlearn.module import LitClassifier
from slowlearn.optimizers import NOT_SETTINGS, OPTIMIZERS
from slowlearn.step import Member, log_base_value

# What a member may differ in: config keys (the activation and loss nodes hold the output
# activation, the objective and its log base). data.seed is the data order's, ${seed} unless
# overridden. lr_position (experiment=long) only says which lr of its table optimizer.lr takes.
MEMBER_KEYS = (
    "seed",
    "data.seed",
    "activation",
    "loss",
    "model.init",
    "model.output_init_scale",
    "optimizer.lr",
    "lr_position",
)
# The run's own paths and names. Loggers are each member's own, so they may differ too.
OWN_KEYS = ("run_dir", "run_name", "trainer.default_root_dir", "logger")
# The member settings that tell members apart in the launcher's printout.
DIFFERENCES = (
    "activation.name",
    "loss.name",
    "loss.log_base",
    "model.init",
    "model.output_init_scale",
    "optimizer.lr",
    "seed",
)


def without(config: dict[str, Any], key: str) -> None:
    *parents, last = key.split(".")
    for part in parents:
        config = config.get(part)
        if not isinstance(config, dict):
            return
    config.pop(last, None)


def program_key(cfg: DictConfig) -> str:
    """What must be equal for two jobs to share one program (resumed jobs never share)."""
    config = OmegaConf.to_container(cfg, resolve=True)
    for key in (*MEMBER_KEYS, *OWN_KEYS):
        without(config, key)
    return json.dumps(config, sort_keys=True, default=str)


def member_order(cfg: DictConfig) -> tuple:
    """Members of one cell side by side (each objective runs once over its cell's slice)."""
    return (cfg.activation.name, cfg.loss.name, log_base_value(cfg.loss.log_base), cfg.seed)


def form_groups(cfgs: Sequence[DictConfig], max_members: int) -> list[list[int]]:
    """The indices of the jobs of each group, in member order; a group bigger than
    ``max_members`` is split into near-equal groups. A job that fits no group is alone."""
    by_program: dict[str, list[int]] = {}
    for index, cfg in enumerate(cfgs):
        alone = not OmegaConf.is_missing(cfg, "resume") and cfg.get("resume")
        key = f"resume:{index}" if alone else program_key(cfg)
        by_program.setdefault(key, []).append(index)
    groups = []
    for indices in by_program.values():
        indices.sort(key=lambda index: member_order(cfgs[index]))
        parts = -(-len(indices) // max_members)
        sizes = [len(indices) // parts + (part < len(indices) % parts) for part in range(parts)]
        starts = [sum(sizes[:part]) for part in range(parts)]
        groups += [indices[start : start + size] for start, size in zip(starts, sizes, strict=True)]
    return groups


def member_differences(cfgs: Sequence[DictConfig]) -> list[str]:
    """The member keys whose values differ between these configs: what tells members apart."""
    return [
        key.removesuffix(".name")
        for key in DIFFERENCES
        if len({str(OmegaConf.select(cfg, key)) for cfg in cfgs}) > 1
    ]


# The keys of a config's ``module`` node that the module takes (runs from before the batched
# launcher saved a few more, which the module now derives).
MODULE_SETTINGS = (
    "log_every_n_steps",
    "diagnostics_every_n_steps",
    "diagnostics_window",
    "trace",
    "backward_hooks",
    "cuda_graphs",
)


def build_module(cfgs: Sequence[DictConfig]) -> LitClassifier:
    """One module for the runs of these configs, which may differ only in what a member may
    differ in (``program_key``); one config gives a single run.

    Each member's initial weights are drawn exactly as its own run draws them: the global RNG
    seeded with its seed, then its model built.
    """
    networks = []
    for cfg in cfgs:
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
        networks.append(instantiate(cfg.model))
    members = [
        Member(
            cfg.activation.name, cfg.loss.name, log_base_value(cfg.loss.log_base), cfg.optimizer.lr
        )
        for cfg in cfgs
    ]
    first = cfgs[0]
    optimizer = OmegaConf.to_container(first.optimizer, resolve=True)
    settings = {k: v for k, v in optimizer.items() if k not in NOT_SETTINGS}
    module = first.get("module") or {}
    return LitClassifier(
        MemberStack(networks),
        members,
        OPTIMIZERS[optimizer["_target_"]],
        settings,
        **{key: module[key] for key in MODULE_SETTINGS if key in module},
    )
