"""scripts/gpu_check.sh's CPU dry run goes through every step of the GPU check."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


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
    for step in ("gpu_tests", "train", "bench"):
        assert f"| {step} | ok |" in summary
    assert "Training run: completed on cpu" in summary
    assert "| default | 512 | slowlearn |" in summary
    report = json.loads((tmp_path / "bench" / "bench.json").read_text())
    assert set(report["results"][0]["summary"]) == {"floor", "slowlearn", "naive"}
    assert report["process"]["first_step_seconds"] < report["process"]["process_seconds"]
