"""hydra/launcher=batched with hydra.launcher.executor=local or slurm: each group a submitit
job, the whole sweep one submission; a member's result as in-process, a dead job's members
failed with its log, a preempted job requeued and its members resumed to the uninterrupted
result. SLURM itself is not here: its sbatch script is generated and read."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
from hydra.utils import instantiate

from slowlearn.group_submission import make_executor
from tests.conftest import (
    REPO,
    TINY_ARGS,
    compose_config,
    env,
    raw_values,
    read_metrics,
    read_scalars,
    run_train,
    runs_by_name,
)
from tests.test_batched import train_jobs


def tiny(*swept: str) -> list[str]:
    """TINY_ARGS without the keys that a test sweeps (a later override would win)."""
    return [a for a in TINY_ARGS if a.split("=", 1)[0].lstrip("+") not in swept]


TIMES = ("wall_seconds", "seconds", "epoch_seconds", "epoch_training_seconds")


def without_times(record: dict) -> dict:
    """A record's metrics without what depends on the clock."""
    metrics = {k: v for k, v in record.get("metrics", {}).items() if k not in TIMES}
    return {"status": record["status"], **metrics}


def assert_close(found: dict, expected: dict) -> None:
    assert found.keys() == expected.keys()
    for key, value in expected.items():
        if isinstance(value, float):
            assert found[key] == pytest.approx(value, abs=1e-6, nan_ok=True), key
        elif key == "val_history":
            for got, want in zip(found[key], value, strict=True):
                assert got == pytest.approx(want, abs=1e-6), key
        else:
            assert found[key] == value, key


def start_sweep(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "slowlearn.train", "-m", *args, "threads=1"],
        cwd=REPO,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(path: Path, process: subprocess.Popen) -> None:
    while not path.exists():
        assert process.poll() is None, process.communicate()[1][-3000:]
        time.sleep(0.05)


def task_process(sweep_dir: Path, member: Path, process: subprocess.Popen) -> int:
    """The pid of the process that trains ``member``: the child of its local job's controller
    (a local job's id is its controller's pid)."""
    groups = sweep_dir / ".groups" / "groups.json"
    wait_for(groups, process)
    (job,) = [g for g in json.loads(groups.read_text())["groups"] if str(member) in g["members"]]
    controller = job["job_id"]
    children = Path(f"/proc/{controller}/task/{controller}/children")
    while not children.read_text().split():
        time.sleep(0.05)
    return int(children.read_text().split()[0])


