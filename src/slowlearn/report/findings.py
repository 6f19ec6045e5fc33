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

from slowlearn.report.runs import CHANCE, CONTROL, CROSS_ENTROPY, Group, Run, context_text
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
    shared = {seed for group in others for seed in group.by_seed("epoch1_val_acc")}
    shared &= set(mse.by_seed("epoch1_val_acc"))
    every = "in every seed" if len(shared) > 1 else "in its one seed"
    if len(shared) < len(mse.runs):
        every += " that both ran"
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
        label = context_text(context)
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


def lr_relation(mse: BestLr, ce: BestLr) -> str:
    """How the tuned MSE lr compares with cross entropy's: the sceptic's "give it more"."""
    ratio = mse.lr / ce.lr
    if ratio == 1:
        return "at the same lr as cross entropy"
    return f"at an lr {ratio:.3g}x " + ("as large" if ratio > 1 else "cross entropy's")


def tuned_comparison(mse: BestLr, ce: BestLr) -> str:
    gap = 100 * (ce.mean("epoch1_val_acc") - mse.mean("epoch1_val_acc"))
    ours, theirs = percent(mse.mean("epoch1_val_acc")), percent(ce.mean("epoch1_val_acc"))
    sentence = (
        f"{mse.cell} at its best lr {lr_text(mse.lr)} (chosen on validation among "
        f"{len(mse.grid) - len(mse.ineligible)} eligible) reaches {ours} val accuracy after "
        f"epoch 1, against {theirs} for "
        f"the best cross entropy, {ce.cell} at lr {lr_text(ce.lr)}"
    )
    if abs(gap) < SMALL_GAP:
        sentence += f": within {SMALL_GAP:.0f} points, so tuning its lr closes the gap"
    elif gap > 0:
        sentence += f": no lr in the grid brings it within {gap:.1f} points, {lr_relation(mse, ce)}"
    else:
        sentence += f": tuned, it is ahead by {-gap:.1f} points"
    test = (mse.mean("test_acc"), ce.mean("test_acc"))
    if None not in test:
        sentence += f" (test accuracy at those lrs: {percent(test[0])} vs {percent(test[1])})"
    for choice, whose in ((mse, "Its"), (ce, f"{ce.cell}'s")):
        if choice.at_edge:
            edge = "largest" if choice.lr == max(choice.grid) else "smallest"
            sentence += (
                f". {whose} best lr is the grid's {edge}: a value beyond the grid may do better"
            )
    return sentence + "."


def span(values: list[float]) -> str:
    """A range of accuracies, or one value when they agree to the shown precision."""
    low, high = percent(min(values)), percent(max(values))
    return low if low == high else f"{low}–{high}"


def depth_findings(groups: list[Group]) -> list[str]:
    """At each depth (and other setting), which objectives leave chance by the end; then, per
    other setting, the depths at which each kind of objective does."""
    paragraphs = []
    key = "final_val_acc"
    left: dict[tuple, dict[str, dict[int, None]]] = {}
    for context in dict.fromkeys(group.context_label for group in groups):
        beside = [g for g in groups if g.context_label == context and g.values(key)]
        if not beside:
            continue
        epochs, depth = beside[0].runs[0].settings["max_epochs"], beside[0].context["depth"]
        epochs = f"{epochs} epoch{'s' * (epochs != 1)}"
        kinds = left.setdefault(beside[0].without("depth"), {})
        for group in beside:
            if group.mean(key) >= CHANCE:
                kind = "cross entropy" if group.cell in CROSS_ENTROPY else group.cell
                kinds.setdefault(kind, {})[depth] = None  # each depth once, in order
        lead = f"with {context}, "
        if all(g.mean(key) < CHANCE for g in beside):
            best = max(g.mean(key) for g in beside)
            paragraphs.append(
                capitalised(
                    f"{lead}no objective leaves chance in {epochs} (val accuracy below "
                    f"{percent(CHANCE)}; the best is {percent(best)}): the hidden layers' "
                    "gradients vanish, which no output objective can cure."
                )
            )
            continue
        parts = []
        cross = [g.mean(key) for g in beside if g.cell in CROSS_ENTROPY]
        if cross:
            parts.append(f"the cross-entropy cells reach {span(cross)}")
        for group in (g for g in beside if g.cell in (*SLOW_LEARNERS, CONTROL, "sigmoid+nll")):
            at_chance = group.mean(key) < CHANCE
            name = f"the control {CONTROL}" if group.cell == CONTROL else group.cell
            value = percent(group.mean(key))
            parts.append(
                f"{name} stays at chance ({value})" if at_chance else f"{name} reaches {value}"
            )
        paragraphs.append(
            capitalised(f"{lead}after {epochs} (final val accuracy) {and_join(parts)}.")
        )
    for context, kinds in left.items():
        label = context_text(context)
        listed = [
            f"{kind} at depth{'s' * (len(depths) > 1)} {and_join([str(d) for d in depths])}"
            for kind, depths in kinds.items()
        ]
        lead = f"with {label}, " if label else ""
        leave = "; ".join(listed) if listed else "none at any depth"
        paragraphs.append(capitalised(f"{lead}the objectives that leave chance: {leave}."))
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
