"""Reading a run or a sweep: each run's metrics.json and event files, and the groups of runs
that differ in their seed alone, told apart by their resolved settings (never by the override
strings that happened to produce them).
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slowlearn.records import SETTING_TABLE, SETTINGS, read_metrics, run_settings
from slowlearn.report.events import folder_scalars

# The why, measured over the fixed training images (``diag/fixed/``) at step 0 and after
# epoch 1: result name -> tag.
FIXED = "diag/fixed/"
WHY = {
    "saturated_pairs": "saturated_wrong_pairs",
    "saturated_samples": "saturated_wrong_fraction",
    "output_factor": "output_factor",
    "signal_wrong": "error_signal/true_class_wrong",
    "signal_right": "error_signal/true_class_right",
}
WHEN = ("step0", "epoch1")
SPEED = FIXED + "bias_grad_norm/"  # + layer: Nielsen's speed of learning of that layer
RESULTS = (
    "test_acc",
    "best_val_acc",
    "final_val_acc",
    "epoch_to_90_val_acc",
    "step_to_90_val_acc",
    "final_train_loss",
    "epoch1_error_signal",
    "epoch1_val_acc",
    "epoch_to_95_val_acc",
    "epoch_to_97_val_acc",
    *(f"{when}_{name}" for name in WHY for when in WHEN),
)
TARGETS = (0.90, 0.95, 0.97)  # val accuracies whose first epoch a long sweep reports
ERROR_SIGNAL = "diag/error_signal/true_class"
# One threshold for "at chance", wherever it is used: val accuracy below 15% (ten classes: chance
# itself is 10%, and a run stuck on one class scores about that).
CHANCE = 0.15
CHANCE_TEXT = "val accuracy below 15%; chance itself is 10%"
SEED_PART = re.compile(r"(^|/)seed[^/]*$")  # the last part of a sweep's run name
# The settings that may tell groups apart, in the order a label names them.
CONTEXT_ORDER = tuple(
    s.name for s in sorted((s for s in SETTING_TABLE if s.label is not None), key=lambda s: s.label)
)


def read_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series a run folder's event files hold, in step order.

    A run's events sit in its own folder (runs from before the batched launcher: in tb/<name>/)
    and may span several files (one per writer session); a step written twice, as by a resumed
    run, keeps its latest value.
    """
    found: dict[str, list[tuple[float, int, float]]] = {}
    event_dirs = {p.parent for p in folder.glob("events.out.tfevents.*")}
    event_dirs |= {p.parent for p in folder.glob("tb/*/events.out.tfevents.*")}
    for events_dir in sorted(event_dirs):
        for tag, scalars in folder_scalars(events_dir).items():
            found.setdefault(tag, []).extend(scalars)
    return {
        tag: sorted({step: value for _, step, value in sorted(kept, key=lambda s: s[0])}.items())
        for tag, kept in found.items()
    }


@dataclass
class Run:
    folder: Path
    name: str  # the run's own name (sigmoid+mse/seed0): what its sweep varied
    status: str
    error: str
    settings: dict[str, Any]  # records.SETTINGS, resolved
    results: dict[str, Any]  # the RESULTS columns; empty unless the run completed
    scalars: dict[str, list[tuple[int, float]]] = field(default_factory=dict)

    @property
    def speeds(self) -> dict[str, float]:
        """Each layer's ||dC/db|| over the fixed images at step 0, input to output."""
        return {
            tag.removeprefix(SPEED): series[0][1]
            for tag, series in self.scalars.items()
            if tag.startswith(SPEED) and series and series[0][0] == 0
        }

    @property
    def cell(self) -> str:
        return f"{self.settings['activation']}+{self.settings['loss']}"

    @property
    def completed(self) -> bool:
        return self.status == "completed"


def run_folders(folder: Path) -> list[Path]:
    """The folder itself if it is a run, else every run folder below it (a sweep)."""
    if (folder / "metrics.json").is_file():
        return [folder]
    runs = sorted(path.parent for path in folder.rglob("metrics.json"))
    if not runs:
        raise SystemExit(f"no runs in {folder}: neither it nor its subfolders hold metrics.json")
    return runs


def run_results(metrics: dict[str, Any], scalars: dict[str, list[tuple[int, float]]]) -> dict:
    """The RESULTS of a completed run: metrics.json's, plus the epoch-1 values and the fixed
    sample's measurements at step 0 and after epoch 1."""
    row = {key: metrics.get(key) for key in RESULTS}
    history = metrics.get("val_history") or []
    if history:
        # val_history[0] was measured after the last update of epoch 1.
        end_of_epoch1 = history[0]["step"]
        signal = [v for step, v in scalars.get(ERROR_SIGNAL, []) if step <= end_of_epoch1]
        row["epoch1_val_acc"] = history[0]["val/acc"]
        for target in TARGETS[1:]:
            reached = (h["epoch"] for h in history if h["val/acc"] >= target)
            row[f"epoch_to_{round(100 * target)}_val_acc"] = next(reached, None)
        row["epoch1_error_signal"] = statistics.fmean(signal) if signal else None
        for name, tag in WHY.items():
            at = dict(scalars.get(FIXED + tag, []))
            row[f"step0_{name}"] = at.get(0)
            row[f"epoch1_{name}"] = at.get(end_of_epoch1)
    return row


