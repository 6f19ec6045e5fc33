"""A group whose members each resume from their own single-run checkpoint.

A member's ``last.ckpt`` holds its own weights, optimizer state and records in a single run's
format (``slowlearn.checkpoints``). Lightning resumes a trainer from one file, so a group of
resumed members gets one: the members' checkpoints stacked into the group's layout, written to
a temporary folder for ``trainer.fit(ckpt_path=...)``, with every member's records in member
order (``slowlearn.checkpoints.restore`` reads them). A single run resumes from its own file.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from slowlearn.errors import ConfigError
from slowlearn.model import stacked_layout
from slowlearn.optimizers import stack_optimizer_states

if TYPE_CHECKING:
    from slowlearn.module import LitClassifier


class Resumable(Protocol):
    """A job as resuming reads it (``slowlearn.train.Job``, which imports this module)."""

    checkpoint: Path | None

    @property
    def run_dir(self) -> Path: ...


def stacked_checkpoint(members: Sequence[dict[str, Any]], names: Sequence[str]) -> dict[str, Any]:
    """The group checkpoint of these single-run checkpoints, in member order. They must come
    from one step of one group: a group trains its members in lockstep."""
    steps = {(m["epoch"], m["global_step"]) for m in members}
    if len(steps) > 1:
        raise ConfigError(
            f"the members' checkpoints are from different steps (epoch, step: {sorted(steps)}): "
            "resume them separately with resume=<member folder>"
        )
    group = dict(members[0])
    group["slowlearn_members"] = [m.get("slowlearn", {}) for m in members]  # each one's records
    group["state_dict"] = {
        f"network.stacked.{index}": torch.stack(
            [stacked_layout(m["state_dict"][f"model.{name}"]) for m in members]
        )
        for index, name in enumerate(names)
    }
    if all(m.get("optimizer_states") for m in members):
        group["optimizer_states"] = [
            stack_optimizer_states([m["optimizer_states"][0] for m in members])
        ]
    return group


@contextmanager
def resume_path(jobs: Sequence[Resumable], module: LitClassifier) -> Iterator[Path | None]:
    """The checkpoint that ``trainer.fit`` resumes the group of ``jobs`` from, or None for a
    new run. Every member of a resumed group needs its own checkpoint."""
    paths = [job.checkpoint for job in jobs]
    if len(jobs) == 1 or not any(paths):
        yield paths[0]
        return
    if not all(paths):
        missing = [str(job.run_dir) for job in jobs if job.checkpoint is None]
        raise ConfigError(f"a resumed group needs every member's checkpoint; none for {missing}")
    members = [torch.load(path, map_location="cpu", weights_only=False) for path in paths]
    group = stacked_checkpoint(members, module.network.names)
    with tempfile.TemporaryDirectory(prefix="slowlearn-group-") as folder:
        path = Path(folder) / "group.ckpt"
        torch.save(group, path)
        yield path
