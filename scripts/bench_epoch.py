"""How close slowlearn trains to the plain-PyTorch floor (``make bench``): for each model (the
default DMLP and the ablation's) and batch size, three setups take turns, one epoch each,
round after round (floor, slowlearn, naive, floor, ...), so that a machine that slows down or
speeds up during the run affects them alike.

    python scripts/bench_epoch.py --device cpu --repeats 5 --out logs/bench [hydra overrides]

- floor: a plain PyTorch loop over the training split as float tensors on the device, a
  random permutation per epoch; the same model, objective, optimizer and seed.
- slowlearn: the real path of ``make train`` (its config, TensorBoard logging, diagnostics,
  checkpoints, the validation pass), one run of one epoch per round, in this process.
- naive: the tutorial setup, torchvision's MNIST with ToTensor through a shuffling
  DataLoader, feeding the plain loop; as many samples as the training split.

It also times a whole ``python -m slowlearn.train trainer.max_epochs=1`` process. Results:
<out>/bench.json and bench.md.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path
from typing import Any

from benchlib import (
    PlainLoop,
    begin,
    compose_config,
    cuda_peak_mib,
    fit_runs,
    floor_loop,
    fmt,
    import_seconds,
    interleaved,
    machine,
    parser,
    report_header,
    run_process,
    spread,
    timed,
    training_split,
    verdict,
    write_report,
)

MODELS = {"default": [], "ablation": ["experiment=ablation"]}
SETUPS = ("floor", "slowlearn", "naive")
# slowlearn's median epoch time over the floor's at most, by device and batch size.
TARGETS = {("cpu", 64): 1.3, ("cpu", 512): 1.15, ("cuda", 64): 1.5}
STARTUP_TARGET_SECONDS = 6.0  # CPU, start until the first training step


def naive_loop(cfg: Any, device: Any, size: int) -> PlainLoop:
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms

    dataset = datasets.MNIST(cfg.data.dir, train=True, transform=transforms.ToTensor())
    loader = DataLoader(Subset(dataset, range(size)), batch_size=cfg.data.batch_size, shuffle=True)
    return PlainLoop(cfg, device, lambda: loader)


def slowlearn_epoch(cfg: Any, device: Any, run_dir: Path, threads: int) -> dict[str, float]:
    """One ``make train`` run of one epoch, in this process."""
    (outcome,) = fit_runs([cfg], run_dir, threads)
    assert outcome.status == "completed", outcome.error
    return {
        "seconds": outcome.metrics["epoch_seconds"][0],
        "steps_seconds": outcome.record["seconds"]["training"],
        "steps": outcome.metrics["val_history"][-1]["step"],
        "fit_seconds": outcome.record["wall_seconds"],  # fit and test
    }


def bench_config(
    model: str, batch_size: int, args: argparse.Namespace, device: Any
) -> dict[str, Any]:
    """All rounds of the three setups for one model and batch size."""
    import torch

    accelerator = "gpu" if device.type == "cuda" else "cpu"
    cfg = compose_config(
        [
            *MODELS[model],
            *args.overrides,
            f"data.batch_size={batch_size}",
            "trainer.max_epochs=1",
            f"trainer.accelerator={accelerator}",
            "+trainer.enable_progress_bar=false",
        ]
    )
    images, labels = training_split(cfg)
    loops = {
        "floor": floor_loop(cfg, device, images, labels),
        "naive": naive_loop(cfg, device, len(labels)),
    }

    def one_round(index: int) -> dict[str, dict[str, float]]:
        results: dict[str, dict[str, float]] = {}
        for setup in SETUPS:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            if setup == "slowlearn":
                run_dir = args.runs / f"{model}_b{batch_size}" / f"round{index}"
                results[setup] = slowlearn_epoch(cfg, device, run_dir, args.threads)
            else:
                seconds, steps = timed(device, loops[setup].epoch)
                results[setup] = {"seconds": seconds, "steps": steps}
            results[setup]["cuda_peak_mib"] = cuda_peak_mib(device)
        return results

    def describe(results: dict[str, dict[str, float]]) -> str:
        line = "  ".join(f"{s} {results[s]['seconds']:.3f}s" for s in SETUPS)
        return f"{model} batch {batch_size}: {line}"

    rounds = interleaved(args, one_round, describe)
    return {
        "model": model,
        "batch_size": batch_size,
        "train_samples": len(labels),
        "rounds": rounds,
        "summary": summarise(rounds),
    }


def summarise(rounds: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, Any]]:
    """Median and range per setup; the ratios to the floor are taken round by round, so each
    compares epochs run moments apart."""
    summary = {}
    for setup in SETUPS:
        seconds = [r[setup]["seconds"] for r in rounds]
        summary[setup] = {
            "epoch_seconds": spread(seconds),
            "steps": rounds[0][setup]["steps"],
            "steps_per_second": spread([r[setup]["steps"] / r[setup]["seconds"] for r in rounds]),
            "ratio_to_floor": spread([r[setup]["seconds"] / r["floor"]["seconds"] for r in rounds]),
        }
        if setup == "slowlearn":
            summary[setup]["fit_seconds"] = spread([r[setup]["fit_seconds"] for r in rounds])
            summary[setup]["steps_ratio_to_floor"] = spread(
                [r[setup]["steps_seconds"] / r["floor"]["seconds"] for r in rounds]
            )
        peaks = [r[setup]["cuda_peak_mib"] for r in rounds if r[setup]["cuda_peak_mib"]]
        summary[setup]["cuda_peak_mib"] = max(peaks, default=None)
    return summary


def time_process(args: argparse.Namespace, accelerator: str) -> dict[str, float]:
    """``python -m slowlearn.train trainer.max_epochs=1`` as a user runs it: the whole process,
    until its first training step, its imports alone, and its peak resident memory."""
    clock = args.out / "first_step.txt"
    clock.unlink(missing_ok=True)
    command = [
        sys.executable,
        "-m",
        "slowlearn.train",
        *args.overrides,
        "trainer.max_epochs=1",
        f"trainer.accelerator={accelerator}",
        f"threads={args.threads}",
        f"hydra.run.dir={args.runs / 'process'}",
        "+callbacks.first_step._target_=scripts.benchlib.FirstStepClock",
        f"+callbacks.first_step.path={clock}",
    ]
    started = time.time()
    process = run_process(command, args.threads)
    return {
        "process_seconds": process["seconds"],
        "first_step_seconds": float(clock.read_text()) - started,
        "import_seconds": import_seconds(args.threads),
        "peak_rss_mib": process["peak_rss_mib"],
    }


# ------------------------------------------------------------------ sweep mode


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [
        f"Benchmark of {env['date']} (commit {env['commit'] or 'unknown'}): {machine(env)}, "
        f"{env['threads']} torch threads on {env['cores']} cores, torch {env['torch']}, "
        f"Lightning {env['pytorch_lightning']}; median (min–max) of {report['repeats']} "
        f"interleaved rounds after {report['warmup']} warm-up.",
        "",
        "| model | batch | setup | epoch s | steps/s | × floor | steps only × floor | fit s "
        "| target |",
        "|---|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    device_type = "cuda" if env["device"] != "cpu" else "cpu"
    for result in report["results"]:
        for setup in SETUPS:
            s = result["summary"][setup]
            steps_only = fmt(s["steps_ratio_to_floor"], 2) if setup == "slowlearn" else ""
            fit = fmt(s["fit_seconds"], 2) if setup == "slowlearn" else ""
            target = TARGETS.get((device_type, result["batch_size"]))
            met = ""
            if setup == "slowlearn" and target:
                met = verdict(s["ratio_to_floor"]["median"], target)
            lines.append(
                f"| {result['model']} | {result['batch_size']} | {setup} "
                f"| {fmt(s['epoch_seconds'])} | {s['steps_per_second']['median']:.0f} "
                f"| {fmt(s['ratio_to_floor'], 2)} | {steps_only} | {fit} | {met} |"
            )
    process = report.get("process")
    if process:
        lines += [
            "",
            "| `python -m slowlearn.train trainer.max_epochs=1` | seconds |",
            "|---|---:|",
            f"| whole process | {process['process_seconds']:.2f} |",
            f"| start until the first training step (target on CPU: ≤ "
            f"{STARTUP_TARGET_SECONDS:.0f}) | {process['first_step_seconds']:.2f} |",
            f"| `import slowlearn.train` alone | {process['import_seconds']:.2f} |",
            f"| peak resident memory, MiB | {process['peak_rss_mib']:.0f} |",
        ]
    lines += [
        "",
        f"Benchmark process peak resident memory: {report['peak_rss_mib']:.0f} MiB.",
        "slowlearn's epoch is the module's own epoch time: its training steps, logging and "
        "validation pass; steps only stops where validation begins; fit s is "
        "the whole `trainer.fit` and test of one epoch (setup, data loading, logging).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    options = parser(__doc__)
    options.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 512])
    options.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    options.add_argument("--no-process", action="store_true", help="skip the process timing")
    args = options.parse_args()
    device = begin(args)
    report = report_header(args, device)
    if not args.no_process:  # first, while this process is small and the machine quiet
        report["process"] = time_process(args, "gpu" if device.type == "cuda" else "cpu")
        print("process: " + ", ".join(f"{k} {v:.2f}" for k, v in report["process"].items()))
    report["results"] = [
        bench_config(model, batch_size, args, device)
        for model in args.models
        for batch_size in args.batch_sizes
    ]
    report["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    write_report(args, report, markdown(report))


if __name__ == "__main__":
    main()
