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

import statistics
from itertools import groupby

from slowlearn.cells import CONTROL_CELL as CONTROL
from slowlearn.cells import CROSS_ENTROPY, SAME_ACTIVATION_CURE, SLOW_LEARNERS
from slowlearn.report.runs import (
    CHANCE,
    CHANCE_TEXT,
    TARGETS,
    Group,
    Run,
    context_text,
)
from slowlearn.report.tables import BestLr, layer_order, lr_text, mean_speeds, percent

# Within this many accuracy points in every seed, and neither cell at chance: no clear gap.
SMALL_GAP = 2.0
# An output factor below this is far from eq. 5.5's 1: the outputs' slope shrinks the step.
SMALL_FACTOR = 0.5
ACCURACY = "epoch1_val_acc"


def and_join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def capitalised(sentence: str) -> str:
    return sentence[0].upper() + sentence[1:]


def seeds_note(groups: list[Group]) -> str:
    counts = [len(group.values(ACCURACY)) for group in groups]
    if set(counts) == {1}:
        return "one seed"
    if len(set(counts)) == 1:
        return f"mean of {counts[0]} seeds"
    return f"means of {and_join([str(n) for n in counts])} seeds"


# ------------------------------------------------------------------ the one gap rule


def per_seed_gaps(mse: Group, others: list[Group], key: str = ACCURACY) -> list[float]:
    """Accuracy points by which a cross-entropy group leads mse, for every seed both ran."""
    ours = mse.by_seed(key)
    return [
        100 * (theirs[seed] - ours[seed])
        for theirs in (group.by_seed(key) for group in others)
        for seed in ours.keys() & theirs.keys()
    ]


def at_chance(groups: list[Group], key: str = ACCURACY) -> list[str]:
    return [g.cell for g in groups if (g.mean(key) or 0) < CHANCE]


def gap_verdict(
    mse: Group, others: list[Group], no_gap: str = "no clear gap", key: str = ACCURACY
) -> str:
    """How mse compares with ``others`` seed by seed: one rule for every comparison. A gap is
    "none" only within SMALL_GAP points in every seed and with no cell at chance."""
    gaps = per_seed_gaps(mse, others, key)
    them = others[0].cell if len(others) == 1 else "both" if len(others) == 2 else "each of them"
    shared = {seed for group in others for seed in group.by_seed(key)}
    shared &= set(mse.by_seed(key))
    every = "in every seed" if len(shared) > 1 else "in its one seed"
    if len(shared) < len(mse.runs):
        every += " that both ran"
    if not gaps:
        return "no seed ran in both, so there is no per-seed comparison"
    if max(abs(gap) for gap in gaps) < SMALL_GAP:
        stuck = at_chance([mse, *others], key)
        if stuck:
            verb = "is" if len(stuck) == 1 else "are"
            return (
                f"{every} it is within {SMALL_GAP:.0f} points of {them}, but "
                f"{and_join(stuck)} {verb} at chance ({CHANCE_TEXT}), so neither learns"
            )
        return f"{every} it is within {SMALL_GAP:.0f} points of {them}: {no_gap}"
    if min(gaps) > 0:
        return f"{every} it trails {them} by at least {min(gaps):.1f} points"
    if max(gaps) < 0:
        return f"{every} it is ahead of {them} by at least {-max(gaps):.1f} points"
    return (
        f"seed by seed its lead over {them} ranges from {-max(gaps):+.1f} to "
        f"{-min(gaps):+.1f} points, so it neither trails nor leads consistently"
    )


# ------------------------------------------------------------------ why, as measured


def why_sentence(mse: Group, cure: Group | None, where: str = "") -> str | None:
    """The slow learner's saturation and output factor at step 0, and its step on the images
    it still gets wrong after epoch 1, against the cure's, from the fixed images."""
    pairs, factor = mse.mean("step0_saturated_pairs"), mse.mean("step0_output_factor")
    if pairs is None or factor is None:
        return None
    sentence = (
        f"why ({where}over the fixed 1,000 training images): at step 0, {percent(pairs)} of "
        f"{mse.cell}'s (image, output) pairs are saturated and wrong (|o − y| > 0.9) and its "
        f"output factor ‖δ_out‖/‖o − y‖ is {factor:.3g}"
    )
    theirs = cure.mean("step0_output_factor") if cure else None
    if cure and theirs is not None:
        sentence += f", against {theirs:.3g} for {cure.cell}"
    wrong = mse.mean("epoch1_signal_wrong")
    cure_wrong = cure.mean("epoch1_signal_wrong") if cure else None
    if cure and wrong is not None and cure_wrong is not None:
        sentence += (
            f"; after epoch 1 its mean error signal |∂e/∂z_y| on the images it still "
            f"misclassifies is {wrong:.3g}, against {cure_wrong:.3g} for {cure.cell}"
        )
        after = mse.mean("epoch1_output_factor")
        if wrong < cure_wrong and after is not None and after < SMALL_FACTOR:
            sentence += (
                f": its step there is {wrong / cure_wrong:.2g}x the cure's, with its output "
                f"factor at {after:.3g} after epoch 1 (eq. 5.5's σ′ factor)"
            )
    return sentence + "."


