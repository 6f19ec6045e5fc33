"""What every finding rests on: one gap rule, seed by seed, for every comparison of a slow
learner with cross entropy, and the measured why (the fixed images' saturation, output factor
and error signal, ``diag/fixed/``) that a sentence naming a cause must carry.
"""

from __future__ import annotations

from slowlearn.cells import CONTROL_CELL as CONTROL
from slowlearn.cells import SAME_ACTIVATION_CURE
from slowlearn.report.runs import CHANCE, CHANCE_TEXT, Group
from slowlearn.report.tables import percent

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
