"""The report of a run or a sweep, read from its event files and metrics.json files.

    python -m slowlearn.report logs/multiruns/ablation/<timestamp>

Writes into that folder, each file replaced atomically, and nothing else: summary.csv (a row
per run), report.md (the tables and the finding, stated from the numbers), curves.png, and
for a learning-rate sweep lr_sensitivity.png; and for a sweep the seed-aggregated TensorBoard
runs (``<group>/mean``) with their custom-scalars layout.

- ``runs``: reading runs and grouping them by their resolved settings;
- ``tables``: summary.csv, the group table, the best learning rate chosen on validation;
- ``findings``: the sentences, generated from the numbers;
- ``figures``: curves.png and lr_sensitivity.png;
- ``aggregate``: the seed-aggregated view inside TensorBoard.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from slowlearn.records import write_atomically
from slowlearn.report.aggregate import write_aggregates
from slowlearn.report.figures import curves_png, dose_png, is_dose_sweep, lr_sensitivity_png
from slowlearn.report.findings import finding, not_completed
from slowlearn.report.runs import WHY, Group, Run, group_runs, is_lr_sweep, read_runs
from slowlearn.report.tables import (
    WHY_DEFINITIONS,
    BestLr,
    best_lr_table,
    best_lrs,
    depth_table,
    groups_table,
    speed_table,
    summary_csv,
    why_table,
)

OUTPUTS = ("summary.csv", "report.md", "curves.png")
LR_SENSITIVITY = "lr_sensitivity.png"
DOSE_RESPONSE = "dose_response.png"


def report_md(
    folder: Path, runs: list[Run], groups: list[Group], choices: list[BestLr], findings: list[str]
) -> str:
    completed = sum(run.completed for run in runs)
    lines = [
        f"# Report: {folder.name}",
        "",
        f"`{folder}`: {len(runs)} run{'s' * (len(runs) != 1)}, {completed} completed. "
        "Values are mean ± std across seeds (per run: `summary.csv`). The error signal is "
        "the mean |de/dz_y| at the true class's output pre-activation.",
        "",
    ]
    group_table = groups_table(groups) if groups else ["No completed runs."]
    depth = any("depth" in group.context for group in groups)
    if choices:
        lines += [
            "## Each cell at its best learning rate",
            "",
            f"The lr with the best mean val accuracy {choices[0].when}, among the lrs at which "
            "every seed completed; chosen on validation only, and the test accuracy reported "
            "at that lr.",
            "",
            *best_lr_table(choices),
            "",
        ]
    if depth:
        tuned = [choice.best for choice in choices if choice.best] if choices else groups
        at_lr = ", each cell at its best lr" if choices else ""
        lines += [
            f"## Final val accuracy by depth{at_lr}",
            "",
            "Mean over seeds after the last epoch (chance: 10%; below 15% counts as at chance).",
            "",
            *depth_table(tuned),
            "",
        ]
    if choices:
        lines += [
            "<details><summary>Every cell at every learning rate</summary>",
            "",
            *group_table,
            "",
            "</details>",
        ]
    else:
        lines += ["## Results by group", "", *group_table]
    lines += ["", "## Findings", "", *(f"- {finding}" for finding in findings)]
    lines += why_section(groups, choices)
    lines += ["", "## Runs that did not complete", ""]
    lines += [*not_completed(runs), "", "## Curves", ""]
    if choices:
        lines += [f"![val accuracy against the learning rate]({LR_SENSITIVITY})", ""]
    if choices and is_dose_sweep(choices):
        lines += [f"![best-lr val accuracy against the output's saturation]({DOSE_RESPONSE})", ""]
    lines += ["![val accuracy, train loss and output error signal vs step](curves.png)", ""]
    return "\n".join(lines)


def why_section(groups: list[Group], choices: list[BestLr]) -> list[str]:
    """What the runs measured of the mechanism: each cell's saturation, output factor and
    error signals, and each layer's speed of learning at step 0; each cell at its chosen lr
    where the sweep tunes the lr."""
    shown = [choice.best for choice in choices if choice.best] if choices else groups
    measured = [g for g in shown if any(g.values(f"step0_{name}") for name in WHY)]
    if not measured:
        return []
    at_lr = ", each cell at its chosen lr" if choices else ""
    lines = ["", f"## Why, measured{at_lr}", "", *WHY_DEFINITIONS, "", *why_table(measured)]
    speeds = speed_table(measured)
    if speeds:
        lines += [
            "",
            "### Speed of learning per layer at step 0",
            "",
            "‖∂C/∂b‖ of each layer's biases over the fixed images at the initial weights "
            "(Nielsen, ch. 5), mean over seeds, and the ratio of each layer's to the next one "
            "up (below 1: the lower layer starts slower).",
            "",
            *speeds,
        ]
    return lines


@dataclass
class Analysis:
    """What a report says about one run or sweep, before anything is written."""

    folder: Path
    runs: list[Run]
    groups: list[Group]
    choices: list[BestLr]  # each cell's best lr, where the sweep tunes the lr
    findings: list[str]


def analyse(folder: Path) -> Analysis:
    runs = read_runs(folder)
    groups = group_runs(runs)
    choices = best_lrs(runs, groups) if is_lr_sweep(groups) else []
    return Analysis(folder, runs, groups, choices, finding(groups, choices))


def write_report(analysis: Analysis) -> None:
    """The report's files, each replaced atomically, in the analysed folder."""
    folder, runs, groups, choices = (
        analysis.folder,
        analysis.runs,
        analysis.groups,
        analysis.choices,
    )
    write_atomically(folder / "summary.csv", summary_csv(runs, groups).encode())
    text = report_md(folder, runs, groups, choices, analysis.findings)
    write_atomically(folder / "report.md", text.encode())
    write_atomically(folder / "curves.png", curves_png(folder, groups, choices))
    if choices:
        write_atomically(folder / LR_SENSITIVITY, lr_sensitivity_png(folder, groups, choices))
    if choices and is_dose_sweep(choices):
        write_atomically(folder / DOSE_RESPONSE, dose_png(folder, choices))
    if runs[0].folder != folder:  # a sweep: its seed-aggregated TensorBoard runs
        write_aggregates(folder, groups)


def make_report(folder: Path) -> list[str]:
    """Write the report's files into ``folder``; return the finding."""
    analysis = analyse(folder)
    write_report(analysis)
    return analysis.findings
