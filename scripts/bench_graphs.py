"""CUDA graphs against eager steps on a CUDA device (scripts/gpu_check.sh runs it), side by
side in one run: a default run's training steps eager and replayed as CUDA graphs, chunk by
chunk, beside a plain-PyTorch floor loop eager and graphed, the setups taking turns; the
18-member ablation group graphed and eager; and the commands of ``make sweep`` timed.

    python scripts/bench_graphs.py --device cuda --repeats 2 --out logs/bench-graphs

Results: <out>/bench.json and bench.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable, Iterable
from typing import Any

from bench_sweep import ablation_configs, sweep_command
from benchlib import (
    PlainLoop,
    begin,
    compose_config,
    epoch_orders,
    fit_runs,
    floor_loop,
    import_seconds,
    interleaved,
    machine,
    parser,
    report_header,
    run_process,
    timed,
    training_split,
    verdict,
    write_report,
)

GRAPH_SETUPS = ("floor", "floor graphed", "slowlearn eager", "slowlearn graphed")
GRAPH_EPOCHS = 3
# Seconds at most (under, for the group and the sweep), on an H200.
GRAPH_TARGETS = {"default_epoch_steps": 0.15, "ablation_group_training": 2.0, "make_sweep": 30.0}


class GraphedLoop(PlainLoop):
    """The same loop, a chunk of ``data.steps_per_chunk`` steps at a time captured in one CUDA
    graph and replayed (``slowlearn.cuda_graphs``); ``chunks`` makes one epoch's chunks."""

    def __init__(self, cfg: Any, device: Any, chunks: Callable[[], Iterable[Any]]) -> None:
        from slowlearn.cuda_graphs import ChunkGraphs

        super().__init__(cfg, device, lambda: ())
        self.chunks = chunks
        self.graphs = ChunkGraphs(self.take_steps)

    def take_steps(self, chunk: Any, variant: Any, captured: bool) -> None:
        for x, y in chunk:
            self.step(x, y)

    def epoch(self) -> int:
        steps = 0
        for chunk in self.chunks():
            self.graphs.run(chunk)
            steps += len(chunk)
        return steps


def graphed_floor_loop(cfg: Any, device: Any, images: Any, labels: Any) -> GraphedLoop:
    """The floor's epochs (the same orders) as chunks replayed by CUDA graphs."""
    from slowlearn.data import Chunk

    x, y = images.to(device), labels.to(device)
    orders = epoch_orders(cfg, device, len(y))
    size, chunk_samples = cfg.data.batch_size, cfg.data.batch_size * cfg.data.steps_per_chunk

    def chunks() -> Iterable[Any]:
        order = orders()
        for start in range(0, len(order), chunk_samples):
            block = order[start : start + chunk_samples]
            yield Chunk(x, y, list(block.split(size)), block)

    return GraphedLoop(cfg, device, chunks)


def graphs_round(
    cfg: Any, loops: dict[str, PlainLoop], args: argparse.Namespace, device: Any, index: int
) -> dict[str, dict[str, Any]]:
    """One epoch of each floor, one run of each slowlearn setup (its epochs' training steps
    and whole epochs), in turn."""
    results: dict[str, dict[str, Any]] = {}
    for setup in GRAPH_SETUPS:
        if setup in loops:
            seconds, steps = timed(device, loops[setup].epoch)
            results[setup] = {"steps_seconds": [seconds], "steps": steps}
            continue
        run_cfg = cfg.copy()
        run_cfg.module.cuda_graphs = setup.endswith("graphed")
        run_dir = args.runs / setup.replace(" ", "_") / f"round{index}"
        (outcome,) = fit_runs([run_cfg], run_dir, args.threads)
        assert outcome.status == "completed", outcome.error
        metrics = outcome.metrics
        results[setup] = {
            "steps_seconds": metrics["epoch_training_seconds"],
            "epoch_seconds": metrics["epoch_seconds"],
            "checkpoint_seconds": outcome.record["seconds"]["checkpoints"],
            "steps": metrics["val_history"][-1]["step"] // len(metrics["epoch_seconds"]),
            "test_acc": metrics["test_acc"],
        }
    return results