def cure_beside(mse_cell: str, groups: list[Group]) -> Group | None:
    cure = SAME_ACTIVATION_CURE.get(mse_cell)
    return next((g for g in groups if g.cell == cure), None)


def side_notes(lead: str, beside: list[Group], key: str = ACCURACY) -> list[str]:
    """sigmoid+nll on its own, and the control, with the accuracy ``key``."""
    when = "after epoch 1" if key == ACCURACY else "at the end"
    notes = []
    for group in beside:
        if group.cell == "sigmoid+nll":
            note = (
                f"{lead}sigmoid+nll reaches {percent(group.mean(key))} {when}: −log o_y on "
                "independent sigmoids has no gradient at the other outputs"
            )
            pairs = group.mean("epoch1_saturated_pairs")
            if pairs is not None:
                note += (
                    f", and after epoch 1 {percent(pairs)} of its (image, output) pairs are "
                    "saturated and wrong"
                )
            notes.append(note + ".")
        elif group.cell == CONTROL:
            note = (
                f"{lead}the control identity+mse (linear outputs: de/dz = o − y, no σ′ "
                f"factor, but no probabilities either) reaches {percent(group.mean(key))} {when}"
            )
            factor = group.mean("step0_output_factor")
            if factor is not None:
                note += f"; its measured output factor is {factor:.3g}"
            notes.append(note + ".")
    return [capitalised(note) for note in notes]


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


# ------------------------------------------------------------------ each at its best lr


def lr_findings(choices: list[BestLr]) -> list[str]:
    """Every cell at its own best lr (on validation): does tuning MSE's lr close the gap?
    Then, where the sweep has several contexts (inits, optimizers, doses), the tuned gaps side
    by side."""
    paragraphs = []
    gaps: dict[str, list[str]] = {}
    for context, chosen in groupby(choices, key=lambda choice: choice.context):
        chosen = [c for c in chosen if c.best is not None]
        label = context_text(context)
        lead = f"with {label}, " if label else ""
        cross = [c for c in chosen if c.cell in CROSS_ENTROPY]
        best_ce = max(cross, key=lambda c: c.mean(c.on), default=None)
        for mse in (c for c in chosen if c.cell in SLOW_LEARNERS and best_ce):
            cure = next((c for c in chosen if c.cell == SAME_ACTIVATION_CURE[mse.cell]), None)
            paragraphs.append(capitalised(lead + tuned_comparison(mse, best_ce, cure, cross)))
            if mse.best.runs[0].settings["max_epochs"] > 1:
                paragraphs.append(capitalised(lead + slow_or_worse(mse, cure or best_ce)))
            why = why_sentence(mse.best, cure.best if cure else None, "at those lrs, ")
            if why:
                paragraphs.append(capitalised(lead + why))
            gap = 100 * (best_ce.mean(best_ce.on) - mse.mean(mse.on))
            pairs = mse.mean("step0_saturated_pairs")
            dose = "" if pairs is None else f" ({percent(pairs)} of its pairs saturated at step 0)"
            gaps.setdefault(mse.cell, []).append(
                f"{gap:.1f} points with {label or 'all runs'}{dose}"
            )
        for choice in chosen:
            if choice.cell == CONTROL:
                paragraphs.append(
                    capitalised(
                        f"{lead}the control identity+mse, at its best lr {lr_text(choice.lr)}, "
                        f"reaches {percent(choice.mean(choice.on))} {choice.when}."
                    )
                )
    for cell, listed in gaps.items():
        if len(listed) > 1:
            paragraphs.append(
                f"Each cell at its own best lr, the best cross-entropy cell present leads {cell} "
                f"by {and_join(listed)} (differences of seed means; negative: mse ahead)."
            )
    return paragraphs


def lr_relation(mse: BestLr, ce: BestLr) -> str:
    """How the tuned MSE lr compares with cross entropy's: the sceptic's "give it more"."""
    ratio = mse.lr / ce.lr
    if ratio == 1:
        return f"at the same lr as {ce.cell}"
    return f"at an lr {ratio:.3g}x {ce.cell}'s"