def read_run(folder: Path, sweep: Path) -> Run:
    record = read_metrics(folder)
    completed = record["status"] == "completed"
    scalars = read_scalars(folder) if completed else {}  # only completed runs are drawn
    name = record.get("run_name") or str(folder.relative_to(sweep)) or folder.name
    return Run(
        folder=folder,
        name=name,
        status=record["status"],
        error=record.get("error", ""),
        settings=run_settings(record.get("config", {})),
        results=run_results(record["metrics"], scalars) if completed else {},
        scalars=scalars,
    )


def read_runs(folder: Path) -> list[Run]:
    return [read_run(path, folder) for path in run_folders(folder)]


# ------------------------------------------------------------------ groups


def shown(value: Any) -> str:
    return "none" if value is None else str(value).replace(" ", "")


def context_text(context: Iterable[tuple[str, Any]]) -> str:
    """A context as the report writes it: ``init=large, depth=2``."""
    return ", ".join(f"{key}={shown(value)}" for key, value in context)


@dataclass
class Group:
    """Completed runs that differ in their seed alone."""

    cell: str
    context: dict[str, Any]  # the other settings that tell this group apart: {"init": "large"}
    runs: list[Run]

    @property
    def context_label(self) -> str:
        return context_text(self.context.items())

    @property
    def label(self) -> str:
        return ", ".join(filter(None, (self.cell, self.context_label)))

    @property
    def loss(self) -> str:
        return self.runs[0].settings["loss"]

    def without(self, *keys: str) -> tuple:
        """The context without ``keys``: what the groups of one comparison share."""
        return tuple((k, shown(v)) for k, v in self.context.items() if k not in keys)

    def values(self, key: str) -> list[float]:
        """The result of every seed that has one (steps to 90%: the seeds that got there)."""
        return [run.results[key] for run in self.runs if run.results.get(key) is not None]

    def mean(self, key: str) -> float | None:
        values = self.values(key)
        return statistics.fmean(values) if values else None

    def by_seed(self, key: str) -> dict[Any, float]:
        return {
            run.settings["seed"]: run.results[key]
            for run in self.runs
            if run.results.get(key) is not None
        }


def determined(key: str, by: Iterable[str], runs: list[Run]) -> bool:
    """Whether the values of the settings ``by`` fix the value of ``key`` in these runs."""
    seen: dict[tuple, str] = {}
    for run in runs:
        known = tuple(shown(run.settings[k]) for k in by)
        if seen.setdefault(known, shown(run.settings[key])) != shown(run.settings[key]):
            return False
    return True


def context_settings(runs: list[Run]) -> list[str]:
    """The settings that tell groups apart, besides the cell: those that vary among the runs
    (also those that did not complete: a failed lr belongs to its own context) and that the
    settings before them (and the cell) do not determine."""
    kept: list[str] = []
    for key in CONTEXT_ORDER:
        if key not in SETTINGS or len({shown(run.settings[key]) for run in runs}) < 2:
            continue
        # An lr that follows the optimizer still goes into labels: an optimizer is never
        # named without its lr.
        follows_optimizer = key == "lr" and "optimizer" in kept
        if follows_optimizer or not determined(key, ["activation", "loss", *kept], runs):
            kept.append(key)
    return kept


def name_without_seed(run: Run) -> str:
    return SEED_PART.sub("", run.name).strip("/")


def group_runs(runs: list[Run]) -> list[Group]:
    """Completed runs grouped by their cell and every other setting that varies, but the seed.

    A sweep may vary a key that is none of the settings (data.split, say): then two runs of a
    group would share a seed, and the runs' own names, which say what their sweep varied,
    tell them apart instead.
    """
    keys = context_settings(runs)
    groups: dict[tuple, Group] = {}
    for run in (run for run in runs if run.completed):
        context = {key: run.settings[key] for key in keys}
        index = (run.cell, *(shown(v) for v in context.values()))
        groups.setdefault(index, Group(run.cell, context, [])).runs.append(run)
    for index, group in list(groups.items()):
        seeds = [run.settings["seed"] for run in group.runs]
        if len(set(seeds)) < len(seeds):
            del groups[index]
            for run in group.runs:
                context = group.context | {"run": name_without_seed(run)}
                key = (*index, name_without_seed(run))
                groups.setdefault(key, Group(run.cell, context, [])).runs.append(run)
    return sorted(groups.values(), key=group_order)


def group_order(group: Group) -> tuple:
    """By context (numbers by value), then by cell."""

    def sortable(value: Any) -> tuple:
        return (0, value, "") if isinstance(value, int | float) else (1, 0, shown(value))

    return (*(sortable(v) for v in group.context.values()), group.cell)


def is_lr_sweep(groups: list[Group]) -> bool:
    """Whether the learning rate is tuned: some cell was run at several lrs, all else equal."""
    lrs: dict[tuple, set] = {}
    for group in groups:
        if "lr" in group.context:
            lrs.setdefault((group.cell, group.without("lr")), set()).add(group.context["lr"])
    return any(len(values) > 1 for values in lrs.values())
