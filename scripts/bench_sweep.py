"""What a batched sweep saves (``make bench-sweep``), measured side by side in one run: the
18-run ablation (3 epochs) as one command with the batched launcher and with the basic one,
taking turns, and where each one's time went (every run's metrics.json says it); the training
steps of one 18-member group against the sum of the 18 members' own floor epochs, taking turns
in this process; and the peak memory of the batched command against one single run's.
It also times the group's training step against a bare stacked loop over the same members and
mini-batches, phase by phase (``step_against_bare``), and ``make report`` on the ablation
against a bare ``python -c "import torch"``, with each command's imports (``startup``).

    python scripts/bench_sweep.py --repeats 2 --out logs/bench-sweep [hydra overrides]

Results: <out>/bench.json and bench.md.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from benchlib import (
    REPO,
    begin,
    child_env,
    compose_config,
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
    report = run_process([sys.executable, "-m", "slowlearn.report", str(sweep_dir)], None)
    records = [read_metrics(path.parent) for path in sweep_dir.rglob("metrics.json")]
    assert len(records) == 18 and {r["status"] for r in records} == {"completed"}
    phases: dict[str, float] = {}
    for record in records:  # a member shares its group's time: count each group once
        for phase, seconds in record["seconds"].items():
            phases[phase] = phases.get(phase, 0.0) + seconds / record["group_size"]
    return {
        **process,
        "report_seconds": report["seconds"],
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


# ------------------------------------------------------------------ the step against a bare loop

STEP_TARGET = 1.3  # the group's training step over the bare stacked loop's, at most
# Where a step's time goes: the function each phase is timed in (``PhaseTimers``).
PHASES = ("gather", "forward", "objectives", "backward", "update", "diagnostics", "logging")


class BareLoop:
    """The group's members trained in the simplest stacked form: weights [R, in, out] and
    ``torch.baddbmm``, each member's own mini-batch gathered with ``index_select``, each cell's
    objective written out over its members (``split``, views), the summed loss's backward
    and SGD as one ``_foreach_addcmul_``. No logging, diagnostics, freezing or Lightning."""

    def __init__(self, module: Any, members: list[Any]) -> None:
        import torch

        self.params = [p.detach().clone().requires_grad_() for p in module.network.stacked]
        lr = torch.tensor([member.lr for member in members])
        self.lrs = [lr.view(-1, *[1] * (p.dim() - 1)) for p in self.params]
        self.sizes = [len(range(*cell.members.indices(len(members)))) for cell in module.step.cells]
        first = [members[cell.members.start] for cell in module.step.cells]
        self.cells = [(m.activation, m.loss) for m in first]
        self.seconds = dict.fromkeys(PHASES, 0.0)

    @staticmethod
    def objective(activation: str, loss: str, z: Any, t: Any) -> Any:
        import torch
        import torch.nn.functional as F

        from slowlearn.losses import softmax_log_one_minus

        if activation == "sigmoid":
            o, log_o, log_not_o = torch.sigmoid, F.logsigmoid, lambda z: F.logsigmoid(-z)
        else:
            o = lambda z: torch.softmax(z, dim=-1)  # noqa: E731
            log_o, log_not_o = lambda z: torch.log_softmax(z, dim=-1), softmax_log_one_minus
        if loss == "mse":
            per_sample = 0.5 * (o(z) - t).square().sum(dim=-1)
        elif loss == "bce":
            per_sample = -(t * log_o(z) + (1 - t) * log_not_o(z)).sum(dim=-1)
        else:
            per_sample = -(t * log_o(z)).sum(dim=-1)
        return per_sample.mean(dim=-1)

    def steps(self, chunk: Any, timed: bool = False) -> None:
        import time

        import torch

        w1, b1, w2, b2 = self.params
        clock = time.perf_counter if timed else (lambda: 0.0)
        seconds = self.seconds
        for index in chunk.indices:
            t0 = clock()
            rows = index.reshape(-1)
            x = chunk.images.index_select(0, rows).view(*index.shape, -1)
            y = chunk.labels.index_select(0, rows).view(index.shape)
            t1 = clock()
            z = torch.baddbmm(
                b2.unsqueeze(1), torch.sigmoid(torch.baddbmm(b1.unsqueeze(1), x, w1)), w2
            )
            t2 = clock()
            t = torch.zeros_like(z).scatter_(-1, y.unsqueeze(-1), 1.0)
            parts = zip(self.cells, z.split(self.sizes), t.split(self.sizes), strict=True)
            loss = torch.cat([self.objective(*cell, zc, tc) for cell, zc, tc in parts]).sum()
            t3 = clock()
            for p in self.params:
                p.grad = None
            loss.backward()
            t4 = clock()
            with torch.no_grad():
                torch._foreach_addcmul_(
                    self.params, [p.grad for p in self.params], self.lrs, value=-1
                )
            t5 = clock()
            if timed:
                seconds["gather"] += t1 - t0
                seconds["forward"] += t2 - t1
                seconds["objectives"] += t3 - t2
                seconds["backward"] += t4 - t3
                seconds["update"] += t5 - t4


class PhaseTimers:
    """Wall time spent inside the functions of each phase of a group's training steps, while
    ``training_step`` runs (not evaluation): wrappers installed on the classes for one fit."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.active = False
        self.saved: list[tuple[Any, str, Any]] = []

    def wrap(self, owner: Any, name: str, phase: str | None) -> None:
        import functools
        import time

        original = owner.__dict__[name]
        timers = self

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if phase is None:  # the window: training_step
                timers.active = True
                try:
                    return original(*args, **kwargs)
                finally:
                    timers.active = False
            if not timers.active:
                return original(*args, **kwargs)
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                timers.seconds[phase] += time.perf_counter() - started

        self.saved.append((owner, name, original))
        setattr(owner, name, timed)

    def __enter__(self) -> PhaseTimers:
        import time

        import torch
        from pytorch_lightning.core.optimizer import LightningOptimizer

        from slowlearn.data import Chunk
        from slowlearn.member_logs import MemberLogs
        from slowlearn.model import MemberStack
        from slowlearn.module import LitClassifier
        from slowlearn.step import MemberStep

        self.wrap(LitClassifier, "training_step", None)
        self.wrap(MemberStack, "forward", "forward")
        self.wrap(MemberStep, "member_losses", "objectives")
        self.wrap(torch.Tensor, "backward", "backward")
        # The update as the trainer makes it: Lightning's wrapper, then MemberOptimizer.step.
        self.wrap(LightningOptimizer, "step", "update")
        self.wrap(MemberStep, "record_diagnostics", "diagnostics")
        self.wrap(MemberLogs, "pass_on", "logging")
        original_iter, timers = Chunk.__iter__, self

        def gathered(chunk: Any) -> Any:  # each mini-batch's gather, when its step asks
            batches = original_iter(chunk)
            while True:
                started = time.perf_counter()
                batch = next(batches, None)
                timers.seconds["gather"] += time.perf_counter() - started
                if batch is None:
                    return
                yield batch

        self.saved.append((Chunk, "__iter__", original_iter))
        Chunk.__iter__ = gathered
        return self

    def __exit__(self, *exc: Any) -> None:
        for owner, name, original in reversed(self.saved):
            setattr(owner, name, original)


