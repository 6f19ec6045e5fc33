"""The report's figures: curves.png (val accuracy, train loss and the output error signal
against the number of updates, one row of panels per value of the extra axes, such as the
init or the depth) and, for a learning-rate sweep, lr_sensitivity.png (val accuracy after
epoch 1 against the lr, one panel per init; the line joins the eligible lrs only).
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from slowlearn.cells import CELLS
from slowlearn.report.runs import CHANCE, Group, Run, context_text
from slowlearn.report.tables import BestLr, by_value, lr_text

# One colour per cell in every figure and every row, in the cells' declared order.
CELL_ORDER = tuple(cell.name for cell in CELLS)
PANELS = [
    ("Accuracy: validation (dots), sampled training steps (dotted)", "accuracy (%)", "linear"),
    ("Training loss (means over logging windows)", "each cell's own objective (log scale)", "log"),
    (
        "Output error signal at the true class\nsolid: samples classified right, dashed: wrong",
        r"mean $|\partial e/\partial z_y|$ (log scale)",
        "log",
    ),
]


def cell_color(cell: str) -> Any:
    """The cell's colour; a cell outside CELL_ORDER gets one of the three left over."""
    colors = matplotlib.colormaps["tab10"].colors
    known = CELL_ORDER.index(cell) if cell in CELL_ORDER else None
    index = known if known is not None else len(CELL_ORDER) + sum(map(ord, cell)) % 3
    return colors[index % len(colors)]


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
    scale = 100 if "acc" in tag else 1  # accuracies in percent
    with np.errstate(all="ignore"):  # a step where no seed has a value stays a gap
        mean, low, high = (f(values, axis=0) for f in (np.nanmean, np.nanmin, np.nanmax))
    ax.plot(steps, scale * mean, color=color, **line)
    if len(values) > 1:
        ax.fill_between(steps, scale * low, scale * high, color=color, alpha=0.18, linewidth=0)


def epoch_ends(groups: list[Group]) -> list[int]:
    """The steps at which epochs end, if every run shares them (else none)."""
    ends = {
        tuple(step for step, _ in run.scalars.get("epoch", [])) for g in groups for run in g.runs
    }
    return list(ends.pop()) if len(ends) == 1 else []


def png(fig: Figure) -> bytes:
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=80)
    return out.getvalue()


def shown_groups(groups: list[Group], choices: list[BestLr]) -> list[Group]:
    """The groups the curves show: with an lr sweep, each cell at its best lr only."""
    if not choices:
        return groups
    return [choice.best for choice in choices if choice.best is not None]


def curves_png(folder: Path, groups: list[Group], choices: list[BestLr]) -> bytes:
    shown = shown_groups(groups, choices)
    rows = list(dict.fromkeys(group.without("lr") for group in shown)) or [()]
    fig = Figure(figsize=(16, 1.2 + 4.2 * len(rows)))
    FigureCanvasAgg(fig)
    axes = np.atleast_2d(fig.subplots(len(rows), 3, squeeze=False))
    for row, context in zip(axes, rows, strict=True):
        beside = [group for group in shown if group.without("lr") == context]
        for group in beside:
            color = cell_color(group.cell)
            at_lr = f", lr {lr_text(group.context['lr'])}" if choices else ""
            label = f"{group.cell}{at_lr} (n={len(group.runs)})"
            plot_band(row[0], group, "val/acc", color, marker="o", markersize=4, label=label)
            plot_band(row[0], group, "diag/train_acc_sampled", color, linestyle=":", linewidth=1)
            plot_band(row[1], group, "train/loss", color)
            plot_band(row[2], group, "diag/error_signal/true_class_right", color)
            plot_band(row[2], group, "diag/error_signal/true_class_wrong", color, linestyle="--")
        where = context_text(context)
        for ax, (title, ylabel, yscale) in zip(row, PANELS, strict=True):
            # A title at a given height: placed automatically, it is moved clear of whatever
            # sits atop the panel (nothing here) by measuring the panel's decorations at every
            # draw, which took a third of drawing the figure.
            ax.set_title(f"{title}\n{where}" if where else title, y=1.0)
            ax.set(xlabel="updates (optimiser steps)", ylabel=ylabel, yscale=yscale)
            ax.grid(True, alpha=0.3)
            for step in epoch_ends(beside):
                ax.axvline(step, color="0.6", linestyle=":", linewidth=1)
        if beside:
            row[0].legend(fontsize=8, loc="lower right")
    which = "each cell at its best lr (on validation); " if choices else ""
    fig.suptitle(
        f"{folder.name}: {which}mean over seeds, band: min to max; dotted: end of an epoch"
    )
    fixed_margins(fig, len(rows))
    return png(fig)


def fixed_margins(fig: Figure, rows: int) -> None:
    """Margins in inches for the curves' rows of three panels, each under a title of up to
    three lines, the figure's title above all: ``tight_layout`` measures every label instead,
    which took a third of the report's wall time."""
    height = fig.get_figheight()
    title, panel_title, x_label = 0.45, 0.75, 0.55  # inches
    fig.subplots_adjust(
        left=0.05,
        right=0.99,
        wspace=0.22,
        top=1 - (title + panel_title) / height,
        bottom=x_label / height,
        # Between rows: a row's x label and the next row's panel title, over a panel's height.
        hspace=(x_label + panel_title) / (4.2 - x_label - panel_title),
    )


