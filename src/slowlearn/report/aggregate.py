"""The seed-aggregated view inside TensorBoard: one run per group, named like its runs with
``mean`` for the seed (``sigmoid+mse/mean``), holding the mean over seeds of val/acc, train/loss
and the error signals under their own tags, and their min and max under ``<tag>/min`` and
``<tag>/max``; and a custom-scalars layout whose margin charts draw each group's mean with its
min-max band. Selected alone (run filter ``/mean$``), a sweep shows one curve per group.

Re-running the report replaces these runs, never appends to them; a folder that holds a real
run (its metrics.json) is never touched.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
from tensorboard.compat.proto.tensor_pb2 import TensorProto
from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
from tensorboard.plugins.custom_scalar import layout_pb2

from slowlearn.report.events import write_events
from slowlearn.report.figures import aligned
from slowlearn.report.runs import Group, name_without_seed

AGGREGATED = (
    "val/acc",
    "train/loss",
    "diag/error_signal/true_class",
    "diag/error_signal/true_class_right",
    "diag/error_signal/true_class_wrong",
)
MARKER = ".slowlearn-aggregate"  # in every folder written here: the only ones ever replaced


def aggregate_name(group: Group) -> str:
    """``sigmoid+mse/lr0.3/mean`` for the runs ``sigmoid+mse/lr0.3/seed0``, ``.../seed1``."""
    return name_without_seed(group.runs[0]) + "/mean"


def layout() -> Summary:
    """Margin charts: each group's mean with its min-max band over seeds. Built from
    TensorBoard's own protos, as torch.utils.tensorboard builds them, so that the report
    never imports torch."""
    title = "mean over seeds with its min-max band (runs */mean, written by make report)"
    charts = [
        layout_pb2.Chart(
            title=tag,
            margin=layout_pb2.MarginChartContent(
                series=[
                    layout_pb2.MarginChartContent.Series(
                        value=tag, lower=f"{tag}/min", upper=f"{tag}/max"
                    )
                ]
            ),
        )
        for tag in AGGREGATED
    ]
    config = layout_pb2.Layout(category=[layout_pb2.Category(title=title, chart=charts)])
    tensor = TensorProto(
        dtype="DT_STRING",
        string_val=[config.SerializeToString()],
        tensor_shape=TensorShapeProto(),
    )
    metadata = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="custom_scalars"))
    return Summary(
        value=[Summary.Value(tag="custom_scalars__config__", tensor=tensor, metadata=metadata)]
    )


def write_group(folder: Path, group: Group, with_layout: bool) -> None:
    """One group's aggregated run into ``folder`` (written into a new folder, then swapped)."""
    events: dict[int, list[Summary.Value]] = {}
    for tag in AGGREGATED:
        steps, values = aligned(group.runs, tag)
        if not len(steps):
            continue
        with np.errstate(all="ignore"):
            stats = {
                tag: np.nanmean(values, axis=0),
                f"{tag}/min": np.nanmin(values, axis=0),
                f"{tag}/max": np.nanmax(values, axis=0),
            }
        for name, series in stats.items():
            for step, value in zip(steps.tolist(), series.tolist(), strict=True):
                if np.isfinite(value):
                    events.setdefault(step, []).append(Summary.Value(tag=name, simple_value=value))
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".mean.", dir=folder.parent))
    (staging / MARKER).write_text("written by make report; replaced when it runs again\n")
    written = [Event(wall_time=time.time(), summary=layout())] if with_layout else []
    written += [
        Event(wall_time=time.time(), step=step, summary=Summary(value=events[step]))
        for step in sorted(events)
    ]
    write_events(staging, written)
    if folder.exists():
        shutil.rmtree(folder)
    staging.rename(folder)


def write_aggregates(sweep: Path, groups: list[Group]) -> list[Path]:
    """Every group's aggregated run under ``sweep``; returns their folders."""
    written = []
    for group in (group for group in groups if len(group.runs) > 1):  # one run: nothing to mean
        folder = sweep / aggregate_name(group)
        if (folder / "metrics.json").exists() or (
            folder.exists() and not (folder / MARKER).exists()
        ):
            continue  # a real run, or someone's folder: never replaced
        write_group(folder, group, with_layout=not written)
        written.append(folder)
    return written
