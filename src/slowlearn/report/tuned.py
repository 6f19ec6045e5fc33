"""The findings of a learning-rate sweep: every cell at its own best lr, chosen on validation,
against the best of the cross-entropy cells present and the cure with the same output
activation; the tuned gaps of every context side by side; and, for a sweep of many epochs,
whether a slow learner only learns slower or also ends worse.
"""

from __future__ import annotations

import statistics
from itertools import groupby

from slowlearn.cells import CONTROL_CELL as CONTROL
from slowlearn.cells import CROSS_ENTROPY, SAME_ACTIVATION_CURE, SLOW_LEARNERS
from slowlearn.report.evidence import (
    SMALL_GAP,
    and_join,
    capitalised,
    gap_verdict,
    per_seed_gaps,
    why_sentence,
)
from slowlearn.report.runs import TARGETS, context_text
from slowlearn.report.tables import BestLr, lr_text, percent

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
