"""TensorBoard reads what a tiny sweep wrote, as a person sees it: a real TensorBoard server
on a loopback port lists the runs by their short names, and serves every tab its data (the
scalars, the histograms, the HPARAMS table and the custom-scalars view of the seed bands)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from tensorboard.backend.event_processing import plugin_event_accumulator
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import api_pb2, metadata

from slowlearn.report import make_report
from tests.conftest import read_metrics, read_scalars, runs_by_name

HPARAMS = {
    "activation",
    "loss",
    "log_base",
    "init",
    "output_init_scale",
    "hidden_sizes",
    "hidden_activation",
    "start",
    "optimizer",
    "lr",
    "momentum",
    "batch_size",
    "dataset",
    "max_epochs",
    "seed",
    "depth",
}
# What the tiny sweep varies: the HPARAMS tab lists these first (by name) and checks the first
# five columns, so they and the first two of the others open checked.
VARIED = ["activation", "loss", "seed"]
SHOWN_FIRST = [*VARIED, "batch_size", "dataset"]
METRICS = ("test_acc", "best_val_acc", "step_to_90_val_acc", "final_train_loss")
METRIC_TAGS = {f"hparams/{name}" for name in METRICS}
CELLS = ("sigmoid+mse", "softmax+nll")
HISTOGRAM = "hist/error_signal_true_class"  # a tag no scalar uses: TensorBoard shows it
HISTOGRAMS = {HISTOGRAM, "hist/bias_grad/hidden1", "hist/bias_grad/output"}
SERVER_TIMEOUT = 60.0  # seconds for the server to start and load the sweep
# The bodies the HPARAMS dashboard posts (tf-hparams-dashboard in tensorboard's webfiles.zip).
EXPERIMENT = {"experimentName": "", "hparamsLimit": 1000}
STATUSES = ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]


@pytest.fixture(scope="module")
def sweep(tiny_sweep: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny sweep with its report (which adds the seed-aggregated runs), in a copy."""
    sweep_dir = tmp_path_factory.mktemp("tensorboard") / "sweep"
    shutil.copytree(tiny_sweep, sweep_dir)
    make_report(sweep_dir)
    return sweep_dir


def completed(sweep: Path) -> dict[str, Path]:
    """The completed runs of the sweep (without the diverged single run beside it), by their
    TensorBoard run name: the folder that holds their event files."""
    return {
        str(run_dir.relative_to(sweep)): run_dir
        for name, run_dir in runs_by_name(sweep).items()
        if read_metrics(run_dir)["status"] == "completed"
    }


def scalars(tb_dir: Path) -> dict[str, float]:
    """The last value of each scalar tag."""
    accumulator = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: accumulator.Scalars(tag)[-1].value for tag in accumulator.Tags()["scalars"]}


def test_hparams_and_their_metrics_are_in_the_event_files(sweep: Path) -> None:
    runs = completed(sweep)
    assert len(runs) == 4
    for name, run_dir in runs.items():
        accumulator = plugin_event_accumulator.EventAccumulator(str(sweep / name))
        accumulator.Reload()
        content = accumulator.PluginTagToContent(metadata.PLUGIN_NAME)
        experiment = metadata.parse_experiment_plugin_data(content[metadata.EXPERIMENT_TAG])
        start = metadata.parse_session_start_info_plugin_data(
            content[metadata.SESSION_START_INFO_TAG]
        )
        end = metadata.parse_session_end_info_plugin_data(content[metadata.SESSION_END_INFO_TAG])
        record = read_metrics(run_dir)
        config = record["config"]
        assert set(start.hparams) == HPARAMS
        assert {info.name for info in experiment.hparam_infos} == HPARAMS
        assert [info.name for info in experiment.hparam_infos if info.differs] == VARIED
        assert record["config"]["varied_settings"] == VARIED
        assert start.hparams["activation"].string_value == config["activation"]["name"]
        assert start.hparams["loss"].string_value == config["loss"]["name"]
        assert start.hparams["seed"].number_value == config["seed"]
        assert start.hparams["hidden_sizes"].string_value == "[32]"
        assert start.hparams["depth"].number_value == 1
        # Every run declares every metric column, also one it has no value for.
        assert {info.name.tag for info in experiment.metric_infos} == METRIC_TAGS
        assert end.status == api_pb2.STATUS_SUCCESS
        values = scalars(sweep / name)
        for metric in METRICS:
            expected = record["metrics"][metric]
            if expected is None:
                assert f"hparams/{metric}" not in values
            else:
                assert values[f"hparams/{metric}"] == pytest.approx(expected, rel=1e-6)


# ------------------------------------------------------------------ a real server