def tuned_comparison(mse: BestLr, ce: BestLr, cure: BestLr | None, cross: list[BestLr]) -> str:
    """mse at its best lr against the best cross entropy present and the same-activation
    cure, each at its own best lr, seed by seed."""
    on = mse.on
    ours, theirs = percent(mse.mean(on)), percent(ce.mean(on))
    present = len(cross)
    which = (
        f"the best of the {present} cross-entropy cells present (the highest of their means, "
        "each at its own best lr: a choice that favours cross entropy)"
        if present > 1
        else "the one cross-entropy cell present"
    )
    closes = "tuning its lr closes the gap"
    sentence = (
        f"{mse.cell} at its best lr {lr_text(mse.lr)} (chosen on validation among "
        f"{len(mse.grid) - len(mse.ineligible)} eligible) reaches {ours} val accuracy "
        f"{mse.when}, against {theirs} for {which}, {ce.cell} at lr {lr_text(ce.lr)}: "
        f"{gap_verdict(mse.best, [ce.best], closes, on)}, {lr_relation(mse, ce)}"
    )
    if cure is ce:
        sentence += f"; {ce.cell} is also the cure with the same output activation"
    elif cure is not None:
        sentence += (
            f"; against the cure with the same output activation, {cure.cell} at lr "
            f"{lr_text(cure.lr)} ({percent(cure.mean(on))}), "
            f"{gap_verdict(mse.best, [cure.best], closes, on)}"
        )
    test = (mse.mean("test_acc"), ce.mean("test_acc"))
    if None not in test:
        sentence += (
            f" (test accuracy at those lrs: {percent(test[0])} vs {percent(test[1])} for {ce.cell})"
        )
    named = [mse, ce] + ([cure] if cure is not None and cure is not ce else [])
    for choice in named:
        if choice.at_edge:
            whose = "Its" if choice is mse else f"{choice.cell}'s"
            edge = "largest" if choice.lr == max(choice.grid) else "smallest"
            sentence += (
                f". {whose} best lr is the grid's {edge}: a value beyond the grid may do better"
            )
    return sentence + "."


def epoch_key(target: float) -> str:
    return f"epoch_to_{round(100 * target)}_val_acc"


def first_epochs(choice: BestLr) -> str:
    """The epoch at which each target val accuracy is first reached, mean over the seeds that
    reach it."""
    epochs, runs = choice.best.runs[0].settings["max_epochs"], len(choice.best.runs)
    parts = []
    for target in TARGETS:
        reached = choice.best.values(epoch_key(target))
        if not reached:
            parts.append(f"{percent(target)} never in {epochs} epochs")
            continue
        part = f"{percent(target)} after {statistics.fmean(reached):.3g}"
        parts.append(part if len(reached) == runs else f"{part} ({len(reached)}/{runs} seeds)")
    return ", ".join(parts)


def slower(mse: BestLr, ce: BestLr) -> bool:
    """Whether mse reaches some target later than ce (or never, where ce does)."""
    for target in TARGETS:
        ours, theirs = mse.best.mean(epoch_key(target)), ce.best.mean(epoch_key(target))
        if theirs is not None and (ours is None or ours > theirs):
            return True
    return False


def slow_or_worse(mse: BestLr, ce: BestLr) -> str:
    """A long sweep's answer: does mse only learn slower, or does it also end worse?"""
    verdict = gap_verdict(mse.best, [ce.best], "no clear gap", "test_acc")
    gaps = per_seed_gaps(mse.best, [ce.best], "test_acc")
    worse = bool(gaps) and min(gaps) >= SMALL_GAP
    answer = (
        ("it learns slower and ends worse" if worse else "it learns slower but ends no worse")
        if slower(mse, ce)
        else ("it learns no slower but ends worse" if worse else "it learns no slower")
    )
    return (
        f"first reaching each val accuracy (epochs, mean over seeds): {mse.cell} at lr "
        f"{lr_text(mse.lr)} {first_epochs(mse)}; {ce.cell} at lr {lr_text(ce.lr)} "
        f"{first_epochs(ce)}. Final test accuracy {percent(mse.mean('test_acc'))} vs "
        f"{percent(ce.mean('test_acc'))}: {verdict} (test, at the lrs chosen on validation), "
        f"so {answer} (ends worse: by {SMALL_GAP:.0f} points or more in every seed)."
    )


# ------------------------------------------------------------------ depth


def span(values: list[float]) -> str:
    """A range of accuracies, or one value when they agree to the shown precision."""
    low, high = percent(min(values)), percent(max(values))
    return low if low == high else f"{low}–{high}"


def times(value: float) -> str:
    return f"{value:,.0f}x" if value >= 100 else f"{value:.3g}x"