def step_against_bare(args: argparse.Namespace, device: Any) -> dict[str, Any]:
    """Rounds of: one epoch of the 18-member group as the trainer runs it (its training
    seconds over its steps), then one epoch of the bare loop over the same members, initial
    weights and mini-batches. Then one epoch of each with its phases timed."""
    import time

    import torch
    from hydra.utils import instantiate

    from slowlearn.groups import build_module

    cfgs = ablation_configs(args, device)
    datamodule = instantiate(cfgs[0].data, seed=[cfg.data.seed for cfg in cfgs])
    datamodule.prepare_data()
    datamodule.setup()
    chunks = list(datamodule.train_dataloader())  # epoch 0's orders, as the group's first
    steps = sum(len(chunk) for chunk in chunks)

    def bare_epoch(timed: bool = False) -> tuple[float, BareLoop]:
        module = build_module(cfgs)
        loop = BareLoop(module, list(module.step.members))
        torch.set_num_threads(args.threads)
        started = time.perf_counter()
        for chunk in chunks:
            loop.steps(chunk, timed)
        return time.perf_counter() - started, loop

    def group_epoch(index: int) -> dict[str, Any]:
        outcome = fit_runs(cfgs, args.runs / "step" / f"round{index}", args.threads)[0]
        return {"seconds": outcome.record["seconds"]["training"]}

    def one_round(index: int) -> dict[str, float]:
        group = group_epoch(index)["seconds"]
        bare, _ = bare_epoch()
        return {"group_ms": 1000 * group / steps, "bare_ms": 1000 * bare / steps}

    def describe(result: dict[str, float]) -> str:
        return (
            f"group step {result['group_ms']:.2f} ms, bare step {result['bare_ms']:.2f} ms, "
            f"ratio {result['group_ms'] / result['bare_ms']:.2f}"
        )

    rounds = interleaved(args, one_round, describe)
    with PhaseTimers() as timers:
        profiled = group_epoch(len(rounds) + args.warmup)["seconds"]
    bare_seconds, loop = bare_epoch(timed=True)
    return {
        "steps": steps,
        "rounds": rounds,
        "group_phases_ms": {k: 1000 * v / steps for k, v in timers.seconds.items()},
        "group_profiled_ms": 1000 * profiled / steps,
        "bare_phases_ms": {k: 1000 * v / steps for k, v in loop.seconds.items()},
        "bare_profiled_ms": 1000 * bare_seconds / steps,
    }


