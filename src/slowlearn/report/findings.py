"""The findings, generated from the numbers: every sentence states what the data says, also
where the effect is small, reversed or absent, and a sentence that names a cause carries the
measurement behind it (the fixed images' saturation, output factor, error signal and per-layer
speeds, ``diag/fixed/``).

- Every sweep: each slow learner (sigmoid+mse, softmax+mse) against the cross-entropy cells
  beside it (same other settings), after epoch 1, seed by seed, and why, as measured.
- A learning-rate sweep: the same with every cell at its own best lr, chosen on validation,
  against the best of the cross-entropy cells present and against the cure with the same
  output activation; a warning where a chosen lr is at the edge of the grid.
- A depth sweep: at each depth and init, which objectives leave chance, and how fast each
  layer starts to learn.
- sigmoid+nll is reported on its own, and identity+mse as the control (no sigma' factor).
"""

from __future__ import annotations

from slowlearn.cells import CROSS_ENTROPY, SLOW_LEARNERS
from slowlearn.report.depth import depth_findings, edge_notes
from slowlearn.report.evidence import (
    ACCURACY,
    and_join,
    capitalised,
    cure_beside,
    gap_verdict,
    seeds_note,
    side_notes,
    why_sentence,
)
from slowlearn.report.runs import Group, Run
from slowlearn.report.tables import BestLr, percent
from slowlearn.report.tuned import lr_findings

# ------------------------------------------------------------------ one learning rate


def cell_finding(lead: str, mse: Group, others: list[Group]) -> str:
    """The epoch-1 comparison of one mse group with the cross-entropy groups beside it."""
    theirs = and_join([f"{percent(g.mean(ACCURACY))} for {g.cell}" for g in others])
    sentence = (
        f"{lead}after epoch 1, {mse.cell} reaches {percent(mse.mean(ACCURACY))} "
        f"val accuracy vs {theirs} ({seeds_note([mse, *others])}); {gap_verdict(mse, others)}."
    )
    signals = [group.mean("epoch1_error_signal") for group in [mse, *others]]
    if None not in signals:
        listed = and_join(
            [f"{s:.3g} for {g.cell}" for s, g in zip(signals[1:], others, strict=True)]
        )
        sentence += f" Its mean output error signal in epoch 1 is {signals[0]:.3g}, vs {listed}."
    return capitalised(sentence)


def mean_gap(mse: Group, others: list[Group]) -> float:
    """Points by which the best cross-entropy cell leads mse after epoch 1 (seed means)."""
    best = max(group.mean(ACCURACY) for group in others)
    return 100 * (best - mse.mean(ACCURACY))


def epoch1_findings(groups: list[Group]) -> list[str]:
    """Each slow learner against the cross-entropy cells with the same other settings (e.g.
    the same optimiser), after epoch 1, and why."""
    measured = [group for group in groups if group.values(ACCURACY)]
    paragraphs, gaps = [], {}
    for context in dict.fromkeys(group.context_label for group in measured):
        beside = [group for group in measured if group.context_label == context]
        others = [group for group in beside if group.cell in CROSS_ENTROPY]
        lead = f"with {context}, " if context else ""
        for mse in (group for group in beside if group.cell in SLOW_LEARNERS and others):
            paragraphs.append(cell_finding(lead, mse, others))
            why = why_sentence(mse, cure_beside(mse.cell, beside))
            if why:
                paragraphs.append(capitalised(lead + why))
            gaps.setdefault(mse.cell, []).append((context, mean_gap(mse, others)))
        paragraphs += side_notes(lead, beside)
    for cell, by_context in gaps.items():
        if len(by_context) > 1:  # e.g. SGD against Adam: does the optimiser close the gap?
            listed = and_join([f"{gap:.1f} points with {context}" for context, gap in by_context])
            paragraphs.append(
                f"After epoch 1 the best cross-entropy cell leads {cell} by {listed} "
                "(differences of seed means; negative: mse ahead)."
            )
    return paragraphs


def finding(groups: list[Group], choices: list[BestLr] | None = None) -> list[str]:
    """The report's finding: learning-rate sweeps compare tuned cells, depth sweeps say
    which objectives leave chance, every other sweep compares the cells after epoch 1."""
    depth = any("depth" in group.context for group in groups)
    if choices and depth:
        tuned = [choice.best for choice in choices if choice.best is not None]
        paragraphs = depth_findings(tuned) + edge_notes(choices)
    elif choices:
        paragraphs = lr_findings(choices)
    elif depth:
        paragraphs = depth_findings(groups)
    else:
        paragraphs = epoch1_findings(groups)
    if paragraphs:
        return paragraphs
    measured = [group for group in groups if group.values(ACCURACY)]
    listed = [f"{g.label} {percent(g.mean(ACCURACY))}" for g in measured]
    return [
        "There is no mse cell and cross-entropy cell with the same settings to compare. "
        "Val accuracy after epoch 1: " + (and_join(listed) if listed else "none measured") + "."
    ]


def not_completed(runs: list[Run]) -> list[str]:
    failed = [run for run in runs if not run.completed]
    if not failed:
        return [f"All {len(runs)} runs completed."]
    return [
        f"- `{run.name}` ({run.cell}, seed {run.settings['seed']}): **{run.status}**"
        + (f": {' '.join(run.error.split())}" if run.error else "")  # one line per run
        for run in failed
    ]