def speed_sentence(beside: list[Group]) -> str | None:
    """How much slower the first hidden layer starts than the output layer (Nielsen's speed
    of learning ||dC/db|| over the fixed images at step 0), for each objective; "shrinks at
    every layer" only where every adjacent ratio of every objective is below 1."""
    speeds = {g.cell: mean_speeds(g) for g in beside}
    speeds = {cell: s for cell, s in speeds.items() if len(s) > 1 and s.get("output")}
    if not speeds:
        return None
    ratios = {cell: s[layer_order(list(s))[0]] / s["output"] for cell, s in speeds.items()}
    first = layer_order(list(next(iter(speeds.values()))))[0]
    if all(0 < r < 1 for r in ratios.values()):
        listed = and_join([f"{times(1 / r)} for {c}" for c, r in ratios.items()])
        sentence = (
            f"at step 0 {first} learns {span_times([1 / r for r in ratios.values()])} "
            f"slower than the output layer for every objective (‖∂C/∂b‖ over the fixed "
            f"images: {listed})"
        )
    else:
        ratio_list = and_join([f"{r:.3g} for {c}" for c, r in ratios.items()])
        return (
            f"at step 0 {first}'s speed ‖∂C/∂b‖ over the fixed images is {ratio_list} times "
            "the output layer's: not slower for every objective."
        )
    adjacent = [
        [s[lower] / s[upper] for lower, upper in pairwise(layer_order(list(s)))]
        for s in speeds.values()
    ]
    if all(len(r) > 1 and all(v < 1 for v in r) for r in adjacent):
        sentence += ", and the speed shrinks at every layer on the way down"
    return sentence + "."


def pairwise(items: list[str]) -> list[tuple[str, str]]:
    return list(zip(items, items[1:], strict=False))


def span_times(values: list[float]) -> str:
    low, high = times(min(values)), times(max(values))
    return low if low == high else f"{low} to {high}"


def depth_findings(groups: list[Group], key: str = "final_val_acc") -> list[str]:
    """At each depth (and other setting), which objectives leave chance by the end, and how
    fast each layer starts to learn; then, per other setting, the depths at which each kind of
    objective leaves chance. ``groups`` may be each cell at its chosen lr (named then)."""
    paragraphs = []
    left: dict[tuple, dict[str, dict[int, None]]] = {}
    for context in dict.fromkeys(group.without("lr") for group in groups):
        beside = [g for g in groups if g.without("lr") == context and g.values(key)]
        if not beside:
            continue
        epochs, depth = beside[0].runs[0].settings["max_epochs"], beside[0].context["depth"]
        epochs = f"{epochs} epoch{'s' * (epochs != 1)}"
        kinds = left.setdefault(beside[0].without("depth", "lr"), {})
        for group in beside:
            if group.mean(key) >= CHANCE:
                kind = "cross entropy" if group.cell in CROSS_ENTROPY else group.cell
                kinds.setdefault(kind, {})[depth] = None  # each depth once, in order
        lead = f"with {context_text(context)}, "
        speed = speed_sentence(beside)
        if all(g.mean(key) < CHANCE for g in beside):
            best = max(g.mean(key) for g in beside)
            sentence = (
                f"{lead}no objective leaves chance in {epochs} ({CHANCE_TEXT}; the best "
                f"final val accuracy is {percent(best)})"
            )
        else:
            parts = []
            cross = [g.mean(key) for g in beside if g.cell in CROSS_ENTROPY]
            if cross:
                parts.append(f"the cross-entropy cells reach {span(cross)}")
            for group in (g for g in beside if g.cell in (*SLOW_LEARNERS, CONTROL, "sigmoid+nll")):
                stuck = group.mean(key) < CHANCE
                name = f"the control {CONTROL}" if group.cell == CONTROL else group.cell
                if "lr" in group.context:
                    name += f" (lr {lr_text(group.context['lr'])})"
                value = percent(group.mean(key))
                parts.append(
                    f"{name} stays at chance ({value})" if stuck else f"{name} reaches {value}"
                )
            sentence = f"{lead}after {epochs} (final val accuracy) {and_join(parts)}"
        paragraphs.append(capitalised(sentence + (f"; {speed}" if speed else ".")))
    for context, kinds in left.items():
        label = context_text(context)
        listed = [
            f"{kind} at depth{'s' * (len(depths) > 1)} {and_join([str(d) for d in depths])}"
            for kind, depths in kinds.items()
        ]
        lead = f"with {label}, " if label else ""
        leave = "; ".join(listed) if listed else "none at any depth"
        paragraphs.append(
            capitalised(
                f"{lead}the objectives that leave chance (final val accuracy of 15% or more; "
                f"chance itself is 10%): {leave}."
            )
        )
    return paragraphs


def edge_notes(choices: list[BestLr]) -> list[str]:
    """The chosen lrs at the edge of their grid: no best value there."""
    edges = [c for c in choices if c.at_edge]
    if not edges:
        return []
    listed = and_join([f"{c.cell} ({c.context_label}: lr {lr_text(c.lr)})" for c in edges])
    return [
        f"At the edge of the lr grid, so the best lr may lie outside it: {listed}; "
        f"{len(edges)} of {len(choices)} choices."
    ]


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
