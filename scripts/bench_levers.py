"""The step's levers that were tried and not kept (``make bench-levers``): each timed against
the step's own way on the ablation's 18 members (6 cells x 3 seeds, a 784-100-10 sigmoid MLP,
mini-batches of 64), the two taking turns in every round, with whether the lever gives the
same values bit for bit.

- objectives: one call per cell (``MemberStep.member_losses``, the step's way) against one
  fused call over the whole group, which computes every activation's and every objective's
  terms for all members and selects each member's own with ``torch.where``; forward and
  backward;
- shared data orders: the first layer with each member's own gathered mini-batch (the step's
  way: one ``index_select``, one ``baddbmm``, and the weight gradient's ``bmm``) against one
  gather per data order (the members of one seed see the same mini-batches), its members'
  products through strided views of the stack;
- oneDNN: the same first-layer products (forward and weight gradient) through oneDNN's
  linear (``torch.ops.mkldnn._linear_pointwise``, the private op that inductor calls on a
  CPU), one call per member, transposing copies included, against MKL's ``baddbmm`` and
  ``bmm``.

The data are random: these are matrix shapes and kernel calls, and their speed does not depend
on the values.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import (  # noqa: E402
    begin,
    fmt,
    interleaved,
    machine,
    parser,
    report_header,
    spread,
    write_report,
)

MEMBERS, SEEDS, BATCH, INPUTS, HIDDEN, CLASSES = 18, 3, 64, 784, 100, 10
CELLS = [(a, loss) for a in ("sigmoid", "softmax") for loss in ("mse", "bce", "nll")]

Setup = Callable[[], Any]  # one call of a way; returns the values compared for equality


def objectives_lever() -> tuple[Setup, Setup]:
    import torch

    from slowlearn.losses import ACTIVATIONS, PER_SAMPLE, targets_like
    from slowlearn.model import DMLP, MemberStack
    from slowlearn.step import Member, MemberStep

    members = [Member(a, loss, math.e, 0.1) for a, loss in CELLS for _ in range(SEEDS)]
    step = MemberStep(MemberStack([DMLP() for _ in members]), members)
    logits = torch.randn(MEMBERS, BATCH, CLASSES)
    targets = targets_like(logits, torch.randint(0, CLASSES, (BATCH,)))
    column = (MEMBERS, 1)
    sigmoid = torch.tensor([m.activation == "sigmoid" for m in members]).view(MEMBERS, 1, 1)
    loss_is = {
        name: torch.tensor([m.loss == name for m in members]).view(column) for name in PER_SAMPLE
    }
    sig, soft = ACTIVATIONS["sigmoid"], ACTIVATIONS["softmax"]

    def per_cell() -> tuple[Any, Any]:
        z = logits.clone().requires_grad_()
        losses = step.member_losses(z, targets)
        losses.sum().backward()
        return losses.detach(), z.grad

    def fused() -> tuple[Any, Any]:
        z = logits.clone().requires_grad_()
        outputs = torch.where(sigmoid, sig.outputs(z), soft.outputs(z))
        log_o = torch.where(sigmoid, sig.log_outputs(z), soft.log_outputs(z))
        log_rest = torch.where(sigmoid, sig.log_one_minus_outputs(z), soft.log_one_minus_outputs(z))
        mse = 0.5 * (outputs - targets).square().sum(dim=-1)
        bce = -(targets * log_o + (1 - targets) * log_rest).sum(dim=-1)
        nll = -(targets * log_o).sum(dim=-1)
        per_sample = torch.where(loss_is["mse"], mse, torch.where(loss_is["bce"], bce, nll))
        losses = per_sample.mean(dim=-1)
        losses.sum().backward()
        return losses.detach(), z.grad

    return per_cell, fused


def first_layer_tensors() -> dict[str, Any]:
    import torch

    generator = torch.Generator().manual_seed(0)
    return {
        "data": torch.randn(60000, INPUTS, generator=generator),
        # member m follows seed m % SEEDS's data order, as the ablation's members do
        "orders": torch.randint(0, 60000, (SEEDS, BATCH), generator=generator),
        "weight": torch.randn(MEMBERS, INPUTS, HIDDEN, generator=generator) * 0.03,
        "bias": torch.randn(MEMBERS, HIDDEN, generator=generator),
        "grad": torch.randn(MEMBERS, BATCH, HIDDEN, generator=generator),
    }


def own_batches(t: dict[str, Any]) -> Any:
    """The step's way: each member's own mini-batch, one gather, one product each way."""
    import torch

    index = t["orders"][torch.arange(MEMBERS) % SEEDS].reshape(-1)
    x = t["data"].index_select(0, index).view(MEMBERS, BATCH, INPUTS)
    z = torch.baddbmm(t["bias"].unsqueeze(1), x, t["weight"])
    return z, torch.bmm(x.transpose(1, 2), t["grad"])


def shared_orders_lever() -> tuple[Setup, Setup]:
    import torch

    t = first_layer_tensors()

    def per_order() -> tuple[Any, Any]:
        x = t["data"].index_select(0, t["orders"].reshape(-1)).view(SEEDS, BATCH, INPUTS)
        z, weight_grad = [], []
        for seed in range(SEEDS):
            shared = x[seed].expand(MEMBERS // SEEDS, BATCH, INPUTS)
            weights = t["weight"][seed::SEEDS]
            z.append(torch.baddbmm(t["bias"][seed::SEEDS].unsqueeze(1), shared, weights))
            weight_grad.append(torch.bmm(shared.transpose(1, 2), t["grad"][seed::SEEDS]))
        # stack on axis 1: member m = cell * SEEDS + seed, as the stack orders them
        return (
            torch.stack(z, dim=1).view(MEMBERS, BATCH, HIDDEN),
            torch.stack(weight_grad, dim=1).view(MEMBERS, INPUTS, HIDDEN),
        )

    return lambda: own_batches(t), per_order


def onednn_lever() -> tuple[Setup, Setup] | None:
    import torch

    linear = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
    if linear is None or not torch.backends.mkldnn.is_available():
        return None
    t = first_layer_tensors()
    weight_rows = t["weight"].transpose(1, 2).contiguous()  # nn.Linear's [out, in], given free

    def onednn() -> tuple[Any, Any]:
        index = t["orders"][torch.arange(MEMBERS) % SEEDS].reshape(-1)
        x = t["data"].index_select(0, index).view(MEMBERS, BATCH, INPUTS)
        z, weight_grad = [], []
        for m in range(MEMBERS):
            z.append(linear(x[m], weight_rows[m], t["bias"][m], "none", [], ""))
            # dW [in, out] = x^T g: a linear of x^T [in, B] with g^T [out, B] as its weight
            columns, grad_rows = x[m].T.contiguous(), t["grad"][m].T.contiguous()
            weight_grad.append(linear(columns, grad_rows, None, "none", [], ""))
        return torch.stack(z), torch.stack(weight_grad)

    return lambda: own_batches(t), onednn


LEVERS: dict[str, Callable[[], tuple[Setup, Setup] | None]] = {
    "one fused objective call for the six cells (forward and backward)": objectives_lever,
    "one gather and product per data order (first layer, forward and weight gradient)": (
        shared_orders_lever
    ),
    "oneDNN's linear per member (first layer, forward and weight gradient)": onednn_lever,
}


def ms_per_call(way: Setup, calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        way()
    return 1000 * (time.perf_counter() - started) / calls


def compare(step_way: Setup, lever: Setup) -> dict[str, Any]:
    import torch

    ours, theirs = step_way(), lever()
    return {
        "bit_identical": all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True)),
        "max_abs_difference": max(
            (a - b).abs().max().item() for a, b in zip(ours, theirs, strict=True)
        ),
    }


def bench_levers(args: Any) -> dict[str, Any]:
    results = {}
    for name, make in LEVERS.items():
        ways = make()
        if ways is None:
            print(f"{name}: not available in this torch build, skipped", flush=True)
            continue
        step_way, lever = ways
        for way in ways:  # first calls allocate and pick kernels
            ms_per_call(way, 5)

        def one_round(index: int, ways: tuple[Setup, Setup] = ways) -> dict[str, float]:
            step_ms, lever_ms = (ms_per_call(way, args.calls) for way in ways)
            return {"step_ms": step_ms, "lever_ms": lever_ms, "ratio": lever_ms / step_ms}

        print(name, flush=True)
        rounds = interleaved(
            args,
            one_round,
            lambda r: f"step's way {r['step_ms']:.3f} ms, lever {r['lever_ms']:.3f} ms",
        )
        results[name] = {"rounds": rounds, **compare(step_way, lever)}
    return results


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [
        f"Lever benchmark of {env['date']} (commit {env['commit']}): {machine(env)}, "
        f"{env['cores']} cores, {env['threads']} threads, torch {env['torch']}; "
        f"{report['repeats']} rounds of {report['calls']} calls each way, taking turns.",
        "",
        "| lever | the step's way, ms | the lever, ms | lever / step's way, median (min–max) "
        "| bit-identical | largest difference |",
        "|---|---:|---:|---:|---|---:|",
    ]
    for name, result in report["levers"].items():
        rounds = result["rounds"]
        step_ms, lever_ms, ratio = (
            spread([r[k] for r in rounds]) for k in ("step_ms", "lever_ms", "ratio")
        )
        lines.append(
            f"| {name} | {step_ms['median']:.3f} | {lever_ms['median']:.3f} | {fmt(ratio, 2)} | "
            f"{'yes' if result['bit_identical'] else 'no'} | {result['max_abs_difference']:.2g} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    options = parser(__doc__, repeats=3)
    options.add_argument("--calls", type=int, default=200, help="calls of each way per round")
    args = options.parse_args()
    if args.calls < 1:
        sys.exit(f"--calls must be at least 1, got {args.calls}")
    device = begin(args)
    if device.type != "cpu":
        sys.exit("bench_levers.py measures the CPU step: --device cpu")
    report = report_header(args, device)
    report["calls"] = args.calls
    report["levers"] = bench_levers(args)
    write_report(args, report, markdown(report))


if __name__ == "__main__":
    main()
