"""What the benchmarks share (scripts/bench_epoch.py, bench_sweep.py, bench_graphs.py): timing
on a device, the plain-PyTorch floor loop, ``make train``'s runs in this process, timed child
processes, rounds that take turns, medians and ranges, the environment, and the command line
and the bench.json / bench.md they write.

The benchmarks put this folder first on sys.path (they run as ``python scripts/<bench>.py``);
a timed ``slowlearn.train`` child imports FirstStepClock as ``scripts.benchlib``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl  # the base of FirstStepClock, which a timed child imports

REPO = Path(__file__).resolve().parents[1]


class FirstStepClock(pl.Callback):
    """Writes the wall-clock time at which the first training step starts to ``path``; the
    timed process gets it as a Hydra callback, so the module needs no timing hook."""

    def __init__(self, path: str) -> None:
        self.path: Path | None = Path(path)

    def on_train_batch_start(self, *args: Any) -> None:
        if self.path is not None:
            self.path.write_text(repr(time.time()))
            self.path = None


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


def compose_config(overrides: list[str], hydra_node: bool = False) -> Any:
    """The config that ``make train ARGS="<overrides>"`` runs (with its ``hydra`` node)."""
    from hydra import compose, initialize_config_dir

    from slowlearn.naming import register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=hydra_node)


class PlainLoop:
    """The SGD loop without a framework: the config's model, objective and optimizer, seeded
    as ``make train`` seeds them; ``batches`` makes one epoch's (x, y) batches."""

    def __init__(
        self, cfg: Any, device: Any, batches: Callable[[], Iterable[tuple[Any, Any]]]
    ) -> None:
        import torch
        from hydra.utils import instantiate

        from slowlearn.losses import objective
        from slowlearn.optimizers import OPTIMIZERS
        from slowlearn.step import log_base_value

        torch.manual_seed(cfg.seed)
        self.device, self.batches = device, batches
        self.model = instantiate(cfg.model).to(device)
        optimizer = OPTIMIZERS[cfg.optimizer._target_].rule  # torch.optim's own, for one run
        settings = {k: v for k, v in cfg.optimizer.items() if not k.startswith("_")}
        self.optimizer = optimizer(self.model.parameters(), **settings)
        base = log_base_value(cfg.loss.get("log_base"))
        self.objective = objective(cfg.activation.name, cfg.loss.name, base)

    def step(self, x: Any, y: Any) -> None:
        loss = self.objective(self.model(x), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def epoch(self) -> int:
        steps = 0
        for x, y in self.batches():
            self.step(x.to(self.device), y.to(self.device))  # no-op for tensors already there
            steps += 1
        return steps


def epoch_orders(cfg: Any, device: Any, size: int) -> Callable[[], Any]:
    """The floor's sample order of each epoch in turn, on the device: a permutation per epoch
    from a generator seeded with the run's seed."""
    import torch

    generator = torch.Generator().manual_seed(cfg.seed)
    return lambda: torch.randperm(size, generator=generator).to(device)


def floor_loop(cfg: Any, device: Any, images: Any, labels: Any) -> PlainLoop:
    x, y = images.to(device), labels.to(device)  # the data module's: normalised once
    orders, batch_size = epoch_orders(cfg, device, len(y)), cfg.data.batch_size

    def batches() -> Iterable[tuple[Any, Any]]:
        return ((x[index], y[index]) for index in orders().split(batch_size))

    return PlainLoop(cfg, device, batches)


def fit_runs(cfgs: list[Any], run_dir: Path, threads: int, devices: Any = None) -> list[Any]:
    """``make train`` of each config, as one group (a single run is a group of one), in this
    process, written under ``run_dir``; the Outcomes."""
    from slowlearn.train import Job, train_and_test

    jobs = []
    for index, cfg in enumerate(cfgs):
        cfg = cfg.copy()
        cfg.run_dir = str(run_dir / f"member{index}")  # what a job's Hydra folder gives it
        jobs.append(Job.resolved(cfg))
    return train_and_test(jobs, cores=threads, devices=devices)


def cuda_peak_mib(device: Any) -> float | None:
    import torch

    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20


def training_split(cfg: Any) -> tuple[Any, Any]:
    from hydra.utils import instantiate

    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup()
    return datamodule.tensors["train"]


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def child_env(threads: int | None) -> dict[str, str]:
    extra = {"OMP_NUM_THREADS": str(threads)} if threads else {}
    return dict(os.environ, PYTHONWARNINGS="ignore", **extra)


def run_process(command: list[str], threads: int | None) -> dict[str, float]:
    """A command's wall time and its own peak resident memory (not its predecessors')."""
    started = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=REPO, env=child_env(threads), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    stderr = process.stderr.read().decode() if process.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{stderr[-3000:]}")
    return {"seconds": seconds, "peak_rss_mib": usage.ru_maxrss / 1024}  # Linux: KiB


def import_seconds(threads: int | None) -> float:
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import time; t = time.perf_counter(); import slowlearn.train; "
            "print(time.perf_counter() - t)",
        ],
        cwd=REPO,
        env=child_env(threads),
        check=True,
        capture_output=True,
        text=True,
    )
    return float(result.stdout.strip())


