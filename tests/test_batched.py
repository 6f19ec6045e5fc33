"""The batched launcher: which jobs share a program, and that a member of a group is
indistinguishable from the same run trained alone (start, data order, numbers, files), with
its faults kept to itself."""

from __future__ import annotations

import dataclasses
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.types import HydraContext
from hydra.utils import instantiate
from omegaconf import OmegaConf

import hydra_plugins.slowlearn_batched_launcher.batched_launcher as batched_launcher
from slowlearn import evaluate, optimizers
from slowlearn.groups import MEMBER_SETTINGS, build_module, form_groups, member_differences
from slowlearn.model import stacked_layout
from slowlearn.step import Member
from slowlearn.train import Job, train_and_test
from tests.conftest import (
    REPO,
    TINY_ARGS,
    compose_config,
    env,
    read_metrics,
    read_scalars,
    run_train,
    runs_by_name,
    wait_for_file,
)


def resolved(*overrides: str) -> OmegaConf:
    cfg = compose_config(*overrides, hydra_node=False)
    cfg.run_dir = "unused"
    return OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))


# ------------------------------------------------------------------ grouping


def test_jobs_group_when_they_differ_only_in_what_a_member_may_differ_in() -> None:
    base = ("experiment=ablation",)
    cfgs = [
        resolved(*base, "cell=sigmoid_mse", "seed=0"),
        resolved(*base, "cell=softmax_nll", "seed=1", "model.init=large", "optimizer.lr=0.3"),
        resolved(*base, "cell=sigmoid_bce", "loss.log_base=2"),
        resolved(*base, "model.hidden_sizes=[30]"),  # another architecture: its own program
        resolved(*base, "data.batch_size=10"),  # another batch size: its own program
    ]
    groups = form_groups(cfgs, max_members=64)
    assert sorted(map(sorted, groups)) == [[0, 1, 2], [3], [4]]
    first = next(g for g in groups if len(g) == 3)
    assert [cfgs[i].loss.name for i in first] == ["bce", "mse", "nll"]  # cells side by side
    differing = member_differences([cfgs[i] for i in first])
    assert differing == [
        "activation",
        "loss",
        "loss.log_base",
        "model.init",
        "optimizer.lr",
        "seed",
    ]


def test_the_docs_name_exactly_the_settings_a_member_may_differ_in() -> None:
    """docs/sweeps.md lists them in one sentence, its keys in backticks, as the launcher
    prints them; the step's Member holds those it needs."""
    text = " ".join((REPO / "docs" / "sweeps.md").read_text().split())
    start = text.index("equal except in what a member may differ in:")
    sentence = text[start : text.index("their own paths and names", start)]
    named = set(re.findall(r"`([^`]+)`", sentence))
    assert named == {setting.key.removesuffix(".name") for setting in MEMBER_SETTINGS}
    held = {setting.member for setting in MEMBER_SETTINGS if setting.member}
    assert held == {field.name for field in dataclasses.fields(Member)}


def test_the_launcher_takes_the_job_configs_the_sweeper_composed_to_check_them() -> None:
    master = compose_config()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        context = HydraContext(GlobalHydra.instance().config_loader(), callbacks=None)
        # Through the module: Hydra's plugin scan runs it again, which makes new classes.
        launcher = batched_launcher.BatchedLauncher()
        launcher.setup(hydra_context=context, task_function=print, config=master)
        loader = context.config_loader  # the sweeper's checks go through it too
        assert isinstance(loader, batched_launcher.ComposedOnce)
        checked = loader.load_sweep_config(master, ["seed=1", "cell=sigmoid_mse"])
        taken = loader.take(master, ["seed=1", "cell=sigmoid_mse"])
        composed_again = loader.take(master, ["seed=1", "cell=sigmoid_mse"])
    assert taken is checked  # handed over, not composed a second time
    assert composed_again is not checked  # taken once: asked again, Hydra composes it anew
    as_written = OmegaConf.to_container  # unresolved: interpolations as text
    assert as_written(composed_again) == as_written(checked)
    assert (checked.seed, checked.activation.name, checked.loss.name) == (1, "sigmoid", "mse")


def test_a_group_bigger_than_max_members_is_split_evenly() -> None:
    cfgs = [resolved("experiment=ablation", f"seed={seed}") for seed in range(10)]
    assert [len(g) for g in form_groups(cfgs, max_members=4)] == [4, 3, 3]


