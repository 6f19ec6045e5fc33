"""The sweeps that make results reads: each sweep folder's preset, dataset and run statuses,
the newest of each (preset, dataset), and the facts a section states about it (its overrides,
the grid it swept, its wall time).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from math import prod
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from slowlearn.records import read_metrics, run_settings

REQUIRED = ("ablation", "lr_fair", "depth")
DEFAULT_DATASET = "mnist"
DATASET_NAMES = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST"}
WALL_TIME_NOTE = (
    "Wall time: from the sweep's start (when Hydra wrote multirun.yaml, before the first job) "
    "to the last metrics.json a run wrote, read from the files' modification times."
)


@dataclass
class Sweep:
    folder: Path
    preset: str  # config["name"] of its runs
    dataset: str  # run_settings' dataset; several joined by "+"
    statuses: Counter = field(default_factory=Counter)

    @property
    def key(self) -> tuple[str, str]:
        return self.preset, self.dataset

    @property
    def runs(self) -> int:
        return sum(self.statuses.values())

    @property
    def slug(self) -> str:
        """The figures' name prefix: the preset, and the dataset unless it is MNIST."""
        part = "" if self.dataset == DEFAULT_DATASET else f"-{self.dataset}"
        return f"{self.preset}{part}"

    @property
    def title(self) -> str:
        return f"{self.preset} ({dataset_name(self.dataset)})"


def dataset_name(dataset: str) -> str:
    return "+".join(DATASET_NAMES.get(part, part) for part in dataset.split("+"))


def read_sweep(folder: Path) -> Sweep | None:
    """A sweep folder's preset, dataset and run statuses; None without any run."""
    records = [read_metrics(path.parent) for path in sorted(folder.rglob("metrics.json"))]
    configs = [record.get("config") or {} for record in records]
    names = Counter(str(config.get("name")) for config in configs)
    if not names:
        return None
    # A run beside the sweep's jobs (a rerun of one cell) must not give the sweep its name.
    preset = names.most_common(1)[0][0]
    datasets = sorted(
        {
            str(run_settings(config)["dataset"])
            for config in configs
            if str(config.get("name")) == preset
        }
    )
    statuses = Counter(str(record.get("status")) for record in records)
    return Sweep(folder, preset, "+".join(datasets), statuses)


def find_sweeps(logs: Path) -> list[Sweep]:
    """Every finished sweep under ``logs/multiruns/<name>/`` with at least one completed run.
    A sweep with a run still running is left out, and said so: its report would change."""
    sweeps = []
    for folder in sorted((logs / "multiruns").glob("*/*")):
        sweep = read_sweep(folder) if folder.is_dir() else None
        if sweep and sweep.statuses["running"]:
            print(f"left out: {folder} has {sweep.statuses['running']} runs still running")
        elif sweep and sweep.statuses["completed"]:
            sweeps.append(sweep)
    return sweeps


def newest(sweeps: Iterable[Sweep]) -> dict[tuple[str, str], list[Sweep]]:
    """The sweeps of each (preset, dataset), newest first: sweep folders are named
    ``<date>_<time>-XXXX``, so their names sort by time."""
    by_key: dict[tuple[str, str], list[Sweep]] = {}
    for sweep in sweeps:
        by_key.setdefault(sweep.key, []).append(sweep)
    return {
        key: sorted(found, key=lambda s: (s.folder.name, start_time(s.folder)), reverse=True)
        for key, found in by_key.items()
    }


def parse_required(names: Sequence[str]) -> list[tuple[str, str]]:
    """``preset`` or ``preset:dataset`` (default MNIST)."""
    return [(name.partition(":")[0], name.partition(":")[2] or DEFAULT_DATASET) for name in names]


def missing_error(logs: Path, preset: str, dataset: str) -> str:
    args = "" if dataset == DEFAULT_DATASET else f" ARGS=data={dataset}"
    return (
        f"error: no {preset} sweep (data {dataset}) under {logs / 'multiruns' / preset}: "
        f"run make sweep EXPERIMENT={preset}{args}"
    )


def section_order(keys: Iterable[tuple[str, str]], required: Sequence[str]) -> list:
    """The required presets in their order, then the others by name; MNIST first in each."""
    rank = {name: place for place, name in enumerate(required)}
    return sorted(
        keys,
        key=lambda k: (rank.get(k[0], len(rank)), k[0], k[1] != DEFAULT_DATASET, k[1]),
    )


# ------------------------------------------------------------------ a sweep's facts


def start_time(folder: Path) -> float:
    """When the sweep started: Hydra writes multirun.yaml, then each job's .hydra/config.yaml."""
    written = [p.stat().st_mtime for p in folder.glob("multirun.yaml")]
    written += [p.stat().st_mtime for p in folder.rglob(".hydra/config.yaml")]
    return min(written, default=folder.stat().st_mtime)


def wall_seconds(folder: Path) -> float:
    ends = [p.stat().st_mtime for p in folder.rglob("metrics.json")]
    return max(0.0, max(ends, default=0.0) - start_time(folder))


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def multirun_settings(folder: Path) -> tuple[list[str], dict[str, list[str] | None]]:
    """The command-line overrides of a sweep, and the parameters it swept with their values.

    Hydra's basic sweeper takes the preset's ``hydra.sweeper.params``, then the command line's
    overrides, the later replacing the earlier per key: so a grid reduced on the command line
    shows here as reduced. None for values that cannot be listed (a glob).
    """
    path = folder / "multirun.yaml"
    if not path.is_file():
        return [], {}
    config = OmegaConf.load(path)
    task = [str(o) for o in OmegaConf.select(config, "hydra.overrides.task", default=[]) or []]
    params = OmegaConf.select(config, "hydra.sweeper.params", default={}) or {}
    arguments = [f"{key}={value}" for key, value in params.items()]
    swept: dict[str, list[str] | None] = {}
    for override in OverridesParser.create().parse_overrides([*arguments, *task]):
        key = override.get_key_element()
        swept.pop(key, None)
        if override.is_sweep_override():
            try:
                swept[key] = [str(value) for value in override.sweep_string_iterator()]
            except Exception:  # a sweep Hydra can only expand against the config
                swept[key] = None
    return task, swept


def grid_text(swept: dict[str, list[str] | None]) -> str:
    if not swept:
        return "nothing (a single job)"
    parts = [
        f"`{key}` ({len(values)}: {', '.join(values)})" if values else f"`{key}`"
        for key, values in swept.items()
    ]
    counts = [len(values) for values in swept.values() if values]
    total = f" = {prod(counts)} combinations" if len(counts) == len(swept) else ""
    return " × ".join(parts) + total


def statuses_text(statuses: Counter) -> str:
    counted = sorted(statuses.items(), key=lambda item: (item[0] != "completed", item[0]))
    return ", ".join(f"{count} {status}" for status, count in counted)
