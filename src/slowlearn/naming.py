"""The names of runs: what tells a run apart from the others of its sweep.

A run is named by its cell, then by its value of every other key its sweep varies, the seed
last: ``sigmoid+mse/seed0``, ``softmax+nll/init-large/lr0.3/seed2``. A sweep's job folder is
its name (``hydra.sweep.subdir``), and TensorBoard names a run by its folder, so
``tensorboard --logdir <sweep>`` lists exactly these names. A single run is named by its cell
and lives in ``logs/runs/<experiment>/<date>_<time>/<cell>/``.

Which keys a sweep varies: Hydra writes the sweep's own config, with the command line as given
(``seed=0,1,2``) and the preset's sweep parameters, to ``<sweep>/multirun.yaml`` before any job
starts. Every job reads it there, also one under joblib or SLURM that never sees the others,
so a constant such as ``trainer.max_epochs=1`` never becomes part of a name.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from slowlearn.records import RUN_SETTINGS, SETTING_TABLE

CELL_KEYS = ("cell", "activation", "loss")  # the name's first part says them
# A name's word for a setting's config key (records.SETTING_TABLE).
SHORT_NAMES = {s.key: s.short for s in SETTING_TABLE if s.short}
# A swept key that only picks another key's value from a table is named by that value: the
# runs of experiment=long sweep lr_position (below, best, above) and are named lr0.3, lr1, ...
NAMED_BY = {"lr_position": "optimizer.lr"}
# Config groups whose choice sets settings of other names.
GROUP_SETTINGS = {"cell": ("activation", "loss"), "data": ("dataset",)}


def override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def label(key: str, value: str) -> str:
    """One name part: ``seed0``, ``lr0.3``, ``init-large``, ``hidden100-100``; a config group's
    choice stands alone (``adam``)."""
    if "." not in key and key != "seed":  # a config group (optimizer=adam, data=...)
        return value.replace("/", "-")
    short = SHORT_NAMES.get(key, key.rsplit(".", 1)[-1])
    value = value.strip("[]").replace(",", "-").replace(" ", "").replace("/", "-")
    return f"{short}{value}" if value[:1].isdigit() or value[:1] in "-." else f"{short}-{value}"


def shown_value(value: Any) -> str:
    """A resolved value as a name shows it: 1.0 as 1, as the command line gives it."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def run_name(
    cell: str,
    overrides: Iterable[str],
    swept: Sequence[str],
    resolved: Mapping[str, Any] | None = None,
) -> str:
    """The cell, then this job's values of the swept keys (the seed last); a key of NAMED_BY
    shows the key it picks, with its value in ``resolved`` (key -> resolved value)."""
    values = {override_key(o): o.split("=", 1)[1] for o in overrides if "=" in o}
    keys = [k for k in swept if k not in CELL_KEYS and k in values]
    keys.sort(key=lambda key: key == "seed")  # stable: the sweep's order, the seed last
    parts = []
    for key in keys:
        picked = NAMED_BY.get(key)
        if picked is not None and resolved is not None and picked in resolved:
            parts.append(label(picked, shown_value(resolved[picked])))
        else:
            parts.append(label(key, values[key]))
    return "/".join([cell, *parts])


@functools.lru_cache(maxsize=8)
def swept_keys(sweep_dir: str) -> tuple[str, ...]:
    """The keys a sweep varies, from the multirun.yaml that Hydra wrote into its folder."""
    path = Path(sweep_dir) / "multirun.yaml"
    if not path.is_file():
        return ()
    sweep = OmegaConf.load(path)
    keys = list(OmegaConf.select(sweep, "hydra.sweeper.params", default=None) or {})
    parser = OverridesParser.create()
    for text in OmegaConf.select(sweep, "hydra.overrides.task", default=[]):
        override = parser.parse_override(text)
        key = override.key_or_group
        if override.is_sweep_override() and key not in keys:
            keys.append(key)
        elif not override.is_sweep_override() and key in keys:
            keys.remove(key)  # the command line fixed a preset's sweep to one value
    return tuple(keys)


def resolve_run_name(activation: str, loss: str, _root_: DictConfig | None = None) -> str:
    """``${run_label:...}``: this job's name, from the Hydra config of the job being run
    (``_root_``, OmegaConf's root of the config being resolved: the values NAMED_BY shows)."""
    cell = f"{activation}+{loss}"
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return cell
    hydra = HydraConfig.get()
    swept = swept_keys(str(hydra.sweep.dir))
    resolved = {
        picked: OmegaConf.select(_root_, picked)
        for key, picked in NAMED_BY.items()
        if key in swept and _root_ is not None
    }
    return run_name(cell, hydra.overrides.task, swept, resolved)


def settings_of_keys(swept: Iterable[str]) -> list[str]:
    """The run settings (records.RUN_SETTINGS, and depth) that swept keys set, in that order:
    a key by its config key or setting name (``optimizer.lr``, ``optimizer``), a cell its
    activation and loss, a key of NAMED_BY the key it picks, the hidden sizes also the depth."""
    keys = set()
    for key in swept:
        keys.update(GROUP_SETTINGS.get(key, (NAMED_BY.get(key, key),)))
    names = [name for name, key in RUN_SETTINGS.items() if name in keys or key in keys]
    return [*names, "depth"] if "hidden_sizes" in names else names


def resolve_varied_settings() -> list[str]:
    """``${varied_settings:}``: the settings this job's sweep varies; none for a single run."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return []
    return settings_of_keys(swept_keys(str(HydraConfig.get().sweep.dir)))


def if_set(value: str | None, when_set: str, otherwise: str) -> str:
    """``${if_set:${resume},a,b}``: ``a`` where a value is set (not null, not empty), else ``b``."""
    return when_set if value else otherwise


def register_resolvers() -> None:
    """The resolvers the configs use; registered before Hydra composes them."""
    for name, resolver in (
        ("run_label", resolve_run_name),
        ("varied_settings", resolve_varied_settings),
        ("if_set", if_set),
    ):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)