def test_a_members_initial_weights_are_its_single_runs_exactly() -> None:
    cfgs = [resolved("experiment=ablation", f"seed={seed}") for seed in (3, 0, 7)]
    group = build_module(cfgs)
    for member, cfg in enumerate(cfgs):
        alone = build_module([cfg])
        torch.manual_seed(cfg.seed)  # what seed_everything(seed) then instantiate draws
        plain = instantiate(cfg.model).state_dict()
        for name, value in group.network.member_state(member).items():
            assert torch.equal(value, alone.network.member_state(0)[name])
            assert torch.equal(value, plain[name])


# ------------------------------------------------------------------ the update


@pytest.mark.parametrize(
    ("rule", "settings"),
    [(optimizers.SGD, {}), (optimizers.SGD, {"momentum": 0.9}), (optimizers.Adam, {})],
)
def test_each_member_steps_with_its_own_lr_as_torch_optim_would_alone(
    rule: type[optimizers.MemberOptimizer], settings: dict
) -> None:
    """Three members with lrs 0.01, 0.1, 1 (Adam: a hundredth) for 200 steps: given the same
    gradients, each member's weights and state are those torch.optim gives a plain model
    with that lr alone (the update is exact; only float rounding may differ)."""
    torch.manual_seed(0)
    lrs = [0.01, 0.1, 1.0] if rule is optimizers.SGD else [1e-4, 1e-3, 1e-2]
    cfgs = [
        resolved("cell=sigmoid_mse", "model.hidden_sizes=[16]", f"seed={seed}") for seed in range(3)
    ]
    module = build_module(cfgs)
    stacked = list(module.network.stacked)
    ours = rule(stacked, lrs, selected=stacked[:2], **settings)
    plains = []
    for member, lr in enumerate(lrs):
        plain = instantiate(cfgs[member].model)
        plain.load_state_dict(module.network.member_state(member))
        plains.append((plain, rule.rule(plain.parameters(), lr=lr, **settings)))
    x, y = torch.rand(200, 3, 8, 784), torch.randint(0, 10, (200, 3, 8))
    for step in range(200):
        logits, _ = module.network(x[step], training=ours.freeze.training)
        losses = module.step.member_losses(logits, torch.nn.functional.one_hot(y[step], 10).float())
        ours.zero_grad()
        losses.sum().backward()  # the sum of the batch means: each member's gradient its own
        for member, (plain, torch_optimizer) in enumerate(plains):
            for name, param in plain.named_parameters():
                stacked_grad = dict(zip(module.network.names, stacked, strict=True))[name].grad
                param.grad = stacked_layout(stacked_grad[member]).clone()
            torch_optimizer.step()
        ours.step()
    for member, (plain, torch_optimizer) in enumerate(plains):
        for name, value in plain.state_dict().items():
            torch.testing.assert_close(
                module.network.member_state(member)[name], value, rtol=1e-6, atol=1e-7
            )
        saved = ours.member_state_dict(member)  # torch.optim's own format, member by member
        assert saved["param_groups"] == torch_optimizer.state_dict()["param_groups"]
        for index, state in torch_optimizer.state_dict()["state"].items():
            for key, value in state.items():
                torch.testing.assert_close(saved["state"][index][key], value, rtol=1e-6, atol=1e-7)


def test_the_group_loss_is_the_sum_of_the_members_batch_means() -> None:
    """Each member's gradient from the group's loss is its own single-run gradient, unscaled:
    a mean over members would divide every member's learning rate by R."""
    cfgs = [resolved("experiment=ablation", f"seed={seed}") for seed in (0, 1, 2)]
    group, alone = build_module(cfgs), build_module(cfgs[1:2])
    x, y = torch.rand(3, 8, 784), torch.randint(0, 10, (3, 8))
    targets = torch.nn.functional.one_hot(y, 10).float()
    group.step.member_losses(group.network(x)[0], targets).sum().backward()
    alone.step.member_losses(alone.network(x[1:2])[0], targets[1:2]).sum().backward()
    for ours, theirs in zip(group.network.stacked, alone.network.stacked, strict=True):
        torch.testing.assert_close(ours.grad[1], theirs.grad[0])


