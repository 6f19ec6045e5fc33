"""The report's tables: summary.csv (a row per run), the results of every group, and for a
learning-rate sweep each cell's learning rate chosen on validation, never on test.
"""

from __future__ import annotations

import csv
import io
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from slowlearn.records import SETTINGS
from slowlearn.report.runs import (
    RESULTS,
    WHY,
    Group,
    Run,
    context_settings,
    context_text,
    shown,
)

COLUMNS = ("run", "status", "group", "cell", *SETTINGS, *RESULTS)


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
        row = {"run": run.name, "status": run.status, "group": label.get(run.folder)}
        row |= {"cell": run.cell, **run.settings, **run.results}
        writer.writerow({key: csv_value(value) for key, value in row.items()})
    return out.getvalue()


def percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def number(value: float | None) -> str:
    return "–" if value is None else f"{value:.3g}"


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


# ------------------------------------------------------------------ the best learning rate


@dataclass
class BestLr:
    """One cell's learning rate with the best mean val accuracy after epoch 1, among the lrs
    at which every seed completed; the grid is every lr the sweep tried for it."""

    cell: str
    context: tuple  # the group context without lr
    best: Group | None
    grid: list[float]
    ineligible: list[float]  # lrs at which a seed diverged or failed
    on: str = "epoch1_val_acc"  # the val accuracy chosen on: after epoch 1, or the last one

    @property
    def when(self) -> str:
        return after_epochs(self.on, self.best.runs[0].settings["max_epochs"] if self.best else 1)

    @property
    def lr(self) -> float | None:
        return self.best.context["lr"] if self.best else None

    @property
    def at_edge(self) -> bool:
        """The best lr is the grid's smallest or largest: the true best may lie outside."""
        return self.best is not None and self.lr in (min(self.grid), max(self.grid))

    @property
    def context_label(self) -> str:
        return context_text(self.context)

    def mean(self, key: str) -> float | None:
        return self.best.mean(key) if self.best else None


def selection_key(runs: list[Run]) -> str:
    """One-epoch sweeps are compared after epoch 1; longer ones after their last epoch."""
    return "epoch1_val_acc" if all(r.settings["max_epochs"] == 1 for r in runs) else "final_val_acc"


def after_epochs(key: str, epochs: int) -> str:
    if key == "epoch1_val_acc" or epochs == 1:
        return "after epoch 1"
    return f"after the last epoch ({epochs})"


def best_lrs(runs: list[Run], groups: list[Group]) -> list[BestLr]:
    """Each cell's best lr per context, chosen on validation only: on the val accuracy after
    epoch 1 in a one-epoch sweep, after the last epoch in a longer one."""
    on = selection_key(runs)
    keys = [key for key in context_settings(runs) if key != "lr"]
    tried: dict[tuple, set[float]] = {}
    failed: dict[tuple, set[float]] = {}
    for run in runs:
        index = (run.cell, tuple((key, shown(run.settings[key])) for key in keys))
        tried.setdefault(index, set()).add(run.settings["lr"])
        if not run.completed:
            failed.setdefault(index, set()).add(run.settings["lr"])
    choices = []
    for (cell, context), grid in tried.items():
        eligible = [
            group
            for group in groups
            if group.cell == cell
            and group.without("lr") == context
            and group.context["lr"] not in failed.get((cell, context), set())
            and group.values(on)
        ]
        best = max(eligible, key=lambda group: group.mean(on), default=None)
        ineligible = sorted(failed.get((cell, context), set()))
        choices.append(BestLr(cell, context, best, sorted(grid), ineligible, on))
    return sorted(choices, key=lambda c: (tuple(by_value(v) for _, v in c.context), c.cell))


def by_value(text: str) -> tuple:
    """A shown setting's sort key: none first, then numbers by value, then words."""
    if text == "none":
        return (0, 0.0, "")
    try:
        return (1, float(text), "")
    except ValueError:
        return (2, 0.0, text)


def lr_text(lr: float | None) -> str:
    return "–" if lr is None else f"{lr:g}"


