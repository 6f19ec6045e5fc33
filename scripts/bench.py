"""How close slowlearn trains to the plain-PyTorch floor, side by side in one run.

    python scripts/bench.py --device cpu --repeats 5 --out logs/bench [hydra overrides ...]

For each model (the default DMLP and the ablation's) and batch size, the setups take turns,
one epoch each, round after round (floor, slowlearn, naive, floor, ...), so that a machine
that slows down or speeds up during the run affects them alike:

- floor: a plain PyTorch loop over the training split as float tensors on the device, a
  random permutation per epoch; the same model, objective, optimizer and seed.
- slowlearn: the real Lightning path of ``make train`` (the same Hydra config, TensorBoard
  logging, diagnostics, checkpointing and the validation pass), one ``trainer.fit`` of one
  epoch per round; the epoch time is the module's own, the fit time is the whole call.
- naive: the tutorial setup, torchvision's MNIST with ToTensor through a shuffling
  DataLoader, feeding the plain loop; as many samples as the training split.

It also times a whole ``python -m slowlearn.train trainer.max_epochs=1`` process, its imports
and its first training step, and the peak memory. Results: <out>/bench.json and bench.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl  # the base of FirstStepClock, which the timed process imports

REPO = Path(__file__).resolve().parents[1]
MODELS = {"default": [], "ablation": ["experiment=ablation"]}
SETUPS = ("floor", "slowlearn", "naive")
# Issue 4's targets for slowlearn's median epoch time over the floor's, by device and batch.
TARGETS = {("cpu", 64): 1.3, ("cpu", 512): 1.15, ("cuda", 64): 1.5}
STARTUP_TARGET_SECONDS = 6.0  # CPU, start until the first training step


class FirstStepClock(pl.Callback):
    """Writes the wall-clock time at which the first training step starts to ``path``; the
    timed process gets it as a Hydra callback, so the module needs no timing hook."""

    def __init__(self, path: str) -> None:
        self.path: Path | None = Path(path)

    def on_train_batch_start(self, *args: Any) -> None:
        if self.path is not None:
            self.path.write_text(repr(time.time()))
            self.path = None


class StepsClock(pl.Callback):
    """The training part of the epoch: from its start until validation begins (the floor has
    no validation pass). Synchronises the device once there."""

    def __init__(self, device: Any) -> None:
        self.device = device
        self.started = self.seconds = 0.0

    def on_train_epoch_start(self, *args: Any) -> None:
        self.started = time.perf_counter()

    def on_validation_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if not trainer.sanity_checking and not self.seconds:
            synchronize(self.device)
            self.seconds = time.perf_counter() - self.started


def synchronize(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: Any, work: Callable[[], Any]) -> tuple[float, Any]:
    """Seconds that ``work`` takes on the device: synchronised before and after."""
    synchronize(device)
    started = time.perf_counter()
    result = work()
    synchronize(device)
    return time.perf_counter() - started, result


def compose_config(overrides: list[str]) -> Any:
    """The config that ``make train ARGS="<overrides>"`` runs."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True)