def test_a_frozen_member_keeps_its_weights_and_the_others_go_on() -> None:
    """NaN gradients of a frozen member change nothing of its weights or optimizer state
    (the input, data, is always finite: see ``model.input_layer``)."""
    cfgs = [resolved("experiment=ablation", f"seed={seed}") for seed in (0, 1)]
    module = build_module(cfgs)
    stacked = list(module.network.stacked)
    optimizer = optimizers.SGD(stacked, [0.1, 0.1], selected=stacked[:2], momentum=0.9)
    x, y = torch.rand(2, 8, 784), torch.randint(0, 10, (2, 8))
    with torch.no_grad():  # member 1's weights blew up: its logits and loss are not finite
        stacked[-1][1, 0] = float("inf")
    before = [p.detach().clone() for p in stacked]
    logits, _ = module.network(x, training=optimizer.freeze.training)
    losses = module.step.member_losses(logits, torch.nn.functional.one_hot(y, 10).float())
    optimizer.freeze.stop_diverged(losses)  # as the step does
    losses.sum().backward()
    optimizer.step()
    assert optimizer.freeze.alive.tolist() == [True, False]
    for p, old in zip(stacked, before, strict=True):
        assert torch.equal(p[1], old[1])  # frozen at its last finite values
        assert not torch.equal(p[0], old[0])  # member 0 stepped
        assert torch.isfinite(optimizer.state[p]["momentum_buffer"]).all()


# ------------------------------------------------------------------ a group against its runs


def train_jobs(cfgs: list[OmegaConf], folder: Path) -> list:
    jobs = []
    for index, cfg in enumerate(cfgs):
        cfg = cfg.copy()
        cfg.run_dir = str(folder / f"member{index}")
        jobs.append(Job.resolved(cfg))
    return train_and_test(jobs, cores=1), [job.run_dir for job in jobs]


def test_a_group_trains_as_its_members_would_alone(tiny_data: Path, tmp_path: Path) -> None:
    """2 cells x 2 seeds, 1 epoch of 50 steps: the same per-step losses (to 1e-4 relative)
    and test accuracies (within 0.3 points) as the 4 single runs."""
    args = [a for a in TINY_ARGS if "max_epochs" not in a]
    cfgs = [
        compose_config(
            f"data.dir={tiny_data}",
            *args,
            f"cell={cell}",
            f"seed={seed}",
            "data.batch_size=10",
            "trainer.max_epochs=1",
            "module.loss_window=1",
            hydra_node=False,
        )
        for cell in ("sigmoid_mse", "softmax_nll")
        for seed in (0, 1)
    ]
    group, group_dirs = train_jobs(cfgs, tmp_path / "group")
    for member, cfg in enumerate(cfgs):
        (alone,), (alone_dir,) = train_jobs([cfg], tmp_path / f"alone{member}")
        ours, theirs = read_scalars(group_dirs[member]), read_scalars(alone_dir)
        losses = [[v for _, v in run["train/loss"][:50]] for run in (ours, theirs)]
        assert len(losses[0]) == 50
        assert losses[0] == pytest.approx(losses[1], rel=1e-4)
        accuracy = [outcome.metrics["test_acc"] for outcome in (group[member], alone)]
        assert abs(accuracy[0] - accuracy[1]) <= 0.003
        assert group[member].record["seconds"]["training"] > 0


# ------------------------------------------------------------------ faults stay with a member


def test_a_diverged_member_and_a_failed_job_leave_the_rest_of_the_sweep(
    tiny_data: Path, tmp_path: Path
) -> None:
    result = run_train(
        ["-m", "optimizer.lr=0.1,1e30,-1", "model.hidden_activation=relu", f"data.dir={tiny_data}"]
        + [f"hydra.sweep.dir={tmp_path}", "hydra/launcher=batched", *TINY_ARGS],
        check=False,
    )
    # The failed job makes the exit status non-zero; the diverged one alone would not
    # (test_sweep_status.py). The line that ends the sweep counts both.
    assert result.returncode != 0
    assert "3 jobs in 1 group; 1 failed its checks" in result.stderr + result.stdout
    assert result.stdout.splitlines()[-1] == (
        f"3 runs: 1 completed, 1 diverged, 1 failed; make report RUN={tmp_path} lists them"
    )
    runs = runs_by_name(tmp_path)
    statuses = {name: read_metrics(path)["status"] for name, path in runs.items()}
    assert statuses == {
        "softmax+nll/lr0.1": "completed",
        "softmax+nll/lr1e+30": "diverged",
        "softmax+nll/lr-1": "failed",
    }
    diverged = read_metrics(runs["softmax+nll/lr1e+30"])
    assert diverged["error"].startswith("training loss is nan at step 1; last finite loss")
    assert read_metrics(runs["softmax+nll/lr-1"])["error"] == (
        "ConfigError: optimizer.lr=-1 is not allowed: a positive number"
    )
    completed = read_metrics(runs["softmax+nll/lr0.1"])
    assert completed["metrics"]["test_acc"] > 0.9 and len(completed["metrics"]["val_history"]) == 2
    assert not (runs["softmax+nll/lr1e+30"] / "checkpoints" / "last.ckpt").exists()
    assert diverged["metrics"]["test_acc"] is None  # as alone: a diverged run is not tested


