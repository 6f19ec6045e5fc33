"""Runs that go wrong: bad config values, divergence, Ctrl-C, SIGKILL and resume, reruns."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
from omegaconf import OmegaConf

from slowlearn.checks import check_config, in_current_keys, renamed_key, unknown_group_option
from slowlearn.errors import ConfigError
from slowlearn.interrupts import StopAtNextBatch, StopRequested
from slowlearn.records import write_metrics
from slowlearn.train import prepare, resumed_config
from tests.conftest import (
    DIVERGED,
    REPO,
    TINY_ARGS,
    compose_config,
    env,
    read_metrics,
    read_scalars,
    run_train,
    wait_for_file,
)

BAD_VALUES = [
    ("optimizer.lr=-0.1", "optimizer.lr=-0.1", "positive number"),
    ("optimizer.lr=0", "optimizer.lr=0", "positive number"),
    ("data.batch_size=0", "data.batch_size=0", "positive integer"),
    ("trainer.max_epochs=-2", "trainer.max_epochs=-2", "positive integer"),
    ("model.hidden_sizes=[]", "model.hidden_sizes=[]", "non-empty list of positive integers"),
    ("model.hidden_sizes=[100,-5]", "model.hidden_sizes=[100, -5]", "positive integers"),
    ("model.init=huge", "model.init='huge'", "default, scaled_normal, large, xavier"),
    ("model.hidden_activation=gelu", "model.hidden_activation='gelu'", "sigmoid, relu, tanh"),
    ("activation.name=relu", "activation.name='relu'", "sigmoid, softmax, identity"),
    ("activation=identity", "loss.name='nll'", "mse with activation=identity"),
    ("cell=identity_mse", None, None),  # the control itself is allowed
    ("+optimizer.nesterov=true", None, None),
    (
        "+optimizer.betas=[0.9,0.99]",
        "optimizer.betas=[0.9, 0.99]",
        "not a key of slowlearn.optimizers.SGD",
    ),
    ("loss.name=hinge", "loss.name='hinge'", "mse, bce, nll"),
    ("optimizer._target_=torch.optim.Nope", "optimizer._target_='torch.optim.Nope'", "one of"),
    ("optimizer._target_=torch.optim.SGD", "'torch.optim.SGD'", "slowlearn.optimizers.SGD"),
    ("data.val_size=60000", "data.val_size=60000", "1 to 59999"),
    ("loss.log_base=1", "loss.log_base=1", "positive number other than 1"),
    ("loss.log_base=bits", "loss.log_base='bits'", "positive number other than 1"),
    ("data.split=middle", "data.split='middle'", "random, tail"),
    ("data.steps_per_chunk=0", "data.steps_per_chunk=0", "positive integer"),
    ("data.eval_batch_size=-1", "data.eval_batch_size=-1", "positive integer"),
    ("module.loss_window=0", "module.loss_window=0", "positive integer"),
    ("+module.log_every_n_steps=5", "module.log_every_n_steps is not a key", "module.loss_window"),
    ("loss=mse", None, None),
    ("loss=mse +loss.log_base=2", "loss.log_base=2", "mse takes no logarithm"),
    ("module.diagnostics_every_n_steps=-1", "diagnostics_every_n_steps=-1", "0 (off)"),
    ("module.cuda_graphs=maybe", "module.cuda_graphs='maybe'", "one of auto, true, false"),
    ("threads=-1", "threads=-1", "positive integer"),
    ("optimizer.momentum=-1", "optimizer.momentum=-1", "0 or more"),
]


@pytest.mark.parametrize(("override", "named", "allowed"), BAD_VALUES)
def test_bad_values_are_named_with_what_is_allowed(
    tmp_path: Path, override: str, named: str | None, allowed: str | None
) -> None:
    data_dir = tmp_path / "data"
    cfg = compose_config(f"data.dir={data_dir}", *override.split(), hydra_node=False)
    if named is None:
        check_config(cfg)
        return
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
    cfg = compose_config(f"data.dir={blocker}/data", hydra_node=False)
    with pytest.raises(ConfigError, match=f"data.dir='{blocker}/data' is not allowed: .*writ"):
        check_config(cfg)


def test_unknown_group_option_is_one_line_with_the_choices(tmp_path: Path) -> None:
    result = run_train(["-m", f"hydra.sweep.dir={tmp_path}", "loss=mse,hinge"], check=False)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "error: loss=hinge is not allowed: one of bce, mse, nll"
    ]
    assert not list(tmp_path.iterdir())  # nothing ran


def test_a_key_that_is_not_one_names_the_key_to_use(tmp_path: Path) -> None:
    result = run_train([f"hydra.run.dir={tmp_path}", "module.log_every_n_steps=5"], check=False)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "error: module.log_every_n_steps is not a key: use module.loss_window"
    ]
    assert renamed_key(["+module.log_every_n_steps=5"]) is not None
    assert renamed_key(["module.loss_window=5", "trainer.log_every_n_steps=5"]) is None


def test_a_config_saved_with_earlier_keys_reads_in_todays() -> None:
    """Runs saved before a key was renamed still resume and evaluate."""
    today = OmegaConf.to_container(compose_config("loss=mse", hydra_node=False))
    saved = OmegaConf.create(today)
    saved.module.log_every_n_steps = saved.module.pop("loss_window")
    saved.optimizer._target_ = "torch.optim.SGD"
    saved.loss.log_base = "e"
    assert OmegaConf.to_container(in_current_keys(saved)) == today


@pytest.mark.parametrize(
    "override", ["hydra/launcher=joblib", "trainer=ddp", "data.dir=/x/y", "loss.log_base=2"]
)
def test_valid_overrides_pass_the_group_check(override: str) -> None:
    assert unknown_group_option([override, "activation=sigmoid", "-m"]) is None


def test_divergence_stops_the_run_and_is_recorded(tiny_sweep: Path) -> None:
    """A single run that diverges exits non-zero with its one line; in a sweep the same job
    returns normally and the sweep exits 0 (test_sweep_status.py)."""
    record = read_metrics(tiny_sweep / DIVERGED)
    assert record["status"] == "diverged"
    assert "at step" in record["error"] and "last finite loss" in record["error"]
    stderr = (tiny_sweep / f"{DIVERGED}.stderr.txt").read_text()
    assert stderr.strip().splitlines()[-1].startswith("run diverged: training loss is nan at step")


def test_a_run_folder_is_never_reused(single_run: Path) -> None:
    before = (single_run / "metrics.json").read_bytes()
    cfg = compose_config(hydra_node=False)
    cfg.run_dir = str(single_run)
    with pytest.raises(ConfigError, match=f"run folder {single_run} already holds a run; resume"):
        prepare(cfg, [])
    assert (single_run / "metrics.json").read_bytes() == before


def start_training(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "slowlearn.train", *args, "threads=1"],
        cwd=REPO,
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


LONG_ARGS = [*TINY_ARGS, "trainer.max_epochs=40", "data.batch_size=10"]


def test_ctrl_c_ends_cleanly_as_interrupted(tiny_data: Path, tmp_path: Path) -> None:
    process = start_training([f"data.dir={tiny_data}", f"hydra.run.dir={tmp_path}", *LONG_ARGS])
    wait_for_file(tmp_path / "checkpoints" / "last.ckpt", process)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 1, stderr[-2000:]
    assert stderr.strip().splitlines()[-1].startswith("run interrupted")
    record = read_metrics(tmp_path)
    assert record["status"] == "interrupted"
    assert read_scalars(tmp_path)["val/acc"]  # flushed


class Boom(pl.Callback):
    """A bug in the middle of training, as a run meets it (a Hydra callback of the test run)."""

    def on_train_start(self, *args: object) -> None:
        raise RuntimeError("boom")


def test_an_unexpected_error_is_one_line_and_error_log(tiny_data: Path, tmp_path: Path) -> None:
    boom = "+callbacks.boom._target_=tests.test_run_faults.Boom"
    result = run_train(
        [f"data.dir={tiny_data}", f"hydra.run.dir={tmp_path}", *TINY_ARGS, boom], check=False
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert "RuntimeError: boom" in last and str(tmp_path / "error.log") in last
    assert "Traceback" not in result.stderr
    log = (tmp_path / "error.log").read_text()
    assert log.startswith("Traceback") and "in on_train_start" in log and "boom" in log
    assert read_metrics(tmp_path)["status"] == "failed"


def test_ctrl_c_waits_for_the_next_batch_and_a_second_one_does_not() -> None:
    stop = StopAtNextBatch()
    with stop.installed():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)  # the handler has run: no KeyboardInterrupt in the middle of this
        with pytest.raises(KeyboardInterrupt):
            stop.stop_if_requested()  # the next batch begins
        stop.stop_if_requested()  # handed over: the shutdown's own batches are not stopped
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    # Asked, and the block ended before a batch began.
    with pytest.raises(KeyboardInterrupt), stop.installed():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt), StopAtNextBatch().installed():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)  # asked twice: at once
        time.sleep(5)
    assert time.monotonic() - started < 2


def test_a_stop_asked_elsewhere_stops_once_even_if_asked_before() -> None:
    """A cluster's signal may come before the group's callback is installed."""
    asked = [False]
    stop = StopAtNextBatch(lambda: asked[0])
    stop.on_train_batch_start()  # not asked: trains on
    asked[0] = True
    with pytest.raises(StopRequested) as stopped:
        stop.on_train_batch_start()
    assert stopped.value.in_training
    stop.on_test_batch_start()  # handed over: the shutdown's own batches are not stopped


def test_resume_refuses_other_overrides_and_finished_runs(single_run: Path) -> None:
    cfg = compose_config(f"resume={single_run}", hydra_node=False)
    with pytest.raises(ConfigError, match="optimizer.lr=0.5 is not allowed with resume") as error:
        resumed_config(cfg, [f"resume={single_run}", "optimizer.lr=0.5"])
    assert "trainer.max_epochs" in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(ConfigError, match="it has trained all its 3 epochs"):
        resumed_config(cfg, [f"resume={single_run}"])


def test_a_run_killed_after_its_last_checkpoint_resumes_to_its_test(
    single_run: Path, tmp_path: Path
) -> None:
    """All epochs trained and checkpointed, then killed before its test: its folder holds the
    last checkpoint and a record still ``running``. Resuming trains nothing, tests the
    checkpoint, and records the run: the same test accuracy as the run that was not killed."""
    run_dir = tmp_path / "run"
    shutil.copytree(single_run, run_dir)
    finished = read_metrics(run_dir)
    history = finished["metrics"]["val_history"]
    write_metrics(run_dir, finished | {"status": "running", "metrics": {"val_history": history}})
    result = run_train([f"resume={run_dir}"])
    record = read_metrics(run_dir)
    assert record["status"] == "completed", result.stderr[-2000:]
    assert record["metrics"]["test_acc"] == finished["metrics"]["test_acc"]
    assert [h["epoch"] for h in record["metrics"]["val_history"]] == [1, 2, 3]
    assert "test accuracy" in result.stdout + result.stderr


def test_resume_trains_a_finished_run_longer(single_run: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(single_run, run_dir)
    run_train([f"resume={run_dir}", "++trainer.max_epochs=4"])
    record = read_metrics(run_dir)
    assert record["status"] == "completed"
    assert [h["epoch"] for h in record["metrics"]["val_history"]] == [1, 2, 3, 4]
    steps = [step for step, _ in read_scalars(run_dir)["val/acc"]]
    assert steps == sorted(set(steps)) and len(steps) == 4  # the same TensorBoard run, continued
