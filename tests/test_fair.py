"""The fair comparison: the identity+mse control, the per-layer diagnostics, each cell at its
own best learning rate chosen on validation, and what depth does; findings from the numbers."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from slowlearn import diagnostics
from slowlearn.losses import ACTIVATIONS, objective, targets_like
from slowlearn.records import SETTINGS
from slowlearn.report import LR_SENSITIVITY, make_report
from slowlearn.report.figures import dose_png, is_dose_sweep
from slowlearn.report.findings import finding
from slowlearn.report.runs import Run, group_runs
from slowlearn.report.tables import best_lrs
from tests.conftest import TINY_ARGS, read_scalars, run_train, runs_by_name

# ------------------------------------------------------------------ the output factor


def output_factor(activation: str, loss: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """||delta_out|| / ||o - y|| with delta_out from autograd, for random logits."""
    generator = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(2, 64, 10, generator=generator)).requires_grad_(True)
    labels = torch.randint(0, 10, (2, 64), generator=generator)
    targets = targets_like(logits.detach(), labels)
    objective(activation, loss)(logits, targets).sum().backward()
    outputs = ACTIVATIONS[activation].outputs(logits.detach())
    return diagnostics.output_factor(logits.grad, outputs, targets), outputs, targets


@pytest.mark.parametrize(
    ("activation", "loss"), [("sigmoid", "bce"), ("softmax", "nll"), ("identity", "mse")]
)
def test_the_output_factor_is_1_where_the_error_alone_sets_the_step(activation, loss) -> None:
    factor, *_ = output_factor(activation, loss)
    torch.testing.assert_close(factor, torch.ones(2))


def test_the_output_factor_of_sigmoid_mse_is_its_effective_slope() -> None:
    factor, o, y = output_factor("sigmoid", "mse")
    error = o - y
    slope = torch.linalg.vector_norm((error * o * (1 - o)).flatten(1), dim=1)
    torch.testing.assert_close(factor, slope / torch.linalg.vector_norm(error.flatten(1), dim=1))
    assert (factor < 0.25).all()  # sigma' is at most 1/4


# ------------------------------------------------------------------ choosing the lr


def fake_runs(
    cell: str, lr: float, val: list[float], test: list[float], init: str = "default", **extra
) -> list[Run]:
    """Runs of one cell at one lr, one per seed, with their epoch-1 val and test accuracy."""
    activation, loss = cell.split("+")
    settings = dict.fromkeys(SETTINGS) | {"activation": activation, "loss": loss}
    settings |= {"lr": lr, "init": init, "max_epochs": 1} | extra
    status = extra.pop("status", "completed")
    return [
        Run(
            folder=Path(f"{cell}/{init}/{lr}/{seed}"),
            name=f"{cell}/lr{lr}/seed{seed}",
            status=status,
            error="",
            settings=settings | {"seed": seed},
            results={"epoch1_val_acc": v, "test_acc": t} if status == "completed" else {},
        )
        for seed, (v, t) in enumerate(zip(val, test, strict=True))
    ]


def test_the_best_lr_is_chosen_on_validation_never_on_test() -> None:
    runs = fake_runs("sigmoid+mse", 0.1, [0.50, 0.52], [0.95, 0.95])  # best on test
    runs += fake_runs("sigmoid+mse", 1.0, [0.80, 0.82], [0.70, 0.70])  # best on validation
    runs += fake_runs("sigmoid+mse", 10.0, [0.60, 0.60], [0.60, 0.60])
    (choice,) = best_lrs(runs, group_runs(runs))
    assert choice.lr == 1.0 and not choice.at_edge
    assert choice.mean("test_acc") == pytest.approx(0.70)  # reported at the chosen lr


def test_an_lr_at_the_edge_or_with_a_diverged_seed_is_said_so() -> None:
    runs = fake_runs("sigmoid+mse", 0.1, [0.50, 0.50], [0.5, 0.5])
    runs += fake_runs("sigmoid+mse", 1.0, [0.70, 0.70], [0.7, 0.7])
    runs += fake_runs("sigmoid+mse", 10.0, [0.90, 0.90], [0.9, 0.9])
    runs += fake_runs("sigmoid+mse", 30.0, [0.95], [0.95])
    runs += [fake_runs("sigmoid+mse", 30.0, [0.0], [0.0], status="diverged")[0]]
    (choice,) = best_lrs(runs, group_runs(runs))
    assert choice.ineligible == [30.0]  # its best seed does not make it eligible
    assert choice.lr == 10.0 and not choice.at_edge  # 30 is the grid's edge, 10 is not
    runs = [run for run in runs if run.settings["lr"] != 30.0]
    (choice,) = best_lrs(runs, group_runs(runs))
    assert choice.lr == 10.0 and choice.at_edge


def lr_sweep(mse: dict[float, float], ce: dict[float, float], init: str = "default") -> list[Run]:
    runs = []
    for cell, accuracies in (("sigmoid+mse", mse), ("softmax+nll", ce)):
        for lr, acc in accuracies.items():
            runs += fake_runs(cell, lr, [acc, acc], [acc - 0.01, acc - 0.01], init=init)
    return runs


def test_the_lr_finding_states_the_tuned_gap_and_its_lr_ratio() -> None:
    runs = lr_sweep({0.1: 0.40, 1.0: 0.80, 3.0: 0.90, 10.0: 0.85}, {0.1: 0.90, 1.0: 0.95, 3.0: 0.9})
    groups = group_runs(runs)
    (paragraph,) = finding(groups, best_lrs(runs, groups))
    assert paragraph.startswith(
        "Sigmoid+mse at its best lr 3 (chosen on validation among 4 eligible)"
    )
    assert "reaches 90.0% val accuracy after epoch 1, against 95.0% for the one " in paragraph
    assert "in every seed it trails softmax+nll by at least 5.0 points" in paragraph
    assert "at an lr 3x softmax+nll's" in paragraph
    assert "test accuracy at those lrs: 89.0% vs 94.0%" in paragraph and "edge" not in paragraph


def test_the_lr_finding_says_when_tuning_closes_the_gap_or_the_best_is_at_the_edge() -> None:
    runs = lr_sweep({0.1: 0.40, 1.0: 0.80, 10.0: 0.945}, {0.1: 0.90, 1.0: 0.95}, init="large")
    groups = group_runs(runs)
    (paragraph,) = finding(groups, best_lrs(runs, groups))
    assert paragraph.startswith("Sigmoid+mse at its best lr 10")  # one init: no "with init"
    assert "within 2 points of softmax+nll: tuning its lr closes the gap" in paragraph
    assert "Its best lr is the grid's largest" in paragraph


def test_no_gap_is_closed_while_a_cell_is_at_chance() -> None:
    runs = lr_sweep({0.1: 0.11, 1.0: 0.12}, {0.1: 0.10, 1.0: 0.13})
    groups = group_runs(runs)
    (paragraph,) = finding(groups, best_lrs(runs, groups))
    assert "closes the gap" not in paragraph and "no clear gap" not in paragraph
    assert "sigmoid+mse and softmax+nll are at chance (val accuracy below 15%" in paragraph


def test_the_lr_finding_names_the_best_cross_entropy_and_the_same_activation_cure() -> None:
    runs = []
    for cell, accuracies in (
        ("sigmoid+mse", {0.1: 0.80, 1.0: 0.85, 3.0: 0.6}),
        ("sigmoid+bce", {0.1: 0.86, 1.0: 0.90, 3.0: 0.7}),
        ("softmax+nll", {0.1: 0.90, 1.0: 0.93, 3.0: 0.8}),
    ):
        for lr, acc in accuracies.items():
            runs += fake_runs(cell, lr, [acc, acc], [acc, acc])
    groups = group_runs(runs)
    (paragraph,) = finding(groups, best_lrs(runs, groups))
    assert "against 93.0% for the best of the 2 cross-entropy cells present" in paragraph
    assert "a choice that favours cross entropy), softmax+nll at lr 1" in paragraph
    assert "against the cure with the same output activation, sigmoid+bce at lr 1 (90.0%)" in (
        paragraph
    )
    assert "in every seed it trails sigmoid+bce by at least 5.0 points" in paragraph


def with_why(runs: list[Run], pairs: float, factor: float, wrong: float) -> list[Run]:
    for run in runs:
        run.results |= {
            "step0_saturated_pairs": pairs,
            "step0_output_factor": factor,
            "epoch1_output_factor": factor,
            "epoch1_signal_wrong": wrong,
        }
    return runs


def test_the_why_sentence_cites_saturation_the_output_factor_and_the_error_signal() -> None:
    runs = with_why(fake_runs("sigmoid+mse", 0.1, [0.4, 0.4], [0.4, 0.4]), 0.3, 0.05, 0.1)
    runs += with_why(fake_runs("sigmoid+bce", 0.1, [0.9, 0.9], [0.9, 0.9]), 0.3, 1.0, 0.8)
    paragraphs = finding(group_runs(runs))
    (why,) = [p for p in paragraphs if p.startswith("Why")]
    assert "at step 0, 30.0% of sigmoid+mse's (image, output) pairs are saturated" in why
    assert "output factor ‖δ_out‖/‖o − y‖ is 0.05, against 1 for sigmoid+bce" in why
    assert "misclassifies is 0.1, against 0.8 for sigmoid+bce" in why
    assert "its step there is 0.12x the cure's, with its output factor at 0.05" in why
    # A factor near 1 names no sigma' cause, whatever the signals.
    for run in runs:
        if run.cell == "sigmoid+mse":
            run.results |= {"step0_output_factor": 0.9, "epoch1_output_factor": 0.9}
    (why,) = [p for p in finding(group_runs(runs)) if p.startswith("Why")]
    assert "σ′" not in why and "x the cure's" not in why


def depth_runs(speeds: dict[str, list[float]], accuracy: float) -> list[Run]:
    """One seed per cell at depth 3, with the given step-0 layer speeds (hidden1 first)."""
    runs = []
    for cell, values in speeds.items():
        (run,) = fake_runs(cell, 0.1, [accuracy], [accuracy], depth=3, max_epochs=3)
        run.results["final_val_acc"] = accuracy
        layers = ["hidden1", "hidden2", "hidden3", "output"]
        run.scalars = {
            f"diag/fixed/bias_grad_norm/{layer}": [(0, v)]
            for layer, v in zip(layers, values, strict=True)
        }
        runs.append(run)
    return runs + fake_depth1()


def fake_depth1() -> list[Run]:
    (run,) = fake_runs("sigmoid+bce", 0.1, [0.9], [0.9], depth=1, max_epochs=3)
    run.results["final_val_acc"] = 0.9
    return [run]


def test_the_depth_finding_cites_layer_speeds_and_says_shrink_only_when_they_do() -> None:
    shrinking = {"sigmoid+mse": [1e-4, 1e-3, 1e-2, 1.0], "sigmoid+bce": [2e-4, 2e-3, 2e-2, 1.0]}
    (at_depth3,) = [p for p in finding(group_runs(depth_runs(shrinking, 0.11))) if "=3" in p]
    assert at_depth3.startswith("With depth=3, no objective leaves chance in 3 epochs (val ")
    assert "at step 0 hidden1 learns 5,000x to 10,000x slower than the output layer" in at_depth3
    assert "the speed shrinks at every layer on the way down" in at_depth3
    growing = {"sigmoid+mse": [2.0, 1.5, 1.2, 1.0], "sigmoid+bce": [1e-3, 1e-2, 0.1, 1.0]}
    (at_depth3,) = [p for p in finding(group_runs(depth_runs(growing, 0.11))) if "=3" in p]
    assert "not slower for every objective" in at_depth3
    for word in ("shrink", "vanish", "slower than the output layer for every"):
        assert word not in at_depth3


def test_the_depth_finding_says_which_objectives_leave_chance() -> None:
    runs = []
    for depth, init, accuracies in (
        (1, "default", {"sigmoid+mse": 0.60, "sigmoid+bce": 0.90, "softmax+nll": 0.92}),
        (1, "xavier", {"sigmoid+mse": 0.70, "sigmoid+bce": 0.91, "softmax+nll": 0.93}),
        (3, "default", {"sigmoid+mse": 0.11, "sigmoid+bce": 0.11, "softmax+nll": 0.10}),
        (3, "xavier", {"sigmoid+mse": 0.11, "sigmoid+bce": 0.78, "softmax+nll": 0.83}),
    ):
        for cell, acc in accuracies.items():
            for run in fake_runs(cell, 0.1, [acc], [acc], init=init, depth=depth, max_epochs=3):
                run.results["final_val_acc"] = acc
                runs.append(run)
    paragraphs = finding(group_runs(runs))
    assert paragraphs[0] == (
        "With init=default, depth=1, after 3 epochs (final val accuracy) the cross-entropy cells "
        "reach 90.0%–92.0% and sigmoid+mse reaches 60.0%."
    )
    # No layer speeds measured: no cause named.
    assert paragraphs[1] == (
        "With init=default, depth=3, no objective leaves chance in 3 epochs (val accuracy below "
        "15%; chance itself is 10%; the best final val accuracy is 11.0%)."
    )
    assert paragraphs[3] == (
        "With init=xavier, depth=3, after 3 epochs (final val accuracy) the cross-entropy cells "
        "reach 78.0%–83.0% and sigmoid+mse stays at chance (11.0%)."
    )
    assert paragraphs[4:] == [
        "With init=default, the objectives that leave chance (final val accuracy of 15% or "
        "more; chance itself is 10%): cross entropy at depth 1; sigmoid+mse at depth 1.",
        "With init=xavier, the objectives that leave chance (final val accuracy of 15% or "
        "more; chance itself is 10%): cross entropy at depths 1 and 3; sigmoid+mse at depth 1.",
    ]


# ------------------------------------------------------------------ reports on real sweeps


@pytest.fixture(scope="module")
def lr_sweep_dir(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The lr_fair preset on the tiny data: two cells and the control at three lrs, seed 0."""
    sweep_dir = tmp_path_factory.mktemp("lr_fair")
    args = [a for a in TINY_ARGS if "max_epochs" not in a and "hidden_sizes" not in a]
    run_train(
        ["-m", "experiment=lr_fair", "cell=sigmoid_mse,softmax_nll,identity_mse"]
        + ["optimizer.lr=0.03,0.3,3", "model.init=default", "seed=0", "hydra/launcher=batched"]
        + [f"data.dir={tiny_data}", f"hydra.sweep.dir={sweep_dir}", *args]
    )
    make_report(sweep_dir)
    return sweep_dir