def lr_sensitivity_png(folder: Path, groups: list[Group], choices: list[BestLr]) -> bytes:
    """Val accuracy after epoch 1 against the lr, one line per cell, one panel per context;
    the chosen lr is ringed; an lr at which a seed diverged is not eligible: marked x, never
    joined by the line."""
    contexts = list(dict.fromkeys(choice.context for choice in choices))
    fig = Figure(figsize=(6.5 * len(contexts), 5.4))
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(1, len(contexts), squeeze=False)[0])
    for ax, context in zip(axes, contexts, strict=True):
        for choice in (c for c in choices if c.context == context):
            color = cell_color(choice.cell)
            line = sorted(
                (
                    g
                    for g in groups
                    if g.cell == choice.cell
                    and g.without("lr") == context
                    and g.values("epoch1_val_acc")
                ),
                key=lambda g: g.context["lr"],
            )
            # The line joins the eligible lrs only: an lr at which a seed diverged was ruled
            # out, and the mean of its surviving seeds would flatter it.
            eligible = [g for g in line if g.context["lr"] not in choice.ineligible]
            lrs = [g.context["lr"] for g in eligible]
            values = [100 * np.array(g.values("epoch1_val_acc")) for g in eligible]
            ax.plot(lrs, [v.mean() for v in values], color=color, marker="o", label=choice.cell)
            ax.fill_between(
                lrs, [v.min() for v in values], [v.max() for v in values], color=color, alpha=0.15
            )
            if choice.best is not None:
                best = 100 * choice.mean("epoch1_val_acc")
                ax.plot([choice.lr], [best], "o", ms=13, mfc="none", mec=color, mew=2)
            survivors = {g.context["lr"]: g for g in line}
            for lr in choice.ineligible:
                group = survivors.get(lr)
                y = 100 * group.mean("epoch1_val_acc") if group else 2
                ax.plot([lr], [y], "x", color=color, ms=9, mew=2)
        ax.axhline(100 * CHANCE, color="0.5", linestyle=":", linewidth=1)
        where = context_text(context)
        ax.set(
            xscale="log",
            ylim=(0, 100),
            xlabel="learning rate (log scale)",
            ylabel="val accuracy after epoch 1 (%)",
            title=where or "all runs",
        )
        ax.grid(True, alpha=0.3, which="both")
        ax.legend(fontsize=8, loc="lower left")
    fig.suptitle(
        f"{folder.name}: mean over seeds, band: min to max; ring: best lr on validation;\n"
        f"x: not eligible, a seed diverged (at the surviving seeds' mean, or at the bottom); "
        f"dotted: at chance below {100 * CHANCE:.0f}% (chance itself is 10%)"
    )
    fig.tight_layout()
    return png(fig)


DOSE = "output_init_scale"


def is_dose_sweep(choices: list[BestLr]) -> bool:
    return len({dict(choice.context).get(DOSE) for choice in choices}) > 1


def dose_png(folder: Path, choices: list[BestLr]) -> bytes:
    """Each cell's best-lr val accuracy against the output layer's saturation at step 0 (the
    measured fraction of saturated-and-wrong pairs), and against the dose s itself (identity
    outputs have no saturation), one line per cell and other setting."""
    fig = Figure(figsize=(13, 5.4))
    FigureCanvasAgg(fig)
    by_pairs, by_scale = fig.subplots(1, 2)
    # By value, the model's own init first: as text, s=10 would come before s=3.
    doses = sorted({dict(c.context).get(DOSE) for c in choices}, key=by_value)
    positions = {dose: index for index, dose in enumerate(doses)}
    lines: dict[tuple, list[BestLr]] = {}
    for choice in choices:
        if choice.best is not None:
            rest = tuple((k, v) for k, v in choice.context if k != DOSE)
            lines.setdefault((choice.cell, rest), []).append(choice)
    for (cell, rest), chosen in lines.items():
        color = cell_color(cell)
        label = ", ".join(filter(None, (cell, context_text(rest))))
        chosen.sort(key=lambda c: positions[dict(c.context).get(DOSE)])
        accuracy = [100 * c.mean(c.on) for c in chosen]
        x = [positions[dict(c.context).get(DOSE)] for c in chosen]
        by_scale.plot(x, accuracy, color=color, marker="o", label=label)
        pairs = [c.mean("step0_saturated_pairs") for c in chosen]
        measured = [(100 * p, a) for p, a in zip(pairs, accuracy, strict=True) if p is not None]
        if measured:
            xs, ys = zip(*sorted(measured), strict=True)
            by_pairs.plot(xs, ys, color=color, marker="o", label=label)
    when = choices[0].when
    by_pairs.set(
        xlabel="output pairs saturated and wrong at step 0 (%, fixed images, mean over seeds)",
        ylabel=f"val accuracy {when} at the best lr (%)",
        title="against the measured saturation",
        ylim=(0, 100),
    )
    by_scale.set_xticks(range(len(doses)), [f"s={d}" if d != "none" else "default" for d in doses])
    by_scale.set(
        xlabel="output layer's init: N(0, s²), or the model's own",
        ylabel=f"val accuracy {when} at the best lr (%)",
        title="against the dose s",
        ylim=(0, 100),
    )
    for ax in (by_pairs, by_scale):
        ax.axhline(100 * CHANCE, color="0.5", linestyle=":", linewidth=1)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
    fig.suptitle(
        f"{folder.name}: each cell at its best lr (on validation), mean over seeds; "
        f"dotted: at chance below {100 * CHANCE:.0f}% (chance itself is 10%)"
    )
    fig.tight_layout()
    return png(fig)