@pytest.mark.slow
def test_local_jobs_give_the_in_process_sweeps_results(tiny_data: Path, tmp_path: Path) -> None:
    """Two groups (two architectures), each with a member that trains and one that diverges
    at step 1; two jobs with a bad lr fail at their checks, before submission."""
    sweep = [
        "-m",
        "model.hidden_sizes=[16],[32]",
        "optimizer.lr=0.1,1e30,-1",
        "cell=sigmoid_bce",
        "hydra/launcher=batched",
        f"data.dir={tiny_data}",
        *tiny("model.hidden_sizes"),
    ]
    inprocess = run_train([*sweep, f"hydra.sweep.dir={tmp_path / 'in'}"], check=False)
    local = run_train(
        [*sweep, "hydra.launcher.executor=local", f"hydra.sweep.dir={tmp_path / 'local'}"],
        check=False,
    )
    # Hydra's sweep ends with the failed jobs' error, either way.
    assert local.returncode == inprocess.returncode != 0, local.stderr[-3000:]
    assert "6 runs: 2 completed, 2 diverged, 2 failed" in local.stdout
    expected = {name: read_metrics(p) for name, p in runs_by_name(tmp_path / "in").items()}
    found = {name: read_metrics(p) for name, p in runs_by_name(tmp_path / "local").items()}
    assert found.keys() == expected.keys() and len(found) == 6
    for name, record in expected.items():
        assert_close(without_times(found[name]), without_times(record))
    statuses = sorted((name.rsplit("/", 1)[-1], r["status"]) for name, r in found.items())
    assert (
        statuses
        == [("lr-1", "failed")] * 2 + [("lr0.1", "completed")] * 2 + [("lr1e+30", "diverged")] * 2
    )
    for folder in (tmp_path / "in", tmp_path / "local"):  # the report as make sweep makes it
        report = subprocess.run(
            [sys.executable, "-m", "slowlearn.report", str(folder)], cwd=REPO, env=env()
        )
        assert report.returncode == 0
    summary = (tmp_path / "local" / "summary.csv").read_text()
    assert summary == (tmp_path / "in" / "summary.csv").read_text() and summary.count("\n") == 7
    groups = json.loads((tmp_path / "local" / ".groups" / "groups.json").read_text())["groups"]
    assert [len(g["members"]) for g in groups] == [2, 2]
    assert len({g["job_id"] for g in groups}) == 2  # one submitit job per group
    assert all(Path(g["stdout"]).is_file() for g in groups)
    # Both groups in one job: two training processes, the cores split between them.
    folder = tmp_path / "per_job"
    one_job = ["hydra.launcher.executor=local", "hydra.launcher.groups_per_job=2"]
    both = run_train([*sweep, *one_job, f"hydra.sweep.dir={folder}"], check=False, threads=None)
    assert "6 runs: 2 completed, 2 diverged, 2 failed" in both.stdout, both.stderr[-3000:]
    found = {name: read_metrics(p) for name, p in runs_by_name(folder).items()}
    for name, record in expected.items():
        assert_close(without_times(found[name]), without_times(record))
    groups = json.loads((folder / ".groups" / "groups.json").read_text())["groups"]
    assert len(groups) == 2 and len({g["job_id"] for g in groups}) == 1
    threads = [r["threads"] for r in found.values() if r["status"] != "failed"]
    assert threads == [max(1, len(os.sched_getaffinity(0)) // 2)] * 4


def training_processes(task: int) -> list[int]:
    """The training processes a task started (``groups_per_job`` > 1), not multiprocessing's
    resource tracker."""
    children = Path(f"/proc/{task}/task/{task}/children").read_text().split()
    return [
        int(pid) for pid in children if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]


@pytest.mark.slow
@pytest.mark.parametrize("groups_per_job", [1, 2])
def test_a_killed_job_fails_its_own_members_only(
    tiny_data: Path, tmp_path: Path, groups_per_job: int
) -> None:
    """Two groups (1 and 60 epochs); the long one's process is killed after its first epoch:
    its job's (one group a job), or its training process (both groups in one job, once the
    short group is done)."""
    args = [f"data.dir={tiny_data}", *tiny("trainer.max_epochs"), "data.batch_size=10"]
    sweep = ["trainer.max_epochs=1,60", "hydra/launcher=batched", "hydra.launcher.executor=local"]
    sweep.append(f"hydra.launcher.groups_per_job={groups_per_job}")
    process = start_sweep([*sweep, *args, f"hydra.sweep.dir={tmp_path}"])
    long_member = tmp_path / "softmax+nll" / "epochs60"
    short_member = tmp_path / "softmax+nll" / "epochs1"
    pid = task_process(tmp_path, long_member, process)
    wait_for(long_member / "checkpoints" / "last.ckpt", process)
    if groups_per_job == 2:
        deadline = time.monotonic() + 120
        while len(training_processes(pid)) != 1:  # the short group's process has ended
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.05)
        (pid,) = training_processes(pid)
    subprocess.run(["kill", "-KILL", str(pid)], check=True)
    _, stderr = process.communicate(timeout=300)
    killed, other = read_metrics(long_member), read_metrics(short_member)
    assert other["status"] == "completed", stderr[-3000:]
    assert killed["status"] == "failed"
    if groups_per_job == 1:
        assert "ended without a result" in killed["error"]
    else:
        assert "training process ended with exit code -9" in killed["error"]
    assert "_log.err" in killed["error"]
    assert killed["config"]["trainer"]["max_epochs"] == 60  # the running record, kept


class HangOnStop(pl.Callback):
    """A training process that does not stop: it hangs once its group is asked to."""

    def on_exception(self, *args: object) -> None:
        time.sleep(3600)


class SecondEpochs(pl.Callback):
    """Each epoch takes a second more, so that a job's few seconds train about as many epochs
    on a fast machine as on a slow one."""

    def on_train_epoch_start(self, *args: object) -> None:
        time.sleep(1.0)


SECOND_EPOCHS = "+callbacks.second._target_=tests.test_submitit.SecondEpochs"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("groups_per_job", "how"), [(1, "signal"), (2, "signal"), (1, "timeout"), (2, "hang")]
)
def test_a_preempted_job_is_requeued_and_resumes_to_the_uninterrupted_result(
    tiny_data: Path, tmp_path: Path, groups_per_job: int, how: str
) -> None:
    """submitit's preemption signal (SIGUSR2) once every group has trained an epoch (each
    epoch takes a second more): each group stops at its next chunk, writes each member's
    checkpoint there, the job is requeued, and each member resumes from its own checkpoint,
    no step trained or logged twice. With two groups in the
    job the signal reaches the task's process alone, which passes it to both training
    processes. ``timeout``: submitit's own trick instead, a job time too short for its epochs,
    whose signal comes ``signal_delay_s`` before the end (requeued as often as it takes).
    ``hang``: the training processes hang instead of stopping; they are killed once half of
    ``signal_delay_s`` has passed, and their members resume from their last checkpoints."""
    timeout = how == "timeout"
    args = [f"data.dir={tiny_data}", *tiny("trainer.max_epochs"), "data.batch_size=10"]
    epochs = (8,) if timeout else (6, 7)[:groups_per_job]  # one group per number of epochs
    straight = {}
    for epoch_count in epochs:  # the same groups, uninterrupted
        run_args = [*args, f"trainer.max_epochs={epoch_count}"]
        cfgs = [compose_config(*run_args, f"seed={s}", hydra_node=False) for s in (0, 1)]
        outcomes, _ = train_jobs(cfgs, tmp_path / f"straight{epoch_count}")
        straight |= {(epoch_count, seed): o for seed, o in enumerate(outcomes)}
    sweep_dir = tmp_path / "sweep"
    sweep = [
        "seed=0,1",
        f"trainer.max_epochs={','.join(map(str, epochs))}",
        "hydra/launcher=batched",
        "hydra.launcher.executor=local",
        f"hydra.launcher.groups_per_job={groups_per_job}",
    ]
    if how == "hang":  # only the first job hangs: the requeued one gets no signal
        sweep += ["+callbacks.hang._target_=tests.test_submitit.HangOnStop"]
        sweep.append("hydra.launcher.signal_delay_s=4")
    # Epochs of a second or more: every group is still training when the signal comes, on a
    # fast machine as on a slow one, where a job's processes may start seconds apart.
    sweep.append(SECOND_EPOCHS)
    if timeout:  # 30 s a job, the signal at 10 s: the imports and 2 to 5 of its 8 epochs
        sweep += [f"hydra.launcher.{k}" for k in ("timeout_min=0.5", "signal_delay_s=20")]
        # submitit's local controller runs a job at most 6 times, whatever max_num_timeout
        sweep.append("hydra.launcher.max_num_timeout=20")
        probe = "+callbacks.probe._target_=tests.test_train.CollectorProbe"
        sweep += [probe, f"+callbacks.probe.path={tmp_path / 'collector.json'}"]
    process = start_sweep([*sweep, *args, f"hydra.sweep.dir={sweep_dir}"])
    wait_for(sweep_dir / ".groups" / "groups.json", process)
    groups = json.loads((sweep_dir / ".groups" / "groups.json").read_text())["groups"]
    member = Path(groups[0]["members"][0])
    if not timeout:  # the signal once every group has trained its first epoch
        pid = task_process(sweep_dir, member, process)
        for group in groups:
            wait_for(Path(group["members"][0]) / "checkpoints" / "last.ckpt", process)
        subprocess.run(["kill", f"-{signal.Signals.SIGUSR2.name}", str(pid)], check=True)
    stdout, stderr = process.communicate(timeout=300)
    runs = 2 * groups_per_job
    assert f"{runs} runs: {runs} completed" in stdout, stderr[-3000:]
    logs = Path(groups[0]["stdout"]).read_text() + Path(groups[0]["stderr"]).read_text()
    assert "Requeued job" in logs
    if timeout:  # the job's process froze its imports, as the training command does
        collector = json.loads((tmp_path / "collector.json").read_text())
        assert collector["on"] and collector["frozen"] > 100_000, collector
    if how == "hang":
        assert logs.count("did not stop within 2 s of the preemption signal: killed") == 2
    else:
        assert logs.count("preempted: a group of 2 stopped") >= groups_per_job  # each did
    found = runs_by_name(sweep_dir)
    assert len(found) == runs
    for run_dir in found.values():
        resumed = read_metrics(run_dir)
        config = resumed["config"]
        outcome = straight[(config["trainer"]["max_epochs"], config["seed"])]
        assert resumed["status"] == "completed"
        expected = {"status": "completed", "metrics": outcome.metrics}
        assert_close(without_times(resumed), without_times(expected))
        steps = [step for step, _ in read_scalars(run_dir)["val/acc"]]
        assert steps == sorted(set(steps)) and len(steps) == config["trainer"]["max_epochs"]
        if how == "hang":
            continue  # killed: what it logged after its last checkpoint is hidden by purge_step
        written_twice = [key for key, values in raw_values(run_dir).items() if len(values) > 1]
        assert not written_twice  # the requeued job went on from the stop's own step