# Loopback only: no proxy from the environment may carry these requests anywhere else.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def tensorboard(logdir: Path, log: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """A TensorBoard server on a free loopback port, as `make tensorboard` starts it."""
    port = free_port()
    command = [
        str(Path(sys.executable).with_name("tensorboard")),
        *("--logdir", str(logdir), "--host", "127.0.0.1", "--port", str(port)),
    ]
    with log.open("wb") as out:
        # Its own process group: TensorBoard starts a data server process of its own.
        server = subprocess.Popen(command, stdout=out, stderr=out, start_new_session=True)
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def fetch(url: str, body: dict | None = None) -> Any:
    """GET, or POST a JSON body as the HPARAMS dashboard does."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    with OPENER.open(request, timeout=10) as response:
        return json.load(response)


def wait_for(
    server: subprocess.Popen, get: Callable[[], Any], ready: Callable[[Any], bool], deadline: float
) -> Any:
    """Ask until the answer is ready: the server starts listening, then loads the event
    files in the background."""
    answer: Any = None
    while time.monotonic() < deadline:
        assert server.poll() is None, f"TensorBoard exited with {server.returncode}"
        try:
            answer = get()
        except OSError as error:  # not listening yet (URLError is an OSError)
            answer = error
        else:
            if ready(answer):
                return answer
        time.sleep(0.5)
    pytest.fail(f"TensorBoard gave no complete answer in {SERVER_TIMEOUT:.0f} s: {answer!r}")


def test_a_tensorboard_server_serves_every_tab_of_the_sweep(sweep: Path, tmp_path: Path) -> None:
    runs = completed(sweep)
    event_dirs = {str(p.parent.relative_to(sweep)) for p in sweep.rglob("events.out.tfevents.*")}
    assert set(runs) <= event_dirs
    with tensorboard(sweep, tmp_path / "tensorboard.log") as (url, server):
        deadline = time.monotonic() + SERVER_TIMEOUT

        def ask(get: Callable[[], Any], ready: Callable[[Any], bool]) -> Any:
            return wait_for(server, get, ready, deadline)

        listed = ask(lambda: fetch(f"{url}/data/runs"), lambda runs: len(runs) == len(event_dirs))
        assert set(listed) == event_dirs
        # Short names that say what tells the runs apart, and the seed-aggregated runs.
        assert set(runs) == {f"{cell}/seed{seed}" for cell in CELLS for seed in (0, 1)}
        assert {f"{cell}/mean" for cell in CELLS} <= set(listed)
        assert not [run for run in listed if "=" in run or "tb" in run.split("/") or run == "."]

        plugins = ask(lambda: fetch(f"{url}/data/plugins_listing"), bool)
        for plugin in ("scalars", "histograms", "hparams", "custom_scalars"):
            assert plugins[plugin]["enabled"], plugin
        histograms = ask(
            lambda: fetch(f"{url}/data/plugin/histograms/tags"),
            lambda tags: set(runs) <= set(tags),
        )
        for name in runs:  # the per-sample error signal and the per-layer distributions
            assert set(histograms[name]) >= HISTOGRAMS, name
        query = urllib.parse.urlencode({"run": next(iter(runs)), "tag": HISTOGRAM})
        (*_, buckets), *_ = fetch(f"{url}/data/plugin/histograms/histograms?{query}")
        assert sum(count for *_, count in buckets) > 0

        layout = ask(lambda: fetch(f"{url}/data/plugin/custom_scalars/layout"), bool)
        (category,) = layout["category"]
        margins = {chart["title"]: chart["margin"]["series"][0] for chart in category["chart"]}
        assert margins["val/acc"] == {
            "value": "val/acc",
            "lower": "val/acc/min",
            "upper": "val/acc/max",
        }
        mean_run = f"{CELLS[0]}/mean"
        seeds = [read_scalars(runs[f"{CELLS[0]}/seed{seed}"])["val/acc"] for seed in (0, 1)]
        for tag, expected in (
            ("val/acc", statistics.fmean),
            ("val/acc/min", min),
            ("val/acc/max", max),
        ):
            query = urllib.parse.urlencode({"run": mean_run, "tag": f"^{tag}$"})
            answer = fetch(f"{url}/data/plugin/custom_scalars/scalars?{query}")
            events = answer["tag_to_events"][tag]
            values = [expected(v for (_, v) in pair) for pair in zip(*seeds, strict=True)]
            assert [value for _, _, value in events] == pytest.approx(values, rel=1e-6), tag

        name, run_dir = next(iter(runs.items()))
        query = urllib.parse.urlencode({"run": name, "tag": "val/acc"})
        series = ask(lambda: fetch(f"{url}/data/plugin/scalars/scalars?{query}"), bool)
        history = read_metrics(run_dir)["metrics"]["val_history"]
        assert [step for _, step, _ in series] == [h["step"] for h in history]
        assert [v for _, _, v in series] == pytest.approx([h["val/acc"] for h in history])

        experiment = ask(
            lambda: fetch(f"{url}/data/plugin/hparams/experiment", EXPERIMENT),
            lambda answer: len(answer.get("metricInfos", [])) == len(METRIC_TAGS),
        )
        assert {info["name"] for info in experiment["hparamInfos"]} == HPARAMS
        # Served varied first; the dashboard keeps that order and checks the first five.
        infos = experiment["hparamInfos"]
        assert [info["name"] for info in infos[:5]] == SHOWN_FIRST
        assert {info["name"] for info in infos if info.get("differs")} == set(VARIED)
        assert {info["name"]["tag"] for info in experiment["metricInfos"]} == METRIC_TAGS

        columns = [{"hparam": name, "includeInResult": True} for name in sorted(HPARAMS)]
        columns += [{"metric": {"tag": tag}, "includeInResult": True} for tag in METRIC_TAGS]
        body = {
            "experimentName": "",
            "allowedStatuses": STATUSES,
            "colParams": columns,
            "startIndex": 0,
            "sliceSize": 100,
        }
        table = ask(
            lambda: fetch(f"{url}/data/plugin/hparams/session_groups", body),
            lambda answer: len(answer.get("sessionGroups", [])) == len(runs),
        )
    for group in table["sessionGroups"]:
        record = read_metrics(runs[group["name"]])
        assert group["hparams"]["seed"] == record["config"]["seed"]
        assert group["hparams"]["activation"] == record["config"]["activation"]["name"]
        values = {m["name"]["tag"]: m["value"] for m in group["metricValues"]}
        expected = {f"hparams/{k}": record["metrics"][k] for k in METRICS}
        assert values == pytest.approx({k: v for k, v in expected.items() if v is not None})
