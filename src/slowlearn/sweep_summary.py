"""The line that ends every sweep: how many of its runs ended how, read from their metrics.json.

    336 runs: 315 completed, 21 diverged; make report RUN=logs/multiruns/lr_fair/... lists them

A Hydra callback (``hydra.callbacks.sweep_summary`` in conf/hydra/default.yaml), so that every
launcher prints it. Hydra instantiates callbacks at the start of every run, single runs too, so
this module imports neither torch nor Lightning.
"""

from __future__ import annotations

import atexit
from collections import Counter
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from slowlearn.records import read_metrics

# The statuses a finished run records (slowlearn.records), in the order the line names them;
# any other (a run still "running" when its group failed) follows, by name.
STATUSES = ("completed", "diverged", "failed", "interrupted")


def run_statuses(sweep_dir: Path) -> Counter[str]:
    """How many runs below ``sweep_dir`` recorded each status in their metrics.json."""
    statuses: Counter[str] = Counter()
    for path in sorted(sweep_dir.rglob("metrics.json")):
        if not path.is_file():
            continue
        try:
            status = str(read_metrics(path.parent).get("status", "unknown"))
        except (OSError, ValueError):  # a file cut short by a full disk, say
            status = "unreadable"
        statuses[status] += 1
    return statuses


def summary_line(statuses: Counter[str], sweep_dir: str) -> str:
    """'4 runs: 3 completed, 1 diverged; make report RUN=<sweep dir> lists them'."""
    total = sum(statuses.values())
    if not total:
        return f"0 runs: no metrics.json below {sweep_dir}"
    named = [s for s in STATUSES if statuses[s]] + sorted(set(statuses) - set(STATUSES))
    line = f"{total} run{'s' * (total != 1)}: " + ", ".join(f"{statuses[s]} {s}" for s in named)
    if statuses["completed"] != total:
        line += f"; make report RUN={sweep_dir} lists them"
    return line


class SweepSummary(Callback):
    """Prints the summary line once, when the sweep ends."""

    def __init__(self) -> None:
        self.sweep_dir: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.sweep_dir = str(config.hydra.sweep.dir)
        # Hydra skips on_multirun_end when a job failed: it re-raises that job's error and
        # exits non-zero. The line then follows the error, at exit.
        atexit.register(self.print_once)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self.sweep_dir = str(config.hydra.sweep.dir)
        self.print_once()

    def print_once(self) -> None:
        if self.sweep_dir is None:
            return
        sweep_dir, self.sweep_dir = self.sweep_dir, None
        print(summary_line(run_statuses(Path(sweep_dir)), sweep_dir), flush=True)
