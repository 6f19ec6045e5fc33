"""scripts/gpu_check.sh's CPU dry run trains and benchmarks as the GPU check does (its GPU
tests skip on a CPU); `make bench-sweep`'s step and start-up parts run on tiny data, and `make
bench-levers` on its own random tensors; `make tensorboard` prints the URLs of its views."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, TINY_ARGS


def run_benchmark(script: str, options: list[str], out: Path, timeout: float) -> dict:
    """One round of ``scripts/<script>``, no warm-up, one thread: its bench.json."""
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / script), "--repeats=1", "--warmup=0"]
        + ["--threads=1", f"--out={out}", *options],
        cwd=REPO,
        env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore"),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads((out / "bench.json").read_text())


@pytest.mark.slow  # a minute of processes: make test-slow (CI runs it)
def test_gpu_check_dry_run_on_the_cpu(tiny_data: Path, tmp_path: Path) -> None:
    env = dict(
        os.environ,
        PYTHON=sys.executable,
        DATA=str(tiny_data),
        OUT=str(tmp_path),
        OMP_NUM_THREADS="1",
    )
    result = subprocess.run(
        [
            str(REPO / "scripts" / "gpu_check.sh"),
            "--cpu",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = (tmp_path / "summary.md").read_text()
    for step in ("train", "bench"):
        assert f"| {step} | ok |" in summary
    assert "Training run: completed on cpu" in summary
    assert "| default | 512 | slowlearn |" in summary
    report = json.loads((tmp_path / "bench" / "bench.json").read_text())
    assert set(report["results"][0]["summary"]) == {"floor", "slowlearn", "naive"}
    assert report["process"]["first_step_seconds"] < report["process"]["process_seconds"]


def test_make_tensorboard_prints_the_urls_of_its_views(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    fake = venv / "bin" / "tensorboard"  # says how it was started instead of serving
    fake.write_text('#!/bin/sh\necho "tensorboard $*"\n')
    fake.chmod(0o755)
    (venv / ".installed").touch()  # newer than pyproject.toml: make installs nothing
    result = subprocess.run(
        ["make", "-s", "tensorboard", f"VENV={venv}", "RUN=logs/multiruns/x", "PORT=7007"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    url = "http://localhost:7007"
    cell = "runColorGroup=regex:%5E(%5B%5E%2F%5D%2B)"
    assert result.stdout.splitlines() == [
        f"every run, one colour per cell:      {url}/?{cell}#timeseries",
        f"the seed means alone (make report):  {url}/?{cell}&runFilter=%2Fmean%24#timeseries",
        f"each mean with its min-max band:     {url}/#custom_scalars",
        f"settings and results of every run:   {url}/#hparams",
        "tensorboard --logdir logs/multiruns/x --port 7007",
    ]


@pytest.mark.slow  # several benchmark processes: make test-slow (CI runs it)
def test_bench_sweep_times_the_step_against_a_bare_loop_and_the_start_up(
    tiny_data: Path, tiny_sweep: Path, tmp_path: Path
) -> None:
    """make bench-sweep's step and start-up parts, on tiny data: each writes its table."""
    sweep = tmp_path / "sweep"  # the report writes into the folder it reads
    shutil.copytree(tiny_sweep, sweep)
    options = ["--parts", "step", "startup", f"--report-sweep={sweep}", f"data.dir={tiny_data}"]
    options += [arg for arg in TINY_ARGS if not arg.startswith(("trainer.max_epochs", "+"))]
    report = run_benchmark("bench_sweep.py", options, tmp_path / "bench", timeout=300)["sweep"]
    assert set(report) == {"step", "startup"}
    step = report["step"]
    assert step["rounds"][0]["group_ms"] > 0 and step["rounds"][0]["bare_ms"] > 0
    assert step["group_phases_ms"]["backward"] > 0 and step["bare_phases_ms"]["update"] > 0
    assert set(report["startup"]["imports"]["python -m slowlearn.report"]).isdisjoint(
        {"torch", "pytorch_lightning"}
    )
    table = (tmp_path / "bench" / "bench.md").read_text()
    assert "| ms per training step |" in table and "import torch" in table


@pytest.mark.slow
def test_the_study_stage_times_each_study_on_a_tiny_grid(tiny_data: Path, tmp_path: Path) -> None:
    """The GPU check's study stage, dry run on the CPU: every study runs, its time is split,
    and a budget too small for the rest skips them by name."""
    script = str(REPO / "scripts" / "study_times.py")
    args = [sys.executable, script, "--out", str(tmp_path), "--tiny", "threads=1"]
    args += [f"data.dir={tiny_data}"]
    result = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = json.loads((tmp_path / "studies.json").read_text())["rows"]
    assert [row["study"] for row in rows] == [
        "ablation",
        "lr_fair, max_members 64",
        "lr_fair, max_members 128",
        "lr_fair, one group",
        "depth",
        "optimizers",
    ]
    assert all(row["status"] == "ok" and row["training"] > 0 for row in rows)
    assert [row["groups"] for row in rows] == [1, 1, 1, 1, 2, 1]  # depth: two models
    cut = subprocess.run(
        [*args[:3], str(tmp_path / "cut"), "--budget", "1", *args[4:]],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cut.returncode == 0
    assert "Skipped to stay within the budget: ablation, lr_fair, max_members 64" in (
        (tmp_path / "cut" / "studies.md").read_text()
    )


@pytest.mark.slow  # a benchmark process: make test-slow (CI runs it)
def test_the_lever_benchmark_compares_each_lever_with_the_step(tmp_path: Path) -> None:
    """make bench-levers: each lever timed against the step's way, and the fused objective
    and the per-order products give the step's values bit for bit (oneDNN's may differ)."""
    levers = run_benchmark("bench_levers.py", ["--calls=2"], tmp_path, timeout=120)["levers"]
    objectives, orders = (levers[name] for name in list(levers)[:2])
    assert "objective" in list(levers)[0] and "data order" in list(levers)[1]
    assert objectives["bit_identical"] and objectives["max_abs_difference"] == 0
    assert orders["max_abs_difference"] < 1e-3
    assert all(
        r["step_ms"] > 0 and r["lever_ms"] > 0 for lever in levers.values() for r in lever["rounds"]
    )
    assert "| lever | the step's way, ms |" in (tmp_path / "bench.md").read_text()