def ablation_group(
    args: argparse.Namespace, device: Any, graphs: bool, index: int
) -> dict[str, Any]:
    """The 18-member ablation group trained for 3 epochs, as ``make sweep`` trains it."""
    extra = [f"module.cuda_graphs={str(graphs).lower()}"]
    cfgs = ablation_configs(args, device, epochs=3, extra=extra)
    folder = args.runs / f"group_{'graphed' if graphs else 'eager'}{index}"
    outcomes = fit_runs(cfgs, folder, args.threads)
    assert {o.status for o in outcomes} == {"completed"}, [o.error for o in outcomes]
    return {
        "graphs": graphs,
        "training_seconds": outcomes[0].record["seconds"]["training"],
        "epoch_training_seconds": outcomes[0].metrics["epoch_training_seconds"],
        "test_acc": [o.metrics["test_acc"] for o in outcomes],  # in member order
    }


def make_sweep_command(args: argparse.Namespace, index: int) -> dict[str, Any]:
    """The two commands of ``make sweep`` (the batched ablation, then its report), timed
    together, as the Makefile runs them (here without make: a GPU machine has no .venv), and
    where the first one's time went."""
    sweep_dir = args.runs / f"make_sweep{index}"
    train = sweep_command("batched", sweep_dir, args)
    report = run_process([sys.executable, "-m", "slowlearn.report", str(sweep_dir)], None)
    return {
        "seconds": train["seconds"] + report["seconds"],
        "train_seconds": train["seconds"],
        "report_seconds": report["seconds"],
        "phases": train["phases"],
        "import_seconds": import_seconds(None),
    }


def bench_graphs(args: argparse.Namespace, device: Any) -> dict[str, Any]:
    """CUDA graphs against eager steps, side by side, then the ablation group and `make sweep`."""
    cfg = compose_config(
        [
            *args.overrides,
            f"trainer.max_epochs={GRAPH_EPOCHS}",
            f"trainer.accelerator={'gpu' if device.type == 'cuda' else 'cpu'}",
            "+trainer.enable_progress_bar=false",
        ]
    )
    images, labels = training_split(cfg)
    loops = {
        "floor": floor_loop(cfg, device, images, labels),
        "floor graphed": graphed_floor_loop(cfg, device, images, labels),
    }

    def describe(results: dict[str, dict[str, Any]]) -> str:
        line = "  ".join(f"{s} {steady(results[s]['steps_seconds']):.3f}s" for s in GRAPH_SETUPS)
        return f"default batch {cfg.data.batch_size}: {line}"

    rounds = interleaved(
        args, lambda index: graphs_round(cfg, loops, args, device, index), describe
    )
    groups = [
        ablation_group(args, device, graphs, index)
        for index, graphs in enumerate((True, False, True))
    ]
    for group in groups:
        print(f"ablation group, graphs {group['graphs']}: {group['training_seconds']:.2f}s")
    sweeps = [make_sweep_command(args, index) for index in range(2)]
    for sweep in sweeps:
        print(f"make sweep: {json.dumps(sweep)}", flush=True)
    return {
        "batch_size": cfg.data.batch_size,
        "steps_per_chunk": cfg.data.steps_per_chunk,
        "rounds": rounds,
        "groups": groups,
        "make_sweep": sweeps,
    }


def steady(seconds: list[float]) -> float:
    """An epoch's time once warm: the median over the epochs after the first (in which the
    chunks are captured), or the only one."""
    return statistics.median(seconds[1:] or seconds)