def test_a_members_checkpoint_evaluates_to_its_test_accuracy(tiny_sweep: Path) -> None:
    run_dir = runs_by_name(tiny_sweep)["sigmoid+mse/seed1"]
    results = evaluate.evaluate(run_dir / "checkpoints" / "last.ckpt", accelerator="cpu")
    metrics = read_metrics(run_dir)["metrics"]
    assert results["test/acc"] == pytest.approx(metrics["test_acc"], abs=1e-6)
    assert results["test/loss"] == pytest.approx(metrics["test_loss"], rel=1e-5)


def start_sweep(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "slowlearn.train", "-m", *args, "threads=1"],
        cwd=REPO,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_killed_members_resume_to_the_result_of_an_uninterrupted_sweep(
    tiny_data: Path, tmp_path: Path
) -> None:
    """SIGKILL during a batched sweep; then each member resumes from its own last checkpoint
    (resume=<member folder>) and ends where the same group trained without a break ended."""
    args = [f"data.dir={tiny_data}", *TINY_ARGS, "trainer.max_epochs=6", "data.batch_size=10"]
    cfgs = [compose_config(*args, f"seed={seed}", hydra_node=False) for seed in (0, 1)]
    (straight, _), _ = train_jobs(cfgs, tmp_path / "straight")  # the same group, uninterrupted
    sweep = ["seed=0,1", "hydra/launcher=batched", f"hydra.sweep.dir={tmp_path / 'killed'}"]
    process = start_sweep([*sweep, *args])
    member = tmp_path / "killed" / "softmax+nll" / "seed0"
    checkpoint = member / "checkpoints" / "last.ckpt"
    wait_for_file(checkpoint, process)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert read_metrics(member)["status"] == "running"
    run_train([f"resume={member}"])
    resumed = read_metrics(member)
    assert resumed["status"] == "completed" and resumed["run_name"] == "softmax+nll/seed0"
    assert resumed["metrics"]["test_acc"] == pytest.approx(straight.metrics["test_acc"], abs=1e-6)
    assert resumed["metrics"]["final_train_loss"] == pytest.approx(
        straight.metrics["final_train_loss"], rel=1e-5
    )
    assert [h["epoch"] for h in resumed["metrics"]["val_history"]] == list(range(1, 7))
    steps = [step for step, _ in read_scalars(member)["val/acc"]]
    assert steps == sorted(set(steps)) and len(steps) == 6  # its own TensorBoard run, continued


def test_ctrl_c_records_every_member_interrupted(tiny_data: Path, tmp_path: Path) -> None:
    args = ["seed=0,1,2", "hydra/launcher=batched", f"data.dir={tiny_data}", *TINY_ARGS]
    process = start_sweep([*args, "trainer.max_epochs=50", f"hydra.sweep.dir={tmp_path}"])
    checkpoint = tmp_path / "softmax+nll" / "seed0" / "checkpoints" / "last.ckpt"
    wait_for_file(checkpoint, process)
    process.send_signal(signal.SIGINT)
    stdout, _ = process.communicate(timeout=60)
    assert process.returncode != 0
    records = [read_metrics(path) for path in runs_by_name(tmp_path).values()]
    assert [r["status"] for r in records] == ["interrupted"] * 3
    assert (
        stdout.splitlines()[-1] == f"3 runs: 3 interrupted; make report RUN={tmp_path} lists them"
    )
    assert all(read_scalars(tmp_path / r["run_name"])["val/acc"] for r in records)  # flushed
