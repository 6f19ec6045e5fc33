"""What a batched sweep saves (``make bench-sweep``), measured side by side in one run: the
18-run ablation (3 epochs) as one command with the batched launcher and with the basic one,
taking turns, and where each one's time went (every run's metrics.json says it); the training
steps of one 18-member group against the sum of the 18 members' own floor epochs, taking turns
in this process; and the peak memory of the batched command against one single run's.

    python scripts/bench_sweep.py --repeats 2 --out logs/bench-sweep [hydra overrides]

Results: <out>/bench.json and bench.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from benchlib import (
    begin,
    compose_config,
    fit_runs,
    floor_loop,
    fmt,
    import_seconds,
    interleaved,
    parser,
    report_header,
    run_process,
    spread,
    timed,
    training_split,
    verdict,
    write_report,
)

# The batched ablation's measures over the basic launcher's (or a single run's) at most.
SWEEP_TARGETS = {"command": 0.33, "group_training": 0.45, "memory": 1.5}
ABLATION = ["experiment=ablation", "+trainer.enable_progress_bar=false"]
LAUNCHERS = ("batched", "basic")


def sweep_command(launcher: str, sweep_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The whole ablation command with one launcher, and where its time went."""
    from slowlearn.records import read_metrics

    command = [sys.executable, "-m", "slowlearn.train", "-m", *ABLATION, *args.overrides]
    command += [f"hydra/launcher={launcher}", f"hydra.sweep.dir={sweep_dir}"]
    process = run_process(command, threads=None)  # the entry point's own split of the cores
    records = [read_metrics(path.parent) for path in sweep_dir.rglob("metrics.json")]
    assert len(records) == 18 and {r["status"] for r in records} == {"completed"}
    phases: dict[str, float] = {}
    for record in records:  # a member shares its group's time: count each group once
        for phase, seconds in record["seconds"].items():
            phases[phase] = phases.get(phase, 0.0) + seconds / record["group_size"]
    return {
        **process,
        "phases": phases,
        "test_acc": {r["run_name"]: r["metrics"]["test_acc"] for r in records},
    }


def ablation_configs(
    args: argparse.Namespace, device: Any, epochs: int = 1, extra: Iterable[str] = ()
) -> list[Any]:
    """The ablation's jobs as its sweeper expands them (its cells and seeds), on ``device``."""
    swept = compose_config(ABLATION, hydra_node=True).hydra.sweeper.params
    accelerator = "gpu" if device.type == "cuda" else "cpu"
    return [
        compose_config(
            [*ABLATION, *args.overrides, *extra, f"cell={cell}", f"seed={seed}"]
            + [f"trainer.max_epochs={epochs}", f"trainer.accelerator={accelerator}"]
        )
        for cell in str(swept.cell).split(",")
        for seed in str(swept.seed).split(",")
    ]


def group_against_floor(args: argparse.Namespace, device: Any) -> list[dict[str, float]]:
    """Rounds of: one epoch of the 18-member group (its training steps), then one floor epoch
    of each member (its own cell and seed)."""
    import torch

    cfgs = ablation_configs(args, device)
    images, labels = training_split(cfgs[0])

    def one_round(index: int) -> dict[str, float]:
        outcomes = fit_runs(cfgs, args.runs / "group" / f"round{index}", args.threads)
        torch.set_num_threads(args.threads)
        floors = [timed(device, floor_loop(cfg, device, images, labels).epoch)[0] for cfg in cfgs]
        return {"group": outcomes[0].record["seconds"]["training"], "floor_sum": sum(floors)}

    def describe(result: dict[str, float]) -> str:
        return f"group epoch {result['group']:.2f}s, 18 floor epochs {result['floor_sum']:.2f}s"

    return interleaved(args, one_round, describe)


