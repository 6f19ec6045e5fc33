"""The findings, generated from the numbers: every sentence states what the data says, also
where the effect is small, reversed or absent.

- Every sweep: each slow-learner candidate (sigmoid+mse, softmax+mse) against the
  cross-entropy cells beside it (same other settings), after epoch 1, seed by seed.
- A learning-rate sweep: the same comparison with every cell at its own best lr, chosen on
  validation, and a warning where that lr is at the edge of the grid.
- A depth sweep: at each depth and init, which objectives leave chance (val accuracy 15%).
- sigmoid+nll is reported on its own, and identity+mse as the control (no sigma' factor).
"""

from __future__ import annotations

from itertools import groupby

from slowlearn.report.runs import CHANCE, CONTROL, CROSS_ENTROPY, Group, Run
from slowlearn.report.tables import BestLr, lr_text, percent

# Below this many accuracy points in every seed, a gap is reported as no clear difference.
SMALL_GAP = 2.0
SLOW_LEARNERS = ("sigmoid+mse", "softmax+mse")  # MSE on outputs with a sigma'-like factor


def and_join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def capitalised(sentence: str) -> str:
    return sentence[0].upper() + sentence[1:]


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
    return capitalised(sentence)


def mean_gap(mse: Group, others: list[Group]) -> float:
    """Points by which the best cross-entropy cell leads mse after epoch 1 (seed means)."""
    best = max(group.mean("epoch1_val_acc") for group in others)
    return 100 * (best - mse.mean("epoch1_val_acc"))


def side_notes(lead: str, beside: list[Group], key: str = "epoch1_val_acc") -> list[str]:
    """sigmoid+nll on its own, and the control, with the accuracy ``key``."""
    when = "after epoch 1" if key == "epoch1_val_acc" else "at the end"
    notes = []
    for group in beside:
        if group.cell == "sigmoid+nll":
            notes.append(
                f"{lead}sigmoid+nll reaches {percent(group.mean(key))} {when}: -log o_y on "
                "independent sigmoids only pushes the labelled output up and never the wrong "
                "ones down."
            )
        elif group.cell == CONTROL:
            notes.append(
                f"{lead}the control identity+mse (linear outputs: de/dz = o - y, no sigma' "
                f"factor, but no probabilities either) reaches {percent(group.mean(key))} {when}."
            )
    return [capitalised(note) for note in notes]


def epoch1_findings(groups: list[Group]) -> list[str]:
    """Each slow-learner candidate against the cross-entropy cells with the same other
    settings (e.g. the same optimiser), after epoch 1."""
    measured = [group for group in groups if group.values("epoch1_val_acc")]
    paragraphs, gaps = [], {}
    for context in dict.fromkeys(group.context_label for group in measured):
        beside = [group for group in measured if group.context_label == context]
        others = [group for group in beside if group.cell in CROSS_ENTROPY]
        lead = f"with {context}, " if context else ""
        for mse in (group for group in beside if group.cell in SLOW_LEARNERS and others):
            paragraphs.append(cell_finding(lead, mse, others))
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


def lr_findings(choices: list[BestLr]) -> list[str]:
    """Every cell at its own best lr (on validation): does tuning MSE's lr close the gap?"""
    paragraphs = []
    for context, chosen in groupby(choices, key=lambda choice: choice.context):
        chosen = [c for c in chosen if c.best is not None]
        label = ", ".join(f"{key}={value}" for key, value in context)
        lead = f"with {label}, " if label else ""
        cross = [c for c in chosen if c.cell in CROSS_ENTROPY]
        best_ce = max(cross, key=lambda c: c.mean("epoch1_val_acc"), default=None)
        for mse in (c for c in chosen if c.cell in SLOW_LEARNERS and best_ce):
            paragraphs.append(capitalised(lead + tuned_comparison(mse, best_ce)))
        for choice in chosen:
            if choice.cell == CONTROL:
                paragraphs.append(
                    capitalised(
                        f"{lead}the control identity+mse, at its best lr {lr_text(choice.lr)}, "
                        f"reaches {percent(choice.mean('epoch1_val_acc'))} after epoch 1."
                    )
                )
    return paragraphs


