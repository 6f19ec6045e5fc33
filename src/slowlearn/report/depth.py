"""The findings of a depth sweep: at each depth and init which objectives leave chance, and how
much slower each layer starts to learn than the output layer (Nielsen's speed of learning,
measured over the fixed images at step 0); a cause is named only where every objective's
speeds show it.
"""

from __future__ import annotations

from slowlearn.cells import CONTROL_CELL as CONTROL
from slowlearn.cells import CROSS_ENTROPY, SLOW_LEARNERS
from slowlearn.report.evidence import and_join, capitalised
from slowlearn.report.runs import CHANCE, CHANCE_TEXT, Group, context_text
from slowlearn.report.tables import BestLr, layer_order, lr_text, mean_speeds, percent

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