def test_the_report_of_an_lr_sweep_tables_each_cell_at_its_best_lr(lr_sweep_dir: Path) -> None:
    text = (lr_sweep_dir / "report.md").read_text()
    assert "## Each cell at its best learning rate" in text
    table = text.split("## Each cell at its best learning rate")[1].split("<details>")[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "+" in line]
    best = {row.split(" | ")[0][2:]: row for row in rows}
    assert set(best) == {"sigmoid+mse", "softmax+nll", "identity+mse"}
    with (lr_sweep_dir / "summary.csv").open() as f:
        summary = list(csv.DictReader(f))
    for cell, row in best.items():
        chosen = float(row.split(" | ")[2])
        means = {}
        for line in (r for r in summary if r["cell"] == cell):
            means.setdefault(float(line["lr"]), []).append(float(line["epoch1_val_acc"]))
        assert chosen == max(means, key=lambda lr: sum(means[lr]))  # the best on validation
        assert len(means) == 3
    assert (lr_sweep_dir / LR_SENSITIVITY).read_bytes().startswith(b"\x89PNG")
    assert "at its best lr" in text.split("## Findings")[1]
    why = text.split("## Why, measured, each cell at its chosen lr")[1]
    assert "| sigmoid+mse, lr=" in why and "| identity+mse, lr=" in why
    assert "saturated-and-wrong pairs" in why and "| hidden1 | output | hidden1 : output |" in why
    assert "control identity+mse, at its best lr" in text