def best_lr_table(choices: list[BestLr]) -> list[str]:
    when = choices[0].when if choices else "after epoch 1"
    lines = [
        f"| cell | context | best lr (on val) | val acc {when} | test acc at that lr "
        "| grid | note |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for choice in choices:
        notes = []
        if choice.at_edge:
            notes.append("at the edge of the grid: the best may lie outside it")
        if choice.ineligible:
            listed = ", ".join(lr_text(lr) for lr in choice.ineligible)
            notes.append(f"not eligible (a seed diverged or failed): lr {listed}")
        if choice.best is None:
            notes.append("no eligible lr")
        val = spread(choice.best.values(choice.on), percent) if choice.best else "–"
        test = spread(choice.best.values("test_acc"), percent) if choice.best else "–"
        grid = f"{lr_text(min(choice.grid))} … {lr_text(max(choice.grid))} ({len(choice.grid)})"
        lines.append(
            f"| {choice.cell} | {choice.context_label or '–'} | {lr_text(choice.lr)} | {val} "
            f"| {test} | {grid} | {'; '.join(notes)} |"
        )
    return lines


def depth_cell(group: Group) -> str:
    value = percent(group.mean("final_val_acc"))
    return f"{value} (lr {shown(group.context['lr'])})" if "lr" in group.context else value


def depth_table(groups: list[Group]) -> list[str]:
    """Final val accuracy (mean over seeds) by cell and depth, one table per other setting;
    each value with its lr where the groups are each cell at its chosen lr."""
    lines: list[str] = []
    for context in dict.fromkeys(group.without("depth", "lr") for group in groups):
        beside = [g for g in groups if g.without("depth", "lr") == context]
        depths = sorted({g.context["depth"] for g in beside})
        label = context_text(context) or "all runs"
        lines += [
            "",
            f"| {label} | " + " | ".join(f"depth {depth}" for depth in depths) + " |",
            "|---|" + "---:|" * len(depths),
        ]
        for cell in dict.fromkeys(g.cell for g in beside):
            by_depth = {g.context["depth"]: g for g in beside if g.cell == cell}
            values = [depth_cell(by_depth[d]) if d in by_depth else "–" for d in depths]
            lines.append(f"| {cell} | " + " | ".join(values) + " |")
    return lines[1:]


# ------------------------------------------------------------------ the why, measured

WHY_DEFINITIONS = [
    "Measured over the same 1,000 training images for every run (`diag/fixed/` in "
    "TensorBoard), at step 0 and after epoch 1; mean over seeds.",
    "",
    "- **saturated-and-wrong pairs**: the fraction of (image, output) pairs with |o_i − y_i| > "
    "0.9: the output sits at the wrong end of its range, where a sigmoid's slope o(1 − o) is "
    "below 0.09;",
    "- **saturated-and-wrong images**: the fraction of images that are misclassified and whose "
    "labelled output o_y is below 0.1;",
    "- **output factor**: ‖δ_out‖ / ‖o − y‖ over the images, δ_out = ∂e/∂z per image: 1 where "
    "the error alone sets the step (sigmoid+bce, softmax+nll, identity+mse; eq. 5.5), the "
    "outputs' effective slope under MSE;",
    "- **error signal**: the mean |∂e/∂z_y| at the labelled output, on the images the network "
    "misclassifies (wrong) and on those it classifies right.",
    "",
    "Identity outputs are no probabilities: their saturation is left out (–).",
]


def change(group: Group, name: str, fmt: Callable[[float], str]) -> str:
    """``step 0 → epoch 1`` of one WHY measurement, mean over seeds."""
    values = [group.mean(f"{when}_{name}") for when in ("step0", "epoch1")]
    if values == [None, None]:
        return "–"
    return " → ".join("–" if v is None else fmt(v) for v in values)


WHY_COLUMNS: dict[str, tuple[str, Callable[[float], str]]] = {
    "saturated_pairs": ("saturated-and-wrong pairs", percent),
    "saturated_samples": ("saturated-and-wrong images", percent),
    "output_factor": ("output factor", number),
    "signal_wrong": ("error signal, wrong", number),
    "signal_right": ("error signal, right", number),
}


def why_table(groups: list[Group]) -> list[str]:
    """The WHY measurements of each group, step 0 → after epoch 1."""
    columns = [(name, *WHY_COLUMNS[name]) for name in WHY]
    lines = [
        "| group | " + " | ".join(title for _, title, _ in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for group in groups:
        cells = " | ".join(change(group, name, fmt) for name, _, fmt in columns)
        lines.append(f"| {group.label} | {cells} |")
    return lines


def mean_speeds(group: Group) -> dict[str, float]:
    """Each layer's step-0 speed ||dC/db||, mean over the seeds that measured it."""
    per_layer: dict[str, list[float]] = {}
    for run in group.runs:
        for layer, value in run.speeds.items():
            per_layer.setdefault(layer, []).append(value)
    return {layer: statistics.fmean(values) for layer, values in per_layer.items()}


def speed_ratios(speeds: dict[str, float]) -> dict[str, float]:
    """lower : upper for each pair of adjacent layers (hidden1 : hidden2, ..., : output)."""
    layers = list(speeds)
    return {
        f"{lower} : {upper}": speeds[lower] / speeds[upper]
        for lower, upper in zip(layers, layers[1:], strict=False)
        if speeds[upper] > 0
    }


def layer_order(names: list[str]) -> list[str]:
    """hidden1, hidden2, ..., output."""
    return sorted(names, key=lambda n: (n == "output", int(n[6:]) if n[6:].isdigit() else 0))


def speed_table(groups: list[Group]) -> list[str]:
    """Nielsen's speed of learning at step 0: ||dC/db|| of every layer and the ratio between
    adjacent layers, one table per context (its layers), a row per cell."""
    lines: list[str] = []
    for context in dict.fromkeys(group.without("lr") for group in groups):
        beside = [g for g in groups if g.without("lr") == context and mean_speeds(g)]
        if not beside:
            continue
        layers = layer_order(list(mean_speeds(beside[0])))
        pairs = list(speed_ratios({layer: 1.0 for layer in layers}))
        label = context_text(context) or "all runs"
        lines += [
            "",
            f"| {label} | " + " | ".join([*layers, *pairs]) + " |",
            "|---|" + "---:|" * (len(layers) + len(pairs)),
        ]
        for group in beside:
            speeds = mean_speeds(group)
            speeds = {layer: speeds[layer] for layer in layers if layer in speeds}
            ratios = speed_ratios(speeds)
            at_lr = f" (lr {shown(group.context['lr'])})" if "lr" in group.context else ""
            values = [number(speeds.get(layer)) for layer in layers]
            values += [number(ratios.get(pair)) for pair in pairs]
            lines.append(f"| {group.cell}{at_lr} | " + " | ".join(values) + " |")
    return lines[1:]