# ------------------------------------------------------------------ start-up

STARTUP_COMMANDS = {
    "python -m slowlearn.train": "slowlearn.train",
    "python -m slowlearn.report": "slowlearn.report",
    "python -m slowlearn.report.results": "slowlearn.report.results",
}
# The packages whose modules' import time the table names, if imported.
IMPORTED = (
    "torch",
    "pytorch_lightning",
    "torchmetrics",
    "torchvision",
    "tensorboard",
    "hydra",
    "matplotlib",
    "numpy",
    "sympy",
    "triton",
)


def import_times(module: str) -> dict[str, float]:
    """``python -X importtime -c 'import <module>'``: seconds in all, and the time spent in
    the modules of each of IMPORTED that it imports (their own code, summed: a package's
    imports of other packages count for those)."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        cwd=REPO,
        env=child_env(None),
        check=True,
        capture_output=True,
        text=True,
    )
    total, own = 0.0, dict.fromkeys(IMPORTED, 0.0)
    for line in result.stderr.splitlines():
        fields = line.removeprefix("import time:").split("|")
        if len(fields) != 3 or not fields[0].strip().isdigit():
            continue
        name = fields[2].strip()
        if name == module:
            total = int(fields[1]) / 1e6
        package = name.split(".")[0]
        if package in own:
            own[package] += int(fields[0]) / 1e6
    return {"total": total} | {name: seconds for name, seconds in own.items() if seconds}


def startup(args: argparse.Namespace, sweep_dir: Path) -> dict[str, Any]:
    """``make report`` on the ablation and a bare ``python -c "import torch"``, taking turns,
    and each command's imports."""
    rounds = []
    for index in range(args.repeats + 1):
        torch_only = run_process([sys.executable, "-c", "import torch"], None)["seconds"]
        report = run_process([sys.executable, "-m", "slowlearn.report", str(sweep_dir)], None)
        rounds.append({"import_torch": torch_only, "report": report["seconds"]})
        print(
            f"round {index + 1}: make report {report['seconds']:.2f}s, import torch "
            f"{torch_only:.2f}s",
            flush=True,
        )
    imports = {command: import_times(module) for command, module in STARTUP_COMMANDS.items()}
    return {"rounds": rounds, "imports": imports}


