"""Runs that go wrong: bad config values, divergence, Ctrl-C, SIGKILL and resume, reruns."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from slowlearn.train import ConfigError, check_config, unknown_group_option
from tests.conftest import REPO, TINY_ARGS, read_metrics, run_train

BAD_VALUES = [
    ("optimizer.lr=-0.1", "optimizer.lr=-0.1", "positive number"),
    ("optimizer.lr=0", "optimizer.lr=0", "positive number"),
    ("data.batch_size=0", "data.batch_size=0", "positive integer"),
    ("trainer.max_epochs=-2", "trainer.max_epochs=-2", "positive integer"),
    ("model.hidden_sizes=[]", "model.hidden_sizes=[]", "non-empty list of positive integers"),
    ("model.hidden_sizes=[100,-5]", "model.hidden_sizes=[100, -5]", "positive integers"),
    ("model.init=huge", "model.init='huge'", "default, scaled_normal, large"),
    ("model.hidden_activation=gelu", "model.hidden_activation='gelu'", "sigmoid, relu, tanh"),
    ("activation.name=relu", "activation.name='relu'", "sigmoid, softmax"),
    ("loss.name=hinge", "loss.name='hinge'", "mse, bce, nll"),
    ("optimizer._target_=torch.optim.Nope", "optimizer._target_='torch.optim.Nope'", "class"),
    ("data.val_size=60000", "data.val_size=60000", "1 to 59999"),
    ("loss.log_base=1", "loss.log_base=1", "positive number other than 1"),
    ("loss.log_base=bits", "loss.log_base='bits'", "positive number other than 1"),
    ("data.split=middle", "data.split='middle'", "random, tail"),
    ("data.steps_per_chunk=0", "data.steps_per_chunk=0", "positive integer"),
    ("data.eval_batch_size=-1", "data.eval_batch_size=-1", "positive integer"),
    ("module.log_every_n_steps=0", "module.log_every_n_steps=0", "positive integer"),
    ("module.diagnostics_every_n_steps=-1", "diagnostics_every_n_steps=-1", "0 (off)"),
    ("threads=-1", "threads=-1", "positive integer"),
    ("optimizer.momentum=-1", "optimizer.momentum=-1", "0 or more"),
]


@pytest.fixture(scope="module")
def compose_train():
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        yield lambda *overrides: compose("train", overrides=list(overrides))


@pytest.mark.parametrize(("override", "named", "allowed"), BAD_VALUES)
def test_bad_values_are_named_with_what_is_allowed(
    compose_train, tmp_path: Path, override: str, named: str, allowed: str
) -> None:
    data_dir = tmp_path / "data"
    cfg = compose_train(f"data.dir={data_dir}", override)
    with pytest.raises(ConfigError) as error:
        check_config(cfg)
    message = str(error.value)
    assert "\n" not in message and named in message and allowed in message
    assert not data_dir.exists()  # checked before any data work


def test_a_bad_value_fails_fast_with_one_line(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    result = run_train(
        [f"data.dir={data_dir}", f"hydra.run.dir={tmp_path / 'run'}", "optimizer.lr=-0.1"],
        check=False,
    )
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "error: optimizer.lr=-0.1 is not allowed: a positive number"
    ]
    assert not data_dir.exists() and not (tmp_path / "run" / "metrics.json").exists()


def test_unwritable_data_folder_is_named(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = run_train(
        [f"data.dir={blocker}/data", f"hydra.run.dir={tmp_path / 'run'}"], check=False
    )
    assert result.returncode != 0
    (line,) = result.stderr.strip().splitlines()
    assert f"data.dir='{blocker}/data'" in line and "writable" in line


def test_unknown_group_option_is_one_line_with_the_choices(tmp_path: Path) -> None:
    result = run_train(["-m", f"hydra.sweep.dir={tmp_path}", "loss=mse,hinge"], check=False)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "error: loss=hinge is not allowed: one of bce, mse, nll"
    ]
    assert not list(tmp_path.iterdir())  # nothing ran


@pytest.mark.parametrize(
    "override", ["hydra/launcher=joblib", "trainer=ddp", "data.dir=/x/y", "loss.log_base=2"]
)
def test_valid_overrides_pass_the_group_check(override: str) -> None:
    assert unknown_group_option([override, "activation=sigmoid", "-m"]) is None


def test_divergence_stops_the_run_and_is_recorded(tiny_data: Path, tmp_path: Path) -> None:
    result = run_train(
        [f"data.dir={tiny_data}", f"hydra.run.dir={tmp_path}", *TINY_ARGS]
        + ["model.hidden_activation=relu", "optimizer.lr=1e30"],
        check=False,
    )
    assert result.returncode != 0
    record = read_metrics(tmp_path)
    assert record["status"] == "diverged"
    assert "at step" in record["error"] and "last finite loss" in record["error"]
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("run diverged: training loss is nan at step")


def test_failed_and_diverged_jobs_do_not_stop_the_sweep(tiny_data: Path, tmp_path: Path) -> None:
    result = run_train(
        ["-m", "optimizer.lr=0.1,1e30,-1", "model.hidden_activation=relu", f"data.dir={tiny_data}"]
        + [f"hydra.sweep.dir={tmp_path}", *TINY_ARGS],
        check=False,
    )
    assert result.returncode != 0  # the sweep reports its failure at the end
    statuses = {
        p.parent.name: read_metrics(p.parent)["status"] for p in tmp_path.glob("*/metrics.json")
    }
    assert sorted(statuses.values()) == ["completed", "diverged", "failed"], statuses
    (failed,) = [name for name, status in statuses.items() if status == "failed"]
    error = read_metrics(tmp_path / failed)["error"]
    assert error == "ConfigError: optimizer.lr=-1 is not allowed: a positive number"
    report = subprocess.run(
        [sys.executable, "-m", "slowlearn.report", str(tmp_path)], cwd=REPO, check=True
    )
    assert report.returncode == 0
    listed = (tmp_path / "report.md").read_text()
    assert "optimizer.lr=-1" in listed and "diverged" in listed


def test_a_run_folder_is_never_reused(tiny_data: Path, tmp_path: Path) -> None:
    args = [f"data.dir={tiny_data}", f"hydra.run.dir={tmp_path}", *TINY_ARGS]
    run_train(args)
    before = (tmp_path / "metrics.json").read_bytes()
    result = run_train(args, check=False)
    assert result.returncode != 0
    assert "already holds a run" in result.stderr.strip().splitlines()[-1]
    assert (tmp_path / "metrics.json").read_bytes() == before


def start_training(args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return subprocess.Popen(
        [sys.executable, "-m", "slowlearn.train", *args, "threads=1"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, "training ended before it could be interrupted"
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


LONG_ARGS = [*TINY_ARGS, "trainer.max_epochs=40", "data.batch_size=10"]


def test_ctrl_c_ends_cleanly_as_interrupted(tiny_data: Path, tmp_path: Path) -> None:
    process = start_training([f"data.dir={tiny_data}", f"hydra.run.dir={tmp_path}", *LONG_ARGS])
    wait_for(tmp_path / "checkpoints" / "last.ckpt", process)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode != 0
    record = read_metrics(tmp_path)
    assert record["status"] == "interrupted"
    (tb_dir,) = (tmp_path / "tb").iterdir()
    events = EventAccumulator(str(tb_dir))
    events.Reload()
    assert events.Scalars("val/acc")  # flushed


def test_killed_run_resumes_to_the_same_result(tiny_data: Path, tmp_path: Path) -> None:
    args = [f"data.dir={tiny_data}", *LONG_ARGS, "trainer.max_epochs=8"]
    straight = tmp_path / "straight"
    run_train([*args, f"hydra.run.dir={straight}"])

    killed = tmp_path / "killed"
    process = start_training([*args, f"hydra.run.dir={killed}"])
    wait_for(killed / "checkpoints" / "last.ckpt", process)  # after the first epoch
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert read_metrics(killed)["status"] == "running"

    run_train([f"resume={killed}"])
    resumed, expected = read_metrics(killed), read_metrics(straight)
    assert resumed["status"] == "completed"
    assert resumed["metrics"]["test_acc"] == pytest.approx(
        expected["metrics"]["test_acc"], abs=1e-6
    )
    assert resumed["metrics"]["final_train_loss"] == pytest.approx(
        expected["metrics"]["final_train_loss"], rel=1e-5
    )
    assert [h["epoch"] for h in resumed["metrics"]["val_history"]] == list(range(1, 9))
    (tb_dir,) = (killed / "tb").iterdir()  # the same TensorBoard run, continued
    events = EventAccumulator(str(tb_dir))
    events.Reload()
    steps = [event.step for event in events.Scalars("val/acc")]
    assert steps == sorted(set(steps)) and len(steps) == 8


def test_resume_refuses_other_overrides(tiny_data: Path, tmp_path: Path) -> None:
    run_train([f"data.dir={tiny_data}", f"hydra.run.dir={tmp_path}", *TINY_ARGS])
    result = run_train([f"resume={tmp_path}", "optimizer.lr=0.5"], check=False)
    assert result.returncode != 0
    (line,) = result.stderr.strip().splitlines()
    assert "optimizer.lr=0.5" in line and "trainer.max_epochs" in line

    before = (tmp_path / "metrics.json").read_bytes()
    finished = run_train([f"resume={tmp_path}"], check=False)  # all its 2 epochs are done
    assert "trained all its 2 epochs" in finished.stderr.strip().splitlines()[-1]
    assert (tmp_path / "metrics.json").read_bytes() == before  # its results are kept

    run_train([f"resume={tmp_path}", "++trainer.max_epochs=3"])  # train one epoch longer
    record = read_metrics(tmp_path)
    assert record["status"] == "completed"
    assert [h["epoch"] for h in record["metrics"]["val_history"]] == [1, 2, 3]
