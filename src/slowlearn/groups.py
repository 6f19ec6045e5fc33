"""Which jobs of a sweep train as one program, and that program built from their configs:
jobs whose configs are equal except in what a member of a group may differ in.

What a member may differ in is declared once, in ``MEMBER_SETTINGS``: the grouping, the
member order, the launcher's printout and ``step.Member`` read it there. Besides those, a
member has its own paths and names. Everything else (the architecture, the data, the batch
size, the optimiser's other settings, the epochs) is one program's and must be equal.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from slowlearn.model import MemberStack
from slowlearn.module import LitClassifier
from slowlearn.step import Member, log_base_value


@dataclass(frozen=True)
class MemberSetting:
    """A setting in which the members of one group may differ."""

    key: str  # its config key
    member: str | None = None  # the step.Member field that holds it, if the step needs it
    sorts: bool = False  # members are ordered by it, so that those of one cell sit together
    printed: bool = True  # the launcher's printout names it where members differ in it
    normal: Callable[[Any], Any] | None = None  # its value as the step takes it

    def value(self, cfg: DictConfig) -> Any:
        value = OmegaConf.select(cfg, self.key)
        return self.normal(value) if self.normal else value


# What a member may differ in, in the order the launcher names them. The seed gives a member
# its initial weights; the activation and loss nodes hold the output activation, the
# objective and its log base.
MEMBER_SETTINGS = (
    MemberSetting("activation.name", member="activation", sorts=True),
    MemberSetting("loss.name", member="loss", sorts=True),
    # Absent where no log is taken (mse): natural, as an objective's default.
    MemberSetting("loss.log_base", member="log_base", sorts=True, normal=log_base_value),
    MemberSetting("model.init"),
    MemberSetting("model.output_init_scale"),
    MemberSetting("optimizer.lr", member="lr"),
    MemberSetting("seed", sorts=True),
    MemberSetting("data.seed", printed=False),  # the data order's: ${seed} unless overridden
    # experiment=long: which lr of its table optimizer.lr takes.
    MemberSetting("lr_position", printed=False),
)
MEMBER_KEYS = tuple(setting.key for setting in MEMBER_SETTINGS)
# The run's own paths and names. Loggers are each member's own, so they may differ too.
OWN_KEYS = ("run_dir", "run_name", "trainer.default_root_dir", "logger")


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
    return tuple(setting.value(cfg) for setting in MEMBER_SETTINGS if setting.sorts)


def member(cfg: DictConfig) -> Member:
    """What the step needs of a member's config."""
    return Member(**{s.member: s.value(cfg) for s in MEMBER_SETTINGS if s.member})


def form_groups(cfgs: Sequence[DictConfig], max_members: int) -> list[list[int]]:
    """The indices of the jobs of each group, in member order; a group bigger than
    ``max_members`` is split into near-equal groups. A job that fits no group is alone."""
    by_program: dict[str, list[int]] = {}
    for index, cfg in enumerate(cfgs):
        alone = bool(cfg.get("resume"))
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
    """The member settings whose values differ between these configs: what tells members
    apart, as the launcher prints them (a node by its name: ``activation``, ``loss``)."""
    return [
        setting.key.removesuffix(".name")
        for setting in MEMBER_SETTINGS
        if setting.printed and len({str(setting.value(cfg)) for cfg in cfgs}) > 1
    ]


# The keys of a config's ``module`` node that the module takes (runs from before the batched
# launcher saved a few more, which the module now derives).
MODULE_SETTINGS = (
    "loss_window",
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
    members = [member(cfg) for cfg in cfgs]
    first = cfgs[0]
    module = first.get("module") or {}
    return LitClassifier(
        MemberStack(networks),
        members,
        instantiate(first.optimizer, _convert_="all"),  # the rule with its settings (partial)
        **{key: module[key] for key in MODULE_SETTINGS if key in module},
    )