def graphs_markdown(report: dict[str, Any]) -> str:
    env, graphs = report["environment"], report["graphs"]
    rounds = graphs["rounds"]

    def median(setup: str, key: str, pick: Callable[[list[float]], float] = steady) -> float:
        return statistics.median(pick(r[setup][key]) for r in rounds)

    lines = [
        f"CUDA graphs benchmark of {env['date']} (commit {env['commit'] or 'unknown'}): "
        f"{machine(env)}, torch {env['torch']}, Lightning {env['pytorch_lightning']}; "
        f"the default model, batch {graphs['batch_size']}, chunks of "
        f"{graphs['steps_per_chunk']} steps; median of {report['repeats']} rounds after "
        f"{report['warmup']} warm-up, the setups taking turns. slowlearn runs "
        f"{GRAPH_EPOCHS} epochs a round: epoch 1 (eager warm-up chunk, captures) apart, the "
        "steady epochs' median beside it.",
        "",
        "| setup | training steps of an epoch, s | epoch 1 steps, s | whole epoch (validation, "
        "checkpoint), s | steps/s | × eager | test acc |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for setup in GRAPH_SETUPS:
        eager = "floor" if setup.startswith("floor") else "slowlearn eager"
        steps_s = median(setup, "steps_seconds")
        ratio = steps_s / median(eager, "steps_seconds")
        steps = rounds[0][setup]["steps"]
        slowlearn = setup.startswith("slowlearn")
        first = f"{median(setup, 'steps_seconds', lambda v: v[0]):.3f}" if slowlearn else ""
        whole = f"{median(setup, 'epoch_seconds'):.3f}" if slowlearn else ""
        accuracy = (
            f"{statistics.median(r[setup]['test_acc'] for r in rounds):.4f}" if (slowlearn) else ""
        )
        lines.append(
            f"| {setup} | {steps_s:.3f} | {first} | {whole} | {steps / steps_s:.0f} "
            f"| {ratio:.3f} | {accuracy} |"
        )
    graphed = median("slowlearn graphed", "steps_seconds")
    group_graphed = [g for g in graphs["groups"] if g["graphs"]]
    group_eager = [g for g in graphs["groups"] if not g["graphs"]]
    best_group = min(g["training_seconds"] for g in group_graphed)
    differences = [
        abs(graphed_acc - eager_acc)
        for g in group_graphed
        for graphed_acc, eager_acc in zip(g["test_acc"], group_eager[0]["test_acc"], strict=True)
    ]
    warm_sweep = graphs["make_sweep"][-1]
    group_runs = ", ".join(f"{g['training_seconds']:.2f}" for g in group_graphed)
    sweep_verdict = verdict(warm_sweep["seconds"], GRAPH_TARGETS["make_sweep"], under=True)
    lines += [
        "",
        "| target | measured | verdict |",
        "|---|---:|---|",
        f"| training steps of a default-run epoch (steady), s | {graphed:.3f} "
        f"| {verdict(graphed, GRAPH_TARGETS['default_epoch_steps'])} |",
        f"| training of the 18-member ablation group, 3 epochs, s (captures included; "
        f"runs: {group_runs}; eager "
        f"{group_eager[0]['training_seconds']:.2f}) | {best_group:.2f} "
        f"| {verdict(best_group, GRAPH_TARGETS['ablation_group_training'], under=True)} |",
        f"| the `make sweep` commands (batched ablation, then its report), warm caches, s "
        f"(cold: {graphs['make_sweep'][0]['seconds']:.1f}; training command "
        f"{warm_sweep['train_seconds']:.1f}, report {warm_sweep['report_seconds']:.1f}) "
        f"| {warm_sweep['seconds']:.1f} | {sweep_verdict} |",
        "",
        "Where the warm `make sweep` training command's time went, s: "
        + ", ".join(f"{k} {v:.2f}" for k, v in warm_sweep["phases"].items())
        + f"; `import slowlearn.train` alone {warm_sweep['import_seconds']:.2f}.",
        "",
        f"Ablation group, graphed against eager, test accuracy run by run: largest difference "
        f"{100 * max(differences):.2f} points over {len(differences)} runs.",
    ]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ reports


def main() -> None:
    args = parser(__doc__, device="cuda", repeats=2).parse_args()
    if args.device != "cuda":
        sys.exit("bench_graphs.py needs --device cuda")
    device = begin(args)
    report = report_header(args, device)
    report["graphs"] = bench_graphs(args, device)
    write_report(args, report, graphs_markdown(report))


if __name__ == "__main__":
    main()