def tuned_comparison(mse: BestLr, ce: BestLr) -> str:
    gap = 100 * (ce.mean("epoch1_val_acc") - mse.mean("epoch1_val_acc"))
    ours, theirs = percent(mse.mean("epoch1_val_acc")), percent(ce.mean("epoch1_val_acc"))
    sentence = (
        f"{mse.cell} at its best lr {lr_text(mse.lr)} (chosen on validation among "
        f"{len(mse.grid)}) reaches {ours} val accuracy after epoch 1, against {theirs} for "
        f"the best cross entropy, {ce.cell} at lr {lr_text(ce.lr)}"
    )
    if abs(gap) < SMALL_GAP:
        sentence += f": within {SMALL_GAP:.0f} points, so tuning its lr closes the gap"
    elif gap > 0:
        ratio = mse.lr / ce.lr
        sentence += (
            f": no lr in the grid brings it within {gap:.1f} points; its best lr is "
            f"{ratio:.3g}x cross entropy's"
        )
    else:
        sentence += f": tuned, it is ahead by {-gap:.1f} points"
    test = (mse.mean("test_acc"), ce.mean("test_acc"))
    if None not in test:
        sentence += f" (test accuracy at those lrs: {percent(test[0])} vs {percent(test[1])})"
    if mse.at_edge:
        edge = "largest" if mse.lr == max(mse.grid) else "smallest"
        sentence += (
            f". Its best lr is the grid's {edge}: a value beyond the grid may do better, so "
            "the gap is an upper bound"
        )
    return sentence + "."


def depth_findings(groups: list[Group]) -> list[str]:
    """At each depth (and other setting), which objectives leave chance by the end."""
    paragraphs = []
    key = "final_val_acc"
    for context in dict.fromkeys(group.context_label for group in groups):
        beside = [g for g in groups if g.context_label == context and g.values(key)]
        if not beside:
            continue
        epochs = beside[0].runs[0].settings["max_epochs"]
        lead = f"with {context}, "
        left = [g for g in beside if g.mean(key) >= CHANCE]
        if not left:
            best = max(g.mean(key) for g in beside)
            paragraphs.append(
                capitalised(
                    f"{lead}no objective leaves chance in {epochs} epochs (val accuracy below "
                    f"{percent(CHANCE)}; the best is {percent(best)}): the hidden layers' "
                    "gradients vanish, which no output objective can cure."
                )
            )
            continue
        cross = [g for g in beside if g.cell in CROSS_ENTROPY]
        parts = []
        if cross:
            values = sorted(g.mean(key) for g in cross)
            span = percent(values[0]) + (f"–{percent(values[-1])}" if len(values) > 1 else "")
            parts.append(f"the cross-entropy cells reach {span}")
        for group in (g for g in beside if g.cell in SLOW_LEARNERS):
            state = "stays at chance" if group.mean(key) < CHANCE else "reaches"
            parts.append(f"{group.cell} {state} {percent(group.mean(key))}")
        paragraphs.append(
            capitalised(f"{lead}after {epochs} epochs {and_join(parts)} (final val accuracy).")
        )
        paragraphs += side_notes(lead, beside, key)
    return paragraphs


def finding(groups: list[Group], choices: list[BestLr] | None = None) -> list[str]:
    """The report's finding: learning-rate sweeps compare tuned cells, depth sweeps say
    which objectives leave chance, every other sweep compares the cells after epoch 1."""
    if choices:
        paragraphs = lr_findings(choices)
    elif any("depth" in group.context for group in groups):
        paragraphs = depth_findings(groups)
    else:
        paragraphs = epoch1_findings(groups)
    if paragraphs:
        return paragraphs
    measured = [group for group in groups if group.values("epoch1_val_acc")]
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
        f"- `{run.name}` ({run.cell}, seed {run.settings['seed']}): **{run.status}**"
        + (f": {' '.join(run.error.split())}" if run.error else "")  # one line per run
        for run in failed
    ]
