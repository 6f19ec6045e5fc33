"""How close slowlearn trains to the plain-PyTorch floor, and what a batched sweep saves, each
measured side by side in one run.

    python scripts/bench.py --device cpu --repeats 5 --out logs/bench [hydra overrides ...]
    python scripts/bench.py --sweep --repeats 2 --out logs/bench-sweep   (make bench-sweep)

Epoch mode: for each model (the default DMLP and the ablation's) and batch size, three setups
take turns, one epoch each, round after round (floor, slowlearn, naive, floor, ...), so that a
machine that slows down or speeds up during the run affects them alike:

- floor: a plain PyTorch loop over the training split as float tensors on the device, a
  random permutation per epoch; the same model, objective, optimizer and seed.
- slowlearn: the real path of ``make train`` (its config, TensorBoard logging, diagnostics,
  checkpoints, the validation pass), one run of one epoch per round, in this process.
- naive: the tutorial setup, torchvision's MNIST with ToTensor through a shuffling
  DataLoader, feeding the plain loop; as many samples as the training split.

It also times a whole ``python -m slowlearn.train trainer.max_epochs=1`` process.

Sweep mode: the 18-run ablation (3 epochs) as one command with the batched launcher and with
the basic one, taking turns, and where each one's time went (every run's metrics.json says
it); the training steps of one 18-member group against the sum of the 18 members' own floor
epochs, taking turns in this process; and the peak memory of the batched command against
one single run's. Results: <out>/bench.json and bench.md.
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
# Issue 9's targets for the batched ablation.
SWEEP_TARGETS = {"command": 0.33, "group_training": 0.45, "memory": 1.5}
ABLATION = ["experiment=ablation", "+trainer.enable_progress_bar=false"]
LAUNCHERS = ("batched", "basic")
# Issue 12: on a CUDA device, eager steps against chunks replayed as CUDA graphs.
GRAPH_SETUPS = ("floor", "floor graphed", "slowlearn eager", "slowlearn graphed")
GRAPH_EPOCHS = 3
GRAPH_TARGETS = {"default_epoch_steps": 0.15, "ablation_group_training": 2.0, "make_sweep": 30.0}


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
        from slowlearn.step import log_base_value

        torch.manual_seed(cfg.seed)
        self.device, self.batches = device, batches
        self.model = instantiate(cfg.model).to(device)
        optimizer = getattr(torch.optim, cfg.optimizer._target_.rsplit(".", 1)[-1])
        settings = {k: v for k, v in cfg.optimizer.items() if not k.startswith("_")}
        self.optimizer = optimizer(self.model.parameters(), **settings)
        base = log_base_value(cfg.loss.log_base)
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


def naive_loop(cfg: Any, device: Any, size: int) -> PlainLoop:
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms

    dataset = datasets.MNIST(cfg.data.dir, train=True, transform=transforms.ToTensor())
    loader = DataLoader(Subset(dataset, range(size)), batch_size=cfg.data.batch_size, shuffle=True)
    return PlainLoop(cfg, device, lambda: loader)


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
    rounds: list[dict[str, dict[str, float]]] = []
    for index in range(args.warmup + args.repeats):
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
    process = run_process(command, args.threads)
    return {
        "process_seconds": process["seconds"],
        "first_step_seconds": float(clock.read_text()) - started,
        "import_seconds": import_seconds(args.threads),
        "peak_rss_mib": process["peak_rss_mib"],
    }


# ------------------------------------------------------------------ sweep mode


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
    rounds = []
    for index in range(args.warmup + args.repeats):
        outcomes = fit_runs(cfgs, args.runs / "group" / f"round{index}", args.threads)
        group = outcomes[0].record["seconds"]["training"]
        torch.set_num_threads(args.threads)
        floors = [timed(device, floor_loop(cfg, device, images, labels).epoch)[0] for cfg in cfgs]
        if index >= args.warmup:
            rounds.append({"group": group, "floor_sum": sum(floors)})
        print(f"group epoch {group:.2f}s, 18 floor epochs {sum(floors):.2f}s", flush=True)
    return rounds


def bench_sweep(args: argparse.Namespace, device: Any) -> dict[str, Any]:
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
    """CUDA graphs against eager steps, side by side (issue 12's targets)."""
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
    rounds = []
    for index in range(args.warmup + args.repeats):
        results = graphs_round(cfg, loops, args, device, index)
        if index >= args.warmup:
            rounds.append(results)
        line = "  ".join(f"{s} {steady(results[s]['steps_seconds']):.3f}s" for s in GRAPH_SETUPS)
        print(f"default batch {cfg.data.batch_size} round {index}: {line}", flush=True)
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
        f"{env['device']}, torch {env['torch']}, Lightning {env['pytorch_lightning']}; "
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


def verdict(value: float, target: float, under: bool = False) -> str:
    """Whether a measure meets its target: at most ``target``, or ``under`` it."""
    met = value < target if under else value <= target
    return f"{'<' if under else '≤'} {target:.2f}: {'met' if met else 'MISSED'}"


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


def parse_args() -> argparse.Namespace:
    from slowlearn.train import available_cores

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--sweep", action="store_true", help="batched against basic sweeps")
    parser.add_argument(
        "--graphs", action="store_true", help="CUDA graphs against eager steps (--device cuda)"
    )
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (5; sweep: 2)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 512])
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    parser.add_argument("--threads", type=int, default=available_cores())
    parser.add_argument("--no-process", action="store_true", help="skip the process timing")
    parser.add_argument("--out", type=Path, default=REPO / "logs" / "bench")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for make train")
    args = parser.parse_args()
    args.repeats = args.repeats if args.repeats is not None else (2 if args.sweep else 5)
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
    if args.graphs:
        if device.type != "cuda":
            sys.exit("--graphs needs --device cuda")
        report["graphs"] = bench_graphs(args, device)
        table = graphs_markdown(report)
    elif args.sweep:
        report["sweep"] = bench_sweep(args, device)
        table = sweep_markdown(report)
    else:
        if not args.no_process:  # first, while this process is small and the machine quiet
            report["process"] = time_process(args, "gpu" if device.type == "cuda" else "cpu")
            print("process: " + ", ".join(f"{k} {v:.2f}" for k, v in report["process"].items()))
        report["results"] = [
            bench_config(model, batch_size, args, device)
            for model in args.models
            for batch_size in args.batch_sizes
        ]
        report["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        table = markdown(report)
    (args.out / "bench.json").write_text(json.dumps(report, indent=2))
    (args.out / "bench.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
