"""The report of a run or a sweep, read from its event files and metrics.json files.

    python -m slowlearn.report logs/multiruns/ablation/<timestamp>

Writes three files into that folder, each replaced atomically, and nothing else:
summary.csv (a row per run), report.md (a table of the groups of seeds and the finding,
stated from the numbers) and curves.png (val accuracy, train loss and the output error
signal against the number of updates).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from slowlearn.data import write_atomically
from slowlearn.train import RUN_SETTINGS, run_settings

OUTPUTS = ("summary.csv", "report.md", "curves.png")

RESULTS = (
    "test_acc",
    "best_val_acc",
    "epoch_to_90_val_acc",
    "step_to_90_val_acc",
    "final_train_loss",
    "epoch1_error_signal",
    "epoch1_val_acc",
)
COLUMNS = ("run", "status", "group", "cell", *RUN_SETTINGS, *RESULTS)

ERROR_SIGNAL = "diag/error_signal/true_class"
# The cells that cure slow learning. sigmoid+nll is not among them: -log o_y on independent
# sigmoids never pushes the wrong outputs down, so it is reported on its own.
CROSS_ENTROPY = ("sigmoid+bce", "softmax+bce", "softmax+nll")
# Overrides that never define a group: seeds are what a group averages over, and the cell
# (or the activation and loss it sets) always leads a group's label.
NOT_GROUPING = ("seed", "cell", "activation", "loss")
# Below this many accuracy points in every seed, a gap is reported as no clear difference.
SMALL_GAP = 2.0


@dataclass
class Run:
    folder: Path
    status: str
    error: str
    settings: dict[str, Any]
    overrides: dict[str, str]  # the job's Hydra overrides: how the sweep told its runs apart
    results: dict[str, Any]  # the RESULTS columns; empty unless the run completed
    scalars: dict[str, list[tuple[int, float]]]  # tag -> (step, value), from the event files

    @property
    def cell(self) -> str:
        return f"{self.settings['activation']}+{self.settings['loss']}"

    @property
    def completed(self) -> bool:
        return self.status == "completed"


@dataclass
class Group:
    """Completed runs that differ in their seed alone."""

    cell: str
    context: str  # the other settings that tell this group apart, e.g. "optimizer=adam"
    runs: list[Run]

    @property
    def label(self) -> str:
        return ", ".join(filter(None, (self.cell, self.context)))

    @property
    def loss(self) -> str:
        return self.runs[0].settings["loss"]

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


# ------------------------------------------------------------------ reading


def run_folders(folder: Path) -> list[Path]:
    """The folder itself if it is a run, else its job folders (a multirun)."""
    if (folder / "metrics.json").is_file():
        return [folder]
    runs = sorted(path.parent for path in folder.glob("*/metrics.json"))
    if not runs:
        raise SystemExit(f"no runs in {folder}: neither it nor its subfolders hold metrics.json")
    return runs


def read_overrides(folder: Path) -> dict[str, str]:
    path = folder / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return {}
    return dict(str(item).split("=", 1) for item in OmegaConf.load(path) if "=" in str(item))


def read_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series in the run's event files, in step order.

    A run's tb/ folder may hold several event files (one per writer session); a step
    written twice, as by a resumed run, keeps its latest value.
    """
    events: dict[str, list] = {}
    for events_dir in sorted({p.parent for p in (folder / "tb").rglob("events.out.tfevents.*")}):
        accumulator = EventAccumulator(str(events_dir), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            events.setdefault(tag, []).extend(accumulator.Scalars(tag))
    return {
        tag: sorted({e.step: e.value for e in sorted(found, key=lambda e: e.wall_time)}.items())
        for tag, found in events.items()
    }


def run_results(metrics: dict[str, Any], scalars: dict[str, list[tuple[int, float]]]) -> dict:
    """The RESULTS of a completed run: metrics.json's, plus two epoch-1 values."""
    row = {key: metrics.get(key) for key in RESULTS}
    history = metrics.get("val_history") or []
    if history:
        # val_history[0] was measured after the last update of epoch 1.
        end_of_epoch1 = history[0]["step"]
        signal = [v for step, v in scalars.get(ERROR_SIGNAL, []) if step <= end_of_epoch1]
        row["epoch1_val_acc"] = history[0]["val/acc"]
        row["epoch1_error_signal"] = statistics.fmean(signal) if signal else None
    return row


def read_run(folder: Path) -> Run:
    record = json.loads((folder / "metrics.json").read_text())
    settings = run_settings(record.get("config", {}))
    scalars = read_scalars(folder)
    completed = record["status"] == "completed"
    return Run(
        folder=folder,
        status=record["status"],
        error=record.get("error", ""),
        settings=settings,
        overrides=read_overrides(folder),
        results=run_results(record["metrics"], scalars) if completed else {},
        scalars=scalars,
    )


def group_runs(runs: list[Run]) -> list[Group]:
    """Completed runs grouped by everything their overrides vary except the seed."""
    completed = [run for run in runs if run.completed]
    keys = sorted({key for run in completed for key in run.overrides} - set(NOT_GROUPING))
    varying = [k for k in keys if len({run.overrides.get(k) for run in completed}) > 1]
    groups: dict[tuple[str, str], Group] = {}
    for run in completed:
        context = ", ".join(f"{k}={run.overrides[k]}" for k in varying if k in run.overrides)
        groups.setdefault((run.cell, context), Group(run.cell, context, [])).runs.append(run)
    return sorted(groups.values(), key=lambda group: (group.context, group.cell))


# ------------------------------------------------------------------ summary.csv


def csv_value(value: Any) -> Any:
    """Empty for a missing value; six significant digits for a float (float32 noise off)."""
    if value is None:
        return ""
    return f"{value:.6g}" if isinstance(value, float) else value


def summary_csv(runs: list[Run], groups: list[Group]) -> str:
    label = {run.folder: group.label for group in groups for run in group.runs}
    out = io.StringIO()
    writer = csv.DictWriter(out, COLUMNS, lineterminator="\n")
    writer.writeheader()
    for run in runs:
        row = {"run": run.folder.name, "status": run.status, "group": label.get(run.folder)}
        row |= {"cell": run.cell, **run.settings, **run.results}
        writer.writerow({key: csv_value(value) for key, value in row.items()})
    return out.getvalue()


# ------------------------------------------------------------------ report.md


def percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def spread(values: list[float], fmt: Callable[[float], str]) -> str:
    """Mean ± sample std across seeds (the value alone for one seed)."""
    if len(values) < 2:
        return fmt(values[0]) if values else "–"
    return f"{fmt(statistics.fmean(values))} ± {fmt(statistics.stdev(values))}"


def steps_to_target(group: Group) -> str:
    reached = group.values("step_to_90_val_acc")
    if not reached:
        return "never"
    seeds = "" if len(reached) == len(group.runs) else f" ({len(reached)}/{len(group.runs)} seeds)"
    return spread(reached, "{:.0f}".format) + seeds


TABLE: list[tuple[str, Callable[[Group], str]]] = [
    ("val acc after epoch 1", lambda g: spread(g.values("epoch1_val_acc"), percent)),
    ("test acc", lambda g: spread(g.values("test_acc"), percent)),
    ("best val acc", lambda g: spread(g.values("best_val_acc"), percent)),
    ("steps to 90% val acc", steps_to_target),
    ("final train loss", lambda g: spread(g.values("final_train_loss"), "{:.3g}".format)),
    ("error signal in epoch 1", lambda g: spread(g.values("epoch1_error_signal"), "{:.3g}".format)),
]


def groups_table(groups: list[Group]) -> list[str]:
    lines = [
        "| group | n | " + " | ".join(name for name, _ in TABLE) + " |",
        "|---|---:|" + "---:|" * len(TABLE),
    ]
    for group in groups:
        cells = " | ".join(cell(group) for _, cell in TABLE)
        lines.append(f"| {group.label} | {len(group.runs)} | {cells} |")
    return lines


def and_join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def seeds_note(groups: list[Group]) -> str:
    counts = [len(group.values("epoch1_val_acc")) for group in groups]
    if set(counts) == {1}:
        return "one seed"
    if len(set(counts)) == 1:
        return f"mean of {counts[0]} seeds"
    return f"means of {and_join([str(n) for n in counts])} seeds"


def per_seed_gaps(mse: Group, others: list[Group]) -> list[float]:
    """Accuracy points by which a cross-entropy cell leads mse, for every seed both ran."""
    ours = mse.by_seed("epoch1_val_acc")
    return [
        100 * (theirs[seed] - ours[seed])
        for theirs in (group.by_seed("epoch1_val_acc") for group in others)
        for seed in ours.keys() & theirs.keys()
    ]


def gap_clause(mse: Group, others: list[Group]) -> str:
    gaps = per_seed_gaps(mse, others)
    them = others[0].cell if len(others) == 1 else "both" if len(others) == 2 else "each of them"
    every = "in every seed" if len(mse.runs) > 1 else "in its one seed"
    if not gaps:
        return "no seed ran in both, so there is no per-seed comparison"
    if max(abs(gap) for gap in gaps) < SMALL_GAP:
        return f"{every} it is within {SMALL_GAP:.0f} points of {them}: no clear gap"
    if min(gaps) > 0:
        return f"{every} it trails {them} by at least {min(gaps):.1f} points"
    if max(gaps) < 0:
        return f"{every} it is ahead of {them} by at least {-max(gaps):.1f} points"
    return (
        f"seed by seed its lead over {them} ranges from {-max(gaps):+.1f} to "
        f"{-min(gaps):+.1f} points, so it neither trails nor leads consistently"
    )


def cell_finding(lead: str, mse: Group, others: list[Group]) -> str:
    """The epoch-1 comparison of one mse group with the cross-entropy groups beside it."""
    theirs = and_join([f"{percent(g.mean('epoch1_val_acc'))} for {g.cell}" for g in others])
    sentence = (
        f"{lead}after epoch 1, {mse.cell} reaches {percent(mse.mean('epoch1_val_acc'))} "
        f"val accuracy vs {theirs} ({seeds_note([mse, *others])}); {gap_clause(mse, others)}."
    )
    signals = [group.mean("epoch1_error_signal") for group in [mse, *others]]
    if None not in signals:
        listed = and_join(
            [f"{s:.3g} for {g.cell}" for s, g in zip(signals[1:], others, strict=True)]
        )
        sentence += f" Its mean output error signal in epoch 1 is {signals[0]:.3g}, vs {listed}."
    return sentence[0].upper() + sentence[1:]


def mean_gap(mse: Group, others: list[Group]) -> float:
    """Points by which the best cross-entropy cell leads mse after epoch 1 (seed means)."""
    best = max(group.mean("epoch1_val_acc") for group in others)
    return 100 * (best - mse.mean("epoch1_val_acc"))


def finding(groups: list[Group]) -> list[str]:
    """The finding, generated from the numbers: each mse cell against the cross-entropy
    cells with the same other settings (e.g. the same optimiser)."""
    measured = [group for group in groups if group.values("epoch1_val_acc")]
    paragraphs, gaps = [], {}
    for context in dict.fromkeys(group.context for group in measured):
        beside = [group for group in measured if group.context == context]
        others = [group for group in beside if group.cell in CROSS_ENTROPY]
        lead = f"with {context}, " if context else ""
        for mse in (group for group in beside if group.loss == "mse" and others):
            paragraphs.append(cell_finding(lead, mse, others))
            gaps.setdefault(mse.cell, []).append((context, mean_gap(mse, others)))
        for group in (group for group in beside if group.cell == "sigmoid+nll"):
            sentence = (
                f"{lead}sigmoid+nll reaches {percent(group.mean('epoch1_val_acc'))} after "
                "epoch 1: -log o_y on independent sigmoids only pushes the labelled output "
                "up and never the wrong ones down."
            )
            paragraphs.append(sentence[0].upper() + sentence[1:])
    for cell, by_context in gaps.items():
        if len(by_context) > 1:  # e.g. SGD against Adam: does the optimiser close the gap?
            listed = and_join([f"{gap:.1f} points with {context}" for context, gap in by_context])
            paragraphs.append(
                f"After epoch 1 the best cross-entropy cell leads {cell} by {listed} "
                "(differences of seed means; negative: mse ahead)."
            )
    if paragraphs:
        return paragraphs
    listed = [f"{g.label} {percent(g.mean('epoch1_val_acc'))}" for g in measured]
    return [
        "There is no mse cell and cross-entropy cell with the same settings to compare. "
        "Val accuracy after epoch 1: " + (and_join(listed) if listed else "none measured") + "."
    ]


def not_completed(runs: list[Run]) -> list[str]:
    failed = [run for run in runs if not run.completed]
    if not failed:
        return [f"All {len(runs)} runs completed."]
    return [
        f"- `{run.folder.name}` ({run.cell}, seed {run.settings['seed']}): **{run.status}**"
        + (f": {' '.join(run.error.split())}" if run.error else "")  # one line per run
        for run in failed
    ]


def report_md(folder: Path, runs: list[Run], groups: list[Group]) -> str:
    completed = sum(run.completed for run in runs)
    lines = [
        f"# Report: {folder.name}",
        "",
        f"`{folder}`: {len(runs)} run{'s' * (len(runs) != 1)}, {completed} completed. "
        "Values are mean ± std across seeds (per run: `summary.csv`). The error signal is "
        "the mean |de/dz_y| at the true class's output pre-activation.",
        "",
        "## Results by group",
        "",
        *(groups_table(groups) if groups else ["No completed runs."]),
        "",
        "## Finding",
        "",
        *finding(groups),
        "",
        "## Runs that did not complete",
        "",
        *not_completed(runs),
        "",
        "## Curves",
        "",
        "![val accuracy, train loss and output error signal vs step](curves.png)",
        "",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------ curves.png


def aligned(runs: Iterable[Run], tag: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values[run, step]) on every step any run logged; NaN where a run has none
    (a window with no wrong samples has no error signal for them)."""
    series = [dict(run.scalars.get(tag, [])) for run in runs]
    steps = sorted(set().union(*series))
    return np.array(steps), np.array([[s.get(step, np.nan) for step in steps] for s in series])


def plot_band(ax: Axes, group: Group, tag: str, color: Any, **line: Any) -> None:
    """The seeds' mean as a line and their min-max range as a band."""
    steps, values = aligned(group.runs, tag)
    if not len(steps):
        return
    scale = 100 if tag.endswith("acc") else 1
    ax.plot(steps, scale * np.nanmean(values, axis=0), color=color, **line)
    if len(values) > 1:
        low, high = scale * np.nanmin(values, axis=0), scale * np.nanmax(values, axis=0)
        ax.fill_between(steps, low, high, color=color, alpha=0.18, linewidth=0)


def epoch_ends(groups: list[Group]) -> list[int]:
    """The steps at which epochs end, if every run shares them (else none)."""
    ends = {
        tuple(step for step, _ in run.scalars.get("epoch", [])) for g in groups for run in g.runs
    }
    return list(ends.pop()) if len(ends) == 1 else []


LEGEND_COLUMNS = 3  # a group's label may be long: "sigmoid+mse, optimizer=adam (n=3)"
PANELS = [
    ("Validation accuracy", "val accuracy (%)", "linear"),
    ("Training loss (means over logging windows)", "each cell's own objective (log scale)", "log"),
    (
        "Output error signal at the true class\nsolid: samples classified right, dashed: wrong",
        r"mean $|\partial e/\partial z_y|$ (log scale)",
        "log",
    ),
]


def curves_png(folder: Path, groups: list[Group]) -> bytes:
    fig = Figure(figsize=(16, 5.4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    colors = matplotlib.colormaps["tab10"].colors
    for index, group in enumerate(groups):
        color = colors[index % len(colors)]
        plot_band(axes[0], group, "val/acc", color, marker="o", markersize=5)
        plot_band(axes[1], group, "train/loss", color)
        plot_band(axes[2], group, "diag/error_signal/true_class_right", color)
        plot_band(axes[2], group, "diag/error_signal/true_class_wrong", color, linestyle="--")
    for ax, (title, ylabel, yscale) in zip(axes, PANELS, strict=True):
        ax.set(title=title, xlabel="updates (optimiser steps)", ylabel=ylabel, yscale=yscale)
        ax.grid(True, alpha=0.3)
        for step in epoch_ends(groups):
            ax.axvline(step, color="0.6", linestyle=":", linewidth=1)
    handles = [Line2D([], [], color=colors[i % len(colors)], lw=2.5) for i in range(len(groups))]
    labels = [f"{group.label} (n={len(group.runs)})" for group in groups]
    columns = min(len(labels), LEGEND_COLUMNS)
    if labels:
        fig.legend(handles, labels, loc="lower center", ncol=columns, frameon=False)
    fig.suptitle(f"{folder.name}: mean over seeds, band: min to max; dotted: end of an epoch")
    rows = -(-len(labels) // LEGEND_COLUMNS)
    fig.tight_layout(rect=(0, 0.055 * rows, 1, 1))  # room for the legend below the panels
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=90)
    return out.getvalue()


# ------------------------------------------------------------------ entry point


def make_report(folder: Path) -> list[str]:
    """Write the report's three files into ``folder``; return the finding."""
    runs = [read_run(path) for path in run_folders(folder)]
    groups = group_runs(runs)
    write_atomically(folder / "summary.csv", summary_csv(runs, groups).encode())
    write_atomically(folder / "report.md", report_md(folder, runs, groups).encode())
    write_atomically(folder / "curves.png", curves_png(folder, groups))
    return finding(groups)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a run folder or a multirun folder")
    folder = parser.parse_args(argv).folder
    for paragraph in make_report(folder):
        print(paragraph)
    print("wrote " + ", ".join(str(folder / name) for name in OUTPUTS))


if __name__ == "__main__":
    main()
