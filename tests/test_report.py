"""The report on a tiny sweep made here: real event files in; summary.csv, report.md and
curves.png out, and nothing else in the folder touched."""

from __future__ import annotations

import csv
import hashlib
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from slowlearn.records import SETTINGS
from slowlearn.report import OUTPUTS, make_report
from slowlearn.report.__main__ import main
from slowlearn.report.findings import finding
from slowlearn.report.runs import RESULTS, Run, group_runs
from slowlearn.report.tables import COLUMNS
from tests.conftest import DIVERGED, env, read_metrics, runs_by_name

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def sweep(tiny_sweep: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny sweep (two cells x two seeds, and a diverged run), in a copy of its own."""
    sweep_dir = tmp_path_factory.mktemp("report") / "sweep"
    shutil.copytree(tiny_sweep, sweep_dir)
    make_report(sweep_dir)
    return sweep_dir


def summary_rows(folder: Path) -> dict[str, dict[str, str]]:
    with (folder / "summary.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames or ()) == COLUMNS
        return {row["run"]: row for row in reader}


def epoch1_error_signal(run_dir: Path) -> float:
    """The mean true-class error signal logged within epoch 1, read here independently."""
    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    end = read_metrics(run_dir)["metrics"]["val_history"][0]["step"]
    values = accumulator.Scalars("diag/error_signal/true_class")
    return statistics.fmean(e.value for e in values if e.step <= end)


def test_summary_has_a_row_per_run_with_its_settings_and_results(sweep: Path) -> None:
    rows = summary_rows(sweep)
    runs = runs_by_name(sweep)
    assert set(rows) == set(runs) and len(rows) == 5
    for name, run_dir in runs.items():
        row, record = rows[name], read_metrics(run_dir)
        metrics, config = record["metrics"], record["config"]
        assert row["status"] == record["status"]
        assert row["cell"] == f"{row['activation']}+{row['loss']}"
        assert row["activation"] == config["activation"]["name"]
        assert (row["optimizer"], row["batch_size"], row["dataset"]) == ("SGD", "50", "mnist")
        assert row["depth"] == "1"
        if run_dir.name == DIVERGED:
            assert (row["status"], row["cell"], row["group"]) == ("diverged", "sigmoid+bce", "")
            assert all(row[key] == "" for key in RESULTS)
            continue
        assert row["seed"] == str(config["seed"])
        assert float(row["test_acc"]) == pytest.approx(metrics["test_acc"], rel=1e-5)
        assert float(row["best_val_acc"]) == pytest.approx(metrics["best_val_acc"], rel=1e-5)
        first = metrics["val_history"][0]
        assert float(row["epoch1_val_acc"]) == pytest.approx(first["val/acc"], rel=1e-5)
        assert float(row["epoch1_error_signal"]) == pytest.approx(
            epoch1_error_signal(run_dir), rel=1e-5
        )
        reached = metrics["step_to_90_val_acc"]
        assert row["step_to_90_val_acc"] == ("" if reached is None else str(reached))


def test_report_tables_the_groups_and_states_the_finding_with_its_numbers(sweep: Path) -> None:
    text = (sweep / "report.md").read_text()
    rows = summary_rows(sweep).values()
    for cell in ("sigmoid+mse", "softmax+nll"):
        (line,) = [line for line in text.splitlines() if line.startswith(f"| {cell} | 2 |")]
        assert line.count("±") >= 4  # mean ± std of the two seeds
    epoch1 = {
        cell: statistics.fmean(float(r["epoch1_val_acc"]) for r in rows if r["cell"] == cell)
        for cell in ("sigmoid+mse", "softmax+nll")
    }
    statement = (
        f"After epoch 1, sigmoid+mse reaches {100 * epoch1['sigmoid+mse']:.1f}% val accuracy "
        f"vs {100 * epoch1['softmax+nll']:.1f}% for softmax+nll (mean of 2 seeds); "
    )
    assert statement in text
    assert "- `sigmoid+bce` (sigmoid+bce, seed 0): **diverged**: training loss is nan" in text


def test_curves_are_a_valid_png_under_300_kb(sweep: Path) -> None:
    png = (sweep / "curves.png").read_bytes()
    assert png.startswith(PNG_SIGNATURE)
    width, height = (int.from_bytes(png[at : at + 4], "big") for at in (16, 20))
    assert width >= 1200 and height >= 400
    assert len(png) < 300_000


def snapshot(folder: Path) -> dict[Path, tuple[bytes, int]]:
    return {
        path: (hashlib.sha256(path.read_bytes()).digest(), path.stat().st_mtime_ns)
        for path in folder.rglob("*")
        if path.is_file()
    }


def test_command_line_rewrites_its_own_files_and_touches_nothing_else(
    sweep: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = snapshot(sweep)
    main([str(sweep)])
    assert "After epoch 1, sigmoid+mse reaches" in capsys.readouterr().out
    after = snapshot(sweep)
    aggregated = {path for path in {*before, *after} if "/mean/" in str(path)}
    assert set(after) - aggregated == set(before) - aggregated  # no other file, no temporaries
    outputs = {sweep / name for name in OUTPUTS}
    changed = {path for path in set(after) & set(before) if after[path] != before[path]}
    assert changed - aggregated == outputs
    # The aggregated TensorBoard runs are replaced, never appended to: one event file each.
    for folder in {path.parent for path in aggregated}:
        assert len(list(folder.glob("events.out.tfevents.*"))) == 1


def test_a_single_run_folder_gets_a_one_row_report(sweep: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(runs_by_name(sweep)["sigmoid+mse/seed0"], run_dir)
    make_report(run_dir)
    (row,) = summary_rows(run_dir).values()
    assert (row["run"], row["status"], row["cell"]) == (
        "sigmoid+mse/seed0",
        "completed",
        "sigmoid+mse",
    )
    assert not (run_dir / "mean").exists()  # no aggregated run for a single run
    text = (run_dir / "report.md").read_text()
    (line,) = [line for line in text.splitlines() if line.startswith("| sigmoid+mse | 1 |")]
    assert "±" not in line
    assert "Val accuracy after epoch 1: sigmoid+mse" in text
    assert (run_dir / "curves.png").read_bytes().startswith(PNG_SIGNATURE)


def test_a_folder_without_runs_is_a_one_line_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=re.escape(str(tmp_path))) as raised:
        make_report(tmp_path)
    assert "\n" not in str(raised.value)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ the finding's wording


def fake_runs(cell: str, epoch1_acc: list[float], **settings: object) -> list[Run]:
    """Completed runs of one cell, one per seed, with the given val accuracy after epoch 1."""
    activation, loss = cell.split("+")
    base = dict.fromkeys(SETTINGS) | {"activation": activation, "loss": loss} | settings
    return [
        Run(
            folder=Path(f"{cell}/{settings}/seed{seed}"),
            name=f"{cell}/seed{seed}",
            status="completed",
            error="",
            settings=base | {"seed": seed},
            results={"epoch1_val_acc": acc},
        )
        for seed, acc in enumerate(epoch1_acc)
    ]


def test_the_finding_states_a_gap_in_every_seed_with_its_numbers() -> None:
    runs = fake_runs("sigmoid+mse", [0.40, 0.45])
    runs += fake_runs("sigmoid+bce", [0.87, 0.88]) + fake_runs("softmax+nll", [0.86, 0.90])
    assert finding(group_runs(runs)) == [
        "After epoch 1, sigmoid+mse reaches 42.5% val accuracy vs 87.5% for sigmoid+bce and "
        "88.0% for softmax+nll (mean of 2 seeds); in every seed it trails both by at least "
        "43.0 points."
    ]


@pytest.mark.parametrize(
    ("mse", "nll", "clause"),
    [
        ([0.900, 0.905], [0.91, 0.89], "in every seed it is within 2 points of softmax+nll"),
        ([0.95, 0.96], [0.90, 0.91], "in every seed it is ahead of softmax+nll by at least 5.0"),
        ([0.5, 0.9], [0.7, 0.7], "ranges from -20.0 to +20.0 points, so it neither trails nor"),
    ],
)
def test_the_finding_says_when_the_gap_is_small_reversed_or_mixed(
    mse: list[float], nll: list[float], clause: str
) -> None:
    (paragraph,) = finding(
        group_runs(fake_runs("sigmoid+mse", mse) + fake_runs("softmax+nll", nll))
    )
    assert clause in paragraph
    assert "trails" not in paragraph.replace("neither trails", "")


def test_the_finding_compares_the_cells_under_each_optimiser() -> None:
    runs = []
    for optimizer, accuracies in (("SGD", [0.40, 0.85]), ("Adam", [0.90, 0.91])):
        runs += fake_runs("sigmoid+mse", [accuracies[0]] * 3, optimizer=optimizer)
        runs += fake_runs("softmax+nll", [accuracies[1]] * 3, optimizer=optimizer)
    paragraphs = finding(group_runs(runs))
    assert paragraphs == [
        "With optimizer=Adam, after epoch 1, sigmoid+mse reaches 90.0% val accuracy vs 91.0% "
        "for softmax+nll (mean of 3 seeds); in every seed it is within 2 points of "
        "softmax+nll: no clear gap.",
        "With optimizer=SGD, after epoch 1, sigmoid+mse reaches 40.0% val accuracy vs 85.0% "
        "for softmax+nll (mean of 3 seeds); in every seed it trails softmax+nll by at least "
        "45.0 points.",
        "After epoch 1 the best cross-entropy cell leads sigmoid+mse by 1.0 points with "
        "optimizer=Adam and 45.0 points with optimizer=SGD (differences of seed means; "
        "negative: mse ahead).",
    ]


def test_the_custom_scalars_layout_is_torchs_without_importing_torch() -> None:
    from torch.utils.tensorboard.summary import custom_scalars

    from slowlearn.report.aggregate import AGGREGATED, layout

    title = "mean over seeds with its min-max band (runs */mean, written by make report)"
    charts = {tag: ["Margin", [tag, f"{tag}/min", f"{tag}/max"]] for tag in AGGREGATED}
    assert layout().SerializeToString() == custom_scalars({title: charts}).SerializeToString()


def test_the_report_command_imports_no_torch_lightning_hydra_or_tensorboard_writer(
    sweep: Path, tmp_path: Path
) -> None:
    """``make report`` must take less time than importing torch alone: it reads and writes
    event files itself, and reads settings without OmegaConf or Hydra."""
    copy = tmp_path / "sweep"
    shutil.copytree(sweep, copy)
    heavy = ("torch", "pytorch_lightning", "lightning_fabric", "hydra", "omegaconf")
    code = (
        "import sys; from slowlearn.report.__main__ import main; main(sys.argv[1:]); "
        f"heavy = {heavy!r}; "
        "found = [m for m in sys.modules if m.split('.')[0] in heavy "
        "or m.startswith(('tensorboard.summary', 'tensorboard.backend'))]; "
        "assert not found, found"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(copy)], env=env(), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
