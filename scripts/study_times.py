"""Whole studies timed on one device: the study stage of scripts/gpu_check.sh.

    python scripts/study_times.py --out OUT [--budget 360] [--tiny] [Hydra overrides ...]

Runs, in order, `make sweep`'s two commands (the batched sweep, then its report) for the
ablation; lr_fair with hydra.launcher.max_members 64, 128 and all jobs in one group; depth; and
optimizers. Each sweep's wall time is split into start and composing, training, evaluation and
report, and written to OUT/studies.md and OUT/studies.json as soon as it ends, so that a run cut
short keeps what it measured. A study that would start with less than its estimate left of the
budget is skipped and named. --tiny runs the same list on a tiny grid (a CPU dry run on small
data: pass data.dir and the like as overrides).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# name, preset, overrides, a first guess of its seconds on an H200 (used to skip ahead of time)
STUDIES: list[tuple[str, str, list[str], float]] = [
    ("ablation", "ablation", [], 20),
    ("lr_fair, max_members 64", "lr_fair", ["hydra.launcher.max_members=64"], 60),
    ("lr_fair, max_members 128", "lr_fair", ["hydra.launcher.max_members=128"], 60),
    ("lr_fair, one group", "lr_fair", ["hydra.launcher.max_members=100000"], 60),
    ("depth", "depth", [], 90),
    ("optimizers", "optimizers", [], 90),
]
# The tiny grid: one seed, two cells or lrs, a few steps (the overrides replace the sweeps').
TINY = {
    "ablation": ["cell=sigmoid_mse,softmax_nll", "seed=0", "model.hidden_sizes=[16]"],
    "lr_fair": [
        "cell=sigmoid_mse,softmax_nll",
        "optimizer.lr=0.1,1",
        "seed=0",
        "model.init=default",
        "model.hidden_sizes=[16]",
    ],
    "depth": ["cell=sigmoid_mse", "model.hidden_sizes=[8],[8,8]", "optimizer.lr=1", "seed=0"],
    "optimizers": [
        "cell=sigmoid_mse",
        "optimizer=adam",
        "optimizer.lr=0.001,0.01",
        "seed=0",
        "model.init=default",
        "model.hidden_sizes=[16]",
    ],
}
TINY_RUN = ["trainer.max_epochs=1", "data.val_size=100"]


def group_seconds(sweep: Path) -> dict[str, float]:
    """Training, evaluation and data seconds summed over the sweep's groups: the members of a
    group share one record of where its time went, so each group counts once."""
    groups: dict[str, dict[str, float]] = {}
    for path in sweep.rglob("metrics.json"):
        record = json.loads(path.read_text())
        seconds = record.get("seconds")
        if seconds:
            groups.setdefault(json.dumps(seconds, sort_keys=True), seconds)
    total = {"training": 0.0, "evaluation": 0.0, "data": 0.0, "checkpoints": 0.0}
    for seconds in groups.values():
        for key in total:
            total[key] += float(seconds.get(key, 0.0))
    return total | {"groups": float(len(groups))}


def run_study(
    name: str, preset: str, overrides: list[str], out: Path, timeout: float
) -> dict[str, Any]:
    sweep = out / "sweeps" / name.replace(" ", "_").replace(",", "")
    command = [
        sys.executable,
        "-m",
        "slowlearn.train",
        "-m",
        f"experiment={preset}",
        f"hydra.sweep.dir={sweep}",
        "hydra/launcher=batched",
        "+trainer.enable_progress_bar=false",
        *overrides,
    ]
    started = time.perf_counter()
    try:
        trained = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        status = "ok" if trained.returncode == 0 else f"exit {trained.returncode}"
        (out / f"{sweep.name}.log").write_text(trained.stdout + trained.stderr)
    except subprocess.TimeoutExpired:
        status = f"cut at {timeout:.0f} s"
    command_seconds = time.perf_counter() - started
    report_started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "slowlearn.report", str(sweep)], capture_output=True)
    report = time.perf_counter() - report_started
    spent = group_seconds(sweep)
    runs = sum(1 for _ in sweep.rglob("metrics.json"))
    inside = spent["training"] + spent["evaluation"] + spent["data"] + spent["checkpoints"]
    return {
        "study": name,
        "status": status,
        "runs": runs,
        "groups": int(spent["groups"]),
        "wall_seconds": command_seconds + report,
        "start_and_composing": command_seconds - inside,
        "training": spent["training"],
        "evaluation": spent["evaluation"],
        "data_and_checkpoints": spent["data"] + spent["checkpoints"],
        "report": report,
    }


def write(out: Path, rows: list[dict[str, Any]], skipped: list[str], budget: float) -> None:
    (out / "studies.json").write_text(json.dumps({"rows": rows, "skipped": skipped}, indent=1))
    columns = [
        "study",
        "status",
        "runs",
        "groups",
        "wall_seconds",
        "start_and_composing",
        "training",
        "evaluation",
        "data_and_checkpoints",
        "report",
    ]
    lines = [
        f"Studies within a budget of {budget:.0f} s (seconds; training and evaluation summed "
        "over the groups, start and composing the rest of the sweep command):",
        "",
        "| " + " | ".join(columns) + " |",
        "|---|---|" + "---:|" * (len(columns) - 2),
    ]
    for row in rows:
        cells = [f"{row[c]:.2f}" if isinstance(row[c], float) else str(row[c]) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    if skipped:
        lines += ["", "Skipped to stay within the budget: " + ", ".join(skipped) + "."]
    (out / "studies.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--budget", type=float, default=360.0, help="seconds for all studies")
    parser.add_argument("--tiny", action="store_true", help="a tiny grid: a CPU dry run")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every study")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    for name, preset, overrides, guess in STUDIES:
        left = args.budget - (time.perf_counter() - started)
        estimate = rows[-1]["wall_seconds"] if args.tiny and rows else guess
        if left < estimate:
            skipped.append(name)
            write(args.out, rows, skipped, args.budget)
            continue
        extra = [*TINY[preset], *TINY_RUN] if args.tiny else []
        rows.append(run_study(name, preset, [*overrides, *extra, *args.overrides], args.out, left))
        write(args.out, rows, skipped, args.budget)
        print(f"{name}: {rows[-1]['status']}, {rows[-1]['wall_seconds']:.1f} s", flush=True)
    print((args.out / "studies.md").read_text())
    return 0 if all(row["status"] == "ok" for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