def cpu_model() -> str:
    """The CPU's model name, where Linux gives one: machines of one kind differ in their CPU,
    and matrix products on a CPU run at its kernels' speed for that model."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return ""
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else ""


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
        "cpu": cpu_model() or platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "threads": threads,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pytorch_lightning": pl.__version__,
    }


def machine(env: dict[str, Any]) -> str:
    """The device a benchmark ran on, in words: a GPU's name, or the CPU's model."""
    return f"cpu ({env['cpu']})" if env["device"] == "cpu" else env["device"]


def verdict(value: float, target: float, under: bool = False) -> str:
    """Whether a measure meets its target: at most ``target``, or ``under`` it."""
    met = value < target if under else value <= target
    return f"{'<' if under else '≤'} {target:.2f}: {'met' if met else 'MISSED'}"


def fmt(values: dict[str, float], digits: int = 3) -> str:
    return f"{values['median']:.{digits}f} ({values['min']:.{digits}f}–{values['max']:.{digits}f})"


def interleaved(
    args: argparse.Namespace, run_round: Callable[[int], Any], describe: Callable[[Any], str]
) -> list[Any]:
    """``run_round(index)`` for the warm-up rounds, then the timed ones, each printed: every
    round runs all setups in turn, so that a machine that slows down affects them alike."""
    rounds = []
    for index in range(args.warmup + args.repeats):
        result = run_round(index)
        if index >= args.warmup:
            rounds.append(result)
        tag = "warm-up" if index < args.warmup else f"round {index - args.warmup + 1}"
        print(f"{tag}: {describe(result)}", flush=True)
    return rounds


def parser(doc: str, device: str = "cpu", repeats: int = 5) -> argparse.ArgumentParser:
    """The options every benchmark takes; ``doc``'s first paragraph describes it."""
    from slowlearn.placement import available_cores

    parser = argparse.ArgumentParser(
        description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default=device)
    parser.add_argument("--repeats", type=int, default=repeats, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--threads", type=int, default=available_cores())
    parser.add_argument("--out", type=Path, required=True, help="bench.json and bench.md go here")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for make train")
    return parser


def begin(args: argparse.Namespace) -> Any:
    """Checks the common options, makes ``args.runs`` (a fresh folder for this invocation's
    runs: a run folder is never reused) and returns the torch device."""
    if args.repeats < 1 or args.warmup < 0:
        sys.exit("--repeats must be at least 1 and --warmup at least 0")
    args.out = args.out.resolve()
    (args.out / "runs").mkdir(parents=True, exist_ok=True)
    args.runs = Path(
        tempfile.mkdtemp(prefix=time.strftime("%Y-%m-%d_%H-%M-%S_"), dir=args.out / "runs")
    )
    warnings.filterwarnings("ignore")
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device is visible")
    torch.set_num_threads(args.threads)
    return torch.device(args.device)


def report_header(args: argparse.Namespace, device: Any) -> dict[str, Any]:
    return {
        "environment": environment(device, args.threads),
        "repeats": args.repeats,
        "warmup": args.warmup,
        "overrides": args.overrides,
    }


def write_report(args: argparse.Namespace, report: dict[str, Any], table: str) -> None:
    """<out>/bench.json (every measurement) and bench.md (the table), and the table printed."""
    (args.out / "bench.json").write_text(json.dumps(report, indent=2))
    (args.out / "bench.md").write_text(table)
    print(table)