class PlainLoop:
    """The SGD loop without a framework: the config's model, objective and optimizer, seeded
    as ``make train`` seeds them; ``batches`` makes one epoch's (x, y) batches."""

    def __init__(
        self, cfg: Any, device: Any, batches: Callable[[], Iterable[tuple[Any, Any]]]
    ) -> None:
        import torch
        from hydra.utils import instantiate

        from slowlearn.losses import objective
        from slowlearn.module import log_base_value

        torch.manual_seed(cfg.seed)
        self.device, self.batches = device, batches
        self.model = instantiate(cfg.model).to(device)
        self.optimizer = instantiate(cfg.optimizer)(self.model.parameters())
        activation, loss = cfg.module.activation, cfg.module.loss
        base = log_base_value(cfg.module.log_base)
        self.objective = lambda logits, y: objective(activation, loss, logits, y, base)

    def epoch(self) -> int:
        steps = 0
        for x, y in self.batches():
            x, y = x.to(self.device), y.to(self.device)  # no-op for tensors already there
            loss = self.objective(self.model(x), y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            steps += 1
        return steps


def floor_loop(cfg: Any, device: Any, images: Any, labels: Any) -> PlainLoop:
    import torch

    x = images.to(device).float().div_(255.0)  # converted once, as a plain loop would
    y = labels.to(device)
    generator = torch.Generator().manual_seed(cfg.seed)
    batch_size = cfg.data.batch_size

    def batches() -> Iterable[tuple[Any, Any]]:
        order = torch.randperm(len(y), generator=generator).to(device)
        return ((x[index], y[index]) for index in order.split(batch_size))

    return PlainLoop(cfg, device, batches)


def naive_loop(cfg: Any, device: Any, size: int) -> PlainLoop:
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms

    dataset = datasets.MNIST(cfg.data.dir, train=True, transform=transforms.ToTensor())
    loader = DataLoader(Subset(dataset, range(size)), batch_size=cfg.data.batch_size, shuffle=True)
    return PlainLoop(cfg, device, lambda: loader)


def slowlearn_epoch(cfg: Any, device: Any, run_dir: Path) -> dict[str, float]:
    """One ``make train`` fit of one epoch, in-process, written to ``run_dir``."""
    from slowlearn.train import instantiate_run

    cfg.run_dir = str(run_dir)  # what ${hydra:runtime.output_dir} gives a real run
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule, module, _, trainer = instantiate_run(cfg)
    clock = StepsClock(device)
    trainer.callbacks.append(clock)
    fit_seconds, _ = timed(device, lambda: trainer.fit(module, datamodule=datamodule))
    return {
        "seconds": module.epoch_seconds[0],
        "steps_seconds": clock.seconds,
        "steps": trainer.global_step,
        "fit_seconds": fit_seconds,
    }


def cuda_peak_mib(device: Any) -> float | None:
    import torch

    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20


def bench_config(
    model: str, batch_size: int, args: argparse.Namespace, device: Any
) -> dict[str, Any]:
    """All rounds of the three setups for one model and batch size."""
    import torch
    from hydra.utils import instantiate

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
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup()
    images, labels = datamodule.tensors["train"]
    loops = {
        "floor": floor_loop(cfg, device, images, labels),
        "naive": naive_loop(cfg, device, len(labels)),
    }
    rounds: list[dict[str, dict[str, float]]] = []
    for index in range(args.warmup + args.repeats):
        results: dict[str, dict[str, float]] = {}
        for setup in SETUPS:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            if setup == "slowlearn":
                run_dir = args.runs / f"{model}_b{batch_size}" / f"round{index}"
                results[setup] = slowlearn_epoch(cfg, device, run_dir)
            else:
                seconds, steps = timed(device, loops[setup].epoch)
                results[setup] = {"seconds": seconds, "steps": steps}
            results[setup]["cuda_peak_mib"] = cuda_peak_mib(device)
        if index >= args.warmup:
            rounds.append(results)
        line = "  ".join(f"{s} {results[s]['seconds']:.3f}s" for s in SETUPS)
        tag = "warm-up" if index < args.warmup else f"round {index - args.warmup + 1}"
        print(f"{model} batch {batch_size} {tag}: {line}", flush=True)
    return {
        "model": model,
        "batch_size": batch_size,
        "train_samples": len(labels),
        "rounds": rounds,
        "summary": summarise(rounds),
    }


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


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


def child_env(threads: int) -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore")


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
        "+callbacks.first_step._target_=scripts.bench.FirstStepClock",
        f"+callbacks.first_step.path={clock}",
    ]
    started = time.time()
    subprocess.run(command, cwd=REPO, env=child_env(args.threads), check=True, capture_output=True)
    total = time.time() - started
    first_step = float(clock.read_text()) - started
    imports = subprocess.run(
        [
            sys.executable,
            "-c",
            "import time; t = time.perf_counter(); import slowlearn.train; "
            "print(time.perf_counter() - t)",
        ],
        cwd=REPO,
        env=child_env(args.threads),
        check=True,
        capture_output=True,
        text=True,
    )
    # Linux reports ru_maxrss in KiB: the largest of the children waited for so far.
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {
        "process_seconds": total,
        "first_step_seconds": first_step,
        "import_seconds": float(imports.stdout.strip()),
        "peak_rss_mib": peak,
    }


def environment(device: Any, threads: int) -> dict[str, Any]:
    import torch

    try:  # a copy of the tree on a GPU machine may have neither .git nor git
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "commit": commit,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "threads": threads,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pytorch_lightning": pl.__version__,
    }


def fmt(values: dict[str, float], digits: int = 3) -> str:
    return f"{values['median']:.{digits}f} ({values['min']:.{digits}f}–{values['max']:.{digits}f})"


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [
        f"Benchmark of {env['date']} (commit {env['commit'] or 'unknown'}): {env['device']}, "
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
            verdict = ""
            if setup == "slowlearn" and target:
                met = s["ratio_to_floor"]["median"] <= target
                verdict = f"≤ {target:.2f}: {'met' if met else 'MISSED'}"
            lines.append(
                f"| {result['model']} | {result['batch_size']} | {setup} "
                f"| {fmt(s['epoch_seconds'])} | {s['steps_per_second']['median']:.0f} "
                f"| {fmt(s['ratio_to_floor'], 2)} | {steps_only} | {fit} | {verdict} |"
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
        "the whole `trainer.fit` of one epoch (setup, data loading, logging).",
    ]
    return "\n".join(lines) + "\n"


def parse_args() -> argparse.Namespace:
    from slowlearn.train import available_cores

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per config")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 512])
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    parser.add_argument("--threads", type=int, default=available_cores())
    parser.add_argument("--no-process", action="store_true", help="skip the process timing")
    parser.add_argument("--out", type=Path, default=REPO / "logs" / "bench")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for make train")
    args = parser.parse_args()
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be at least 1 and --warmup at least 0")
    return args


def main() -> None:
    args = parse_args()
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    # Every invocation trains into run folders of its own: a run folder is never reused.
    (args.out / "runs").mkdir(exist_ok=True)
    args.runs = Path(
        tempfile.mkdtemp(prefix=time.strftime("%Y-%m-%d_%H-%M-%S_"), dir=args.out / "runs")
    )
    warnings.filterwarnings("ignore")
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device is visible")
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    report: dict[str, Any] = {
        "environment": environment(device, args.threads),
        "repeats": args.repeats,
        "warmup": args.warmup,
        "overrides": args.overrides,
    }
    if not args.no_process:  # first, while this process is small and the machine quiet
        report["process"] = time_process(args, "gpu" if device.type == "cuda" else "cpu")
        print("process: " + ", ".join(f"{k} {v:.2f}" for k, v in report["process"].items()))
    report["results"] = [
        bench_config(model, batch_size, args, device)
        for model in args.models
        for batch_size in args.batch_sizes
    ]
    report["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    (args.out / "bench.json").write_text(json.dumps(report, indent=2))
    table = markdown(report)
    (args.out / "bench.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