def test_the_slurm_script_is_one_array_with_the_signal_and_resources(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    submitit = pytest.importorskip("submitit")
    cfg = compose_config(
        "hydra/launcher=batched_slurm",
        "hydra.launcher.partition=gpu",
        "hydra.launcher.account=lab",
        "hydra.launcher.array_parallelism=2",
        "hydra.launcher.signal_delay_s=90",
        "hydra.launcher.timeout_min=30",
        f"hydra.sweep.dir={tmp_path}",
    )
    launcher = instantiate(cfg.hydra.launcher)
    assert launcher.executor == "slurm"

    class Submitted(Exception):
        """Raised instead of calling sbatch, carrying the script."""

    def submit(executor: object, command: str) -> None:
        raise Submitted(executor._make_submission_file_text(command, "uid"))

    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", staticmethod(lambda: 1))  # "srun"
    monkeypatch.setattr(submitit.SlurmExecutor, "_submit_command", submit)
    folder = launcher.submitit["submitit_folder"]
    assert folder == f"{tmp_path}/.groups/%j"
    executor = make_executor("slurm", folder, launcher.submitit)
    with pytest.raises(Submitted) as submitted:
        executor.map_array(print, ["group 1", "group 2", "group 3"])
    script = submitted.value.args[0]
    for line in (
        "--array=0-2%2",  # three groups, two at once
        "--signal=USR2@90",
        "--time=30",
        "--partition=gpu",
        "--account=lab",
        "--gpus-per-node=1",
        "--cpus-per-task=4",
        "--mem=16GB",
    ):
        assert f"#SBATCH {line}\n" in script, script
    assert f"#SBATCH --output={tmp_path}/.groups/%A_%a/%A_%a_0_log.out\n" in script