def bench_sweep(args: argparse.Namespace, device: Any) -> dict[str, Any]:
    """The two commands taking turns (no warm-up: each is a cold start, as a user's is), a
    single run's command beside each pair, then the start-up, the step against the bare loop
    and the group against the floor: those of ``args.parts``."""
    sweep: dict[str, Any] = {}
    if "commands" in args.parts:
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
        sweep |= {"commands": commands, "single_run": single}
        sweep["import_seconds"] = import_seconds(None)
    if "startup" in args.parts:
        report_sweep = args.report_sweep or args.runs / "batched0"
        if not report_sweep.is_dir():
            sys.exit("--parts startup without commands needs --report-sweep <ablation sweep>")
        sweep["startup"] = startup(args, report_sweep)
    if "step" in args.parts:
        sweep["step"] = step_against_bare(args, device)
    if "floor" in args.parts:
        sweep["group_rounds"] = group_against_floor(args, device)
    return sweep


def sweep_markdown(report: dict[str, Any]) -> str:
    env, sweep = report["environment"], report["sweep"]
    lines = [
        f"Sweep benchmark of {env['date']} (commit {env['commit'] or 'unknown'}): "
        f"{machine(env)}, {env['cores']} cores, {env['threads']} threads, torch "
        f"{env['torch']}, Lightning {env['pytorch_lightning']}; {report['repeats']} rounds, "
        "the setups taking turns, ratios taken round by round.",
        "",
    ]
    if "commands" in sweep:
        lines += commands_markdown(sweep)
    if "step" in sweep:
        lines += [*step_markdown(sweep["step"]), ""]
    if "startup" in sweep:
        lines += [*startup_markdown(sweep["startup"]), ""]
    if "group_rounds" in sweep:
        group = [r["group"] / r["floor_sum"] for r in sweep["group_rounds"]]
        lines += [
            "| measure | group | floor | ratio, median (min–max) | target |",
            "|---|---:|---:|---:|---|",
            "| training steps of one 18-member group vs the sum of their 18 floor epochs "
            f"(1 epoch), s | {fmt(spread([r['group'] for r in sweep['group_rounds']]), 2)} | "
            f"{fmt(spread([r['floor_sum'] for r in sweep['group_rounds']]), 2)} | "
            f"{fmt(spread(group), 3)} "
            f"| {verdict(statistics.median(group), SWEEP_TARGETS['group_training'])} |",
            "",
        ]
    return "\n".join(lines)