def test_sigmoid_hidden_layers_log_their_slope_and_saturation(lr_sweep_dir: Path) -> None:
    run_dir = runs_by_name(lr_sweep_dir)["sigmoid+mse/lr0.3"]
    scalars = read_scalars(run_dir)
    for tag in ("diag/sigmoid_slope/hidden1", "diag/saturated_fraction/hidden1"):
        assert scalars[tag] and all(0 <= v <= 1 for _, v in scalars[tag])
    assert all(0 < v <= 0.25 for _, v in scalars["diag/sigmoid_slope/hidden1"])
    control = read_scalars(runs_by_name(lr_sweep_dir)["identity+mse/lr0.3"])
    assert "diag/saturated_wrong_fraction" not in control  # no probabilities: left out
    assert all(math.isclose(v, 1, rel_tol=1e-4) for _, v in control["diag/output_factor"])


def test_the_report_of_a_depth_sweep_has_a_depth_column_and_row(
    tiny_data: Path, tmp_path: Path
) -> None:
    args = [a for a in TINY_ARGS if "max_epochs" not in a and "hidden_sizes" not in a]
    run_train(
        ["-m", "experiment=depth", "cell=sigmoid_bce,softmax_nll", "model.hidden_sizes=[8],[8,8]"]
        + ["model.init=default,xavier", "optimizer.lr=0.3,1", "seed=0", "trainer.max_epochs=1"]
        + ["hydra/launcher=batched", f"data.dir={tiny_data}", f"hydra.sweep.dir={tmp_path}", *args]
    )
    findings = make_report(tmp_path)
    with (tmp_path / "summary.csv").open() as f:
        depths = {(row["cell"], row["init"], row["depth"]) for row in csv.DictReader(f)}
    assert len(depths) == 8 and {depth for *_, depth in depths} == {"1", "2"}
    # One per depth and init (each cell at its best lr), a summary per init, and the edge.
    assert len(findings) == 7
    assert all(f.startswith("With init=") and ", depth=" in f for f in findings[:4])
    assert all("the objectives that leave chance (final val" in f for f in findings[4:6])
    assert findings[6].startswith("At the edge of the lr grid, so the best lr may lie outside")
    text = (tmp_path / "report.md").read_text()
    assert "## Each cell at its best learning rate" in text
    assert "| val acc after epoch 1 |" in text  # one epoch here: chosen after epoch 1
    table = text.split("## Final val accuracy by depth, each cell at its best lr")[1]
    assert "| init=default | depth 1 | depth 2 |" in table.split("## ")[0]
    assert "% (lr " in table.split("## ")[0]
    why = text.split("## Why, measured, each cell at its chosen lr")[1]
    assert "| sigmoid+bce, init=xavier, depth=2, lr=" in why.split("### Speed of learning")[0]
    speeds = why.split("### Speed of learning per layer at step 0")[1]
    assert (
        "| init=default, depth=2 | hidden1 | hidden2 | output | hidden1 : hidden2 "
        "| hidden2 : output |" in speeds
    )
    assert "| init=xavier, depth=1 | hidden1 | output | hidden1 : output |" in speeds
    assert (tmp_path / "curves.png").read_bytes().startswith(b"\x89PNG")


def test_a_dose_sweep_draws_accuracy_against_measured_saturation_and_states_each_gap() -> None:
    runs = []
    for scale, (mse, ce, pairs) in {None: (0.9, 0.93, 0.0), 3.0: (0.5, 0.92, 0.3)}.items():
        for cell, accuracies in (("sigmoid+mse", (0.1 * mse, mse)), ("sigmoid+bce", (0.5, ce))):
            for lr, acc in zip((0.1, 1.0), accuracies, strict=True):
                for run in fake_runs(cell, lr, [acc, acc], [acc, acc], output_init_scale=scale):
                    run.results["step0_saturated_pairs"] = pairs
                    runs.append(run)
    groups = group_runs(runs)
    choices = best_lrs(runs, groups)
    assert is_dose_sweep(choices)
    assert dose_png(Path("dose"), choices).startswith(b"\x89PNG")
    summary = finding(groups, choices)[-1]
    assert summary == (
        "Each cell at its own best lr, the best cross-entropy cell present leads sigmoid+mse by "
        "3.0 points with output_init_scale=none (0.0% of its pairs saturated at step 0) and "
        "42.0 points with output_init_scale=3.0 (30.0% of its pairs saturated at step 0) "
        "(differences of seed means; negative: mse ahead)."
    )