def bench_sweep(args: argparse.Namespace, device: Any) -> dict[str, Any]:
    """The two commands taking turns (no warm-up: each is a cold start, as a user's is), a
    single run's command beside each pair, then the group against the floor."""
    commands: dict[str, list[dict[str, Any]]] = {launcher: [] for launcher in LAUNCHERS}
    single = []
    for index in range(args.repeats):
        for launcher in LAUNCHERS:
            result = sweep_command(launcher, args.runs / f"{launcher}{index}", args)
            commands[launcher].append(result)
            print(f"{launcher} round {index + 1}: {result['seconds']:.1f}s", flush=True)
        command = [sys.executable, "-m", "slowlearn.train", *ABLATION, *args.overrides]
        single.append(
            run_process([*command, f"hydra.run.dir={args.runs / f'single{index}'}"], None)
        )
    start = import_seconds(None)
    return {
        "commands": commands,
        "single_run": single,
        "import_seconds": start,
        "group_rounds": group_against_floor(args, device),
    }


def sweep_markdown(report: dict[str, Any]) -> str:
    env, sweep = report["environment"], report["sweep"]
    commands = sweep["commands"]
    ratios = [
        batched["seconds"] / basic["seconds"]
        for batched, basic in zip(commands["batched"], commands["basic"], strict=True)
    ]
    group = [r["group"] / r["floor_sum"] for r in sweep["group_rounds"]]
    batched_peak = max(r["peak_rss_mib"] for r in commands["batched"])
    single_peak = max(r["peak_rss_mib"] for r in sweep["single_run"])
    accuracies = [
        abs(b["test_acc"][name] - a["test_acc"][name])
        for b, a in zip(commands["batched"], commands["basic"], strict=True)
        for name in b["test_acc"]
    ]

    lines = [
        f"Sweep benchmark of {env['date']} (commit {env['commit'] or 'unknown'}): "
        f"{env['device']}, {env['cores']} cores, torch {env['torch']}, Lightning "
        f"{env['pytorch_lightning']}; {report['repeats']} rounds, the two launchers taking "
        "turns, ratios taken round by round.",
        "",
        "| measure | batched | basic | ratio, median (min–max) | target |",
        "|---|---:|---:|---:|---|",
        f"| the 18-run ablation command (3 epochs), s | "
        f"{fmt(spread([r['seconds'] for r in commands['batched']]), 1)} | "
        f"{fmt(spread([r['seconds'] for r in commands['basic']]), 1)} | {fmt(spread(ratios), 3)} "
        f"| {verdict(statistics.median(ratios), SWEEP_TARGETS['command'])} |",
        f"| training steps of one 18-member group vs the sum of their 18 floor epochs "
        f"(1 epoch), s | {fmt(spread([r['group'] for r in sweep['group_rounds']]), 2)} | "
        f"{fmt(spread([r['floor_sum'] for r in sweep['group_rounds']]), 2)} (floor) | "
        f"{fmt(spread(group), 3)} "
        f"| {verdict(statistics.median(group), SWEEP_TARGETS['group_training'])} |",
        f"| peak resident memory, MiB: batched command vs one single run | {batched_peak:.0f} | "
        f"{single_peak:.0f} (single run) | {batched_peak / single_peak:.2f} | "
        f"{verdict(batched_peak / single_peak, SWEEP_TARGETS['memory'])} |",
        "",
        f"Test accuracies, batched against basic, run by run: largest difference "
        f"{100 * max(accuracies):.2f} points over {len(accuracies)} runs.",
        "",
        "Where each command's time went (median over rounds, seconds; a group's phases once):",
        "",
        "| launcher | start (imports) | data | training | evaluation | checkpoints | composing, "
        "records, Lightning and the rest | total |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    start = sweep["import_seconds"]
    for launcher in LAUNCHERS:
        runs = commands[launcher]
        phase = {
            name: statistics.median(r["phases"].get(name, 0.0) for r in runs)
            for name in ("data", "training", "evaluation", "checkpoints")
        }
        total = statistics.median(r["seconds"] for r in runs)
        rest = total - start - sum(phase.values())
        cells = " | ".join(f"{phase[name]:.1f}" for name in phase)
        lines.append(f"| {launcher} | {start:.1f} | {cells} | {rest:.1f} | {total:.1f} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ CUDA graphs mode


def main() -> None:
    args = parser(__doc__, repeats=2).parse_args()
    device = begin(args)
    report = report_header(args, device)
    report["sweep"] = bench_sweep(args, device)
    write_report(args, report, sweep_markdown(report))


if __name__ == "__main__":
    main()