def commands_markdown(sweep: dict[str, Any]) -> list[str]:
    commands = sweep["commands"]
    ratios = [
        batched["seconds"] / basic["seconds"]
        for batched, basic in zip(commands["batched"], commands["basic"], strict=True)
    ]
    batched_peak = max(r["peak_rss_mib"] for r in commands["batched"])
    single_peak = max(r["peak_rss_mib"] for r in sweep["single_run"])
    accuracies = [
        abs(b["test_acc"][name] - a["test_acc"][name])
        for b, a in zip(commands["batched"], commands["basic"], strict=True)
        for name in b["test_acc"]
    ]

    lines = [
        "| measure | batched | basic | ratio, median (min–max) | target |",
        "|---|---:|---:|---:|---|",
        f"| the 18-run ablation command (3 epochs), s | "
        f"{fmt(spread([r['seconds'] for r in commands['batched']]), 1)} | "
        f"{fmt(spread([r['seconds'] for r in commands['basic']]), 1)} | {fmt(spread(ratios), 3)} "
        f"| {verdict(statistics.median(ratios), SWEEP_TARGETS['command'])} |",
        f"| peak resident memory, MiB: batched command vs one single run | {batched_peak:.0f} | "
        f"{single_peak:.0f} (single run) | {batched_peak / single_peak:.2f} | "
        f"{verdict(batched_peak / single_peak, SWEEP_TARGETS['memory'])} |",
        "",
        f"Test accuracies, batched against basic, run by run: largest difference "
        f"{100 * max(accuracies):.2f} points over {len(accuracies)} runs.",
        "",
        "Where each command's time went (median over rounds, seconds; a group's phases once; "
        "report: `python -m slowlearn.report` on the sweep, after the command, as `make sweep` "
        "runs it):",
        "",
        "| launcher | start (imports) | data | training | evaluation | checkpoints | composing, "
        "records, Lightning and the rest | command | report |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    start = sweep["import_seconds"]
    for launcher in LAUNCHERS:
        runs = commands[launcher]
        phase = {
            name: statistics.median(r["phases"].get(name, 0.0) for r in runs)
            for name in ("data", "training", "evaluation", "checkpoints")
        }
        total = statistics.median(r["seconds"] for r in runs)
        report_seconds = statistics.median(r["report_seconds"] for r in runs)
        rest = total - start - sum(phase.values())
        cells = " | ".join(f"{phase[name]:.1f}" for name in phase)
        lines.append(
            f"| {launcher} | {start:.1f} | {cells} | {rest:.1f} | {total:.1f} "
            f"| {report_seconds:.1f} |"
        )
    return [*lines, ""]


def step_markdown(step: dict[str, Any]) -> list[str]:
    ratios = [r["group_ms"] / r["bare_ms"] for r in step["rounds"]]
    group, bare = step["group_phases_ms"], step["bare_phases_ms"]
    lines = [
        f"The group's training step against a bare stacked loop over the same 18 members, "
        f"initial weights and mini-batches (1 epoch, {step['steps']} steps, taking turns):",
        "",
        "| measure | group (trainer) | bare loop | ratio, median (min–max) | target |",
        "|---|---:|---:|---:|---|",
        f"| ms per training step | {fmt(spread([r['group_ms'] for r in step['rounds']]), 2)} | "
        f"{fmt(spread([r['bare_ms'] for r in step['rounds']]), 2)} | {fmt(spread(ratios), 3)} | "
        f"{verdict(statistics.median(ratios), STEP_TARGET)} |",
        "",
        "Where a step went, ms (one more epoch of each, every phase timed; the group's update "
        "includes Lightning's optimizer wrapper, its rest the training loop, Lightning's hooks "
        "and the targets):",
        "",
        "| phase | group | bare loop |",
        "|---|---:|---:|",
    ]
    for phase in PHASES:
        lines.append(f"| {phase} | {group[phase]:.2f} | {bare[phase]:.2f} |")
    lines += [
        f"| rest | {step['group_profiled_ms'] - sum(group.values()):.2f} | "
        f"{step['bare_profiled_ms'] - sum(bare.values()):.2f} |",
        f"| step (timed epoch) | {step['group_profiled_ms']:.2f} | "
        f"{step['bare_profiled_ms']:.2f} |",
    ]
    return lines


def startup_markdown(startup: dict[str, Any]) -> list[str]:
    rounds = startup["rounds"]
    report = statistics.median(r["report"] for r in rounds)
    torch_only = statistics.median(r["import_torch"] for r in rounds)
    lines = [
        f'`make report` on the batched ablation against `python -c "import torch"`, taking '
        f"turns ({len(rounds)} rounds): report {fmt(spread([r['report'] for r in rounds]), 2)} s, "
        f"import torch {fmt(spread([r['import_torch'] for r in rounds]), 2)} s; "
        f"{verdict(report / torch_only, 1.0, under=True)} (ratio {report / torch_only:.2f}).",
        "",
        "Imports of each command (`python -X importtime`, seconds: in all, and in the modules "
        "of each package, their own code; empty: not imported):",
        "",
        "| command | total | " + " | ".join(IMPORTED) + " |",
        "|---|" + "---:|" * (len(IMPORTED) + 1),
    ]
    for command, times in startup["imports"].items():
        cells = " | ".join(f"{times[n]:.2f}" if n in times else "" for n in IMPORTED)
        lines.append(f"| `{command}` | {times['total']:.2f} | {cells} |")
    return lines


PARTS = ("commands", "startup", "step", "floor")


def main() -> None:
    options = parser(__doc__, repeats=2)
    options.add_argument(
        "--parts", nargs="+", choices=PARTS, default=list(PARTS), help="what to measure"
    )
    options.add_argument(
        "--report-sweep",
        type=Path,
        help="the ablation sweep that startup's make report reads, without --parts commands",
    )
    args = options.parse_args()
    device = begin(args)
    report = report_header(args, device)
    report["sweep"] = bench_sweep(args, device)
    write_report(args, report, sweep_markdown(report))


if __name__ == "__main__":
    main()
