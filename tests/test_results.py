"""docs/results.md and the README's results block, generated from copies of the tiny sweep laid
out as logs/multiruns/<preset>/<date>_<time>-XXXX; and the real README against the real
docs/results.md."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from slowlearn.report.results import (
    BEGIN,
    END,
    PERCENT,
    Section,
    Sweep,
    demote,
    find_sweeps,
    first_finding,
    github_anchor,
    main,
    tuned_gaps,
    update_readme,
)
from tests.conftest import REPO, env, job_dirs

OLD_ABLATION = "2024-01-01_00-00-00-aaaa"
NEW_ABLATION = "2024-01-02_00-00-00-bbbb"
LR_FAIR = "2024-01-01_00-00-00-cccc"
LR_FAIR_FASHION = "2024-01-03_00-00-00-dddd"  # the newest lr_fair, but on another dataset
README = "# project\n\nintro\n\n## Results\n\n{BEGIN}\nold block\n{END}\n\n## Rest\n\nkept\n"


def fake_sweep(tiny_sweep: Path, logs: Path, preset: str, stamp: str, dataset: str) -> Path:
    """A copy of the tiny sweep as ``make sweep EXPERIMENT=<preset>`` on ``dataset`` leaves it;
    files keep their times, so that the sweep's wall time stays the tiny sweep's."""
    folder = logs / "multiruns" / preset / stamp
    shutil.copytree(tiny_sweep, folder)
    (folder / "report.md").unlink(missing_ok=True)
    for run_dir in job_dirs(folder):
        path = run_dir / "metrics.json"
        times = path.stat()
        record = json.loads(path.read_text())
        record["config"]["name"] = preset
        record["config"]["data"]["dataset"] = dataset
        path.write_text(json.dumps(record))
        os.utime(path, ns=(times.st_atime_ns, times.st_mtime_ns))
    return folder


@pytest.fixture(scope="module")
def generated(tiny_sweep: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two ablation sweeps, an lr_fair on MNIST and a newer one on Fashion-MNIST; results.md and
    a README with the markers generated from them."""
    root = tmp_path_factory.mktemp("results")
    logs = root / "logs"
    fake_sweep(tiny_sweep, logs, "ablation", OLD_ABLATION, "mnist")
    fake_sweep(tiny_sweep, logs, "ablation", NEW_ABLATION, "mnist")
    fake_sweep(tiny_sweep, logs, "lr_fair", LR_FAIR, "mnist")
    fake_sweep(tiny_sweep, logs, "lr_fair", LR_FAIR_FASHION, "fashion_mnist")
    (root / "README.md").write_text(README.format(BEGIN=BEGIN, END=END))
    out = root / "docs" / "results.md"
    (out.with_suffix("") / "stale.png").parent.mkdir(parents=True)
    (out.with_suffix("") / "stale.png").write_bytes(b"a figure of a sweep no longer shown")
    args = ["--logs", str(logs), "--out", str(out), "--readme", str(root / "README.md")]
    # In a process of its own, as make starts it, to see that it imports neither Lightning
    # nor torch (a report costs less than torch's import alone).
    code = (
        "import sys; from slowlearn.report.results import main; rc = main(sys.argv[1:]); "
        "assert not [m for m in sys.modules if 'lightning' in m or m == 'torch']; sys.exit(rc)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, *args, "--require", "ablation", "lr_fair"],
        cwd=REPO,
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert f"updated the results block of {root / 'README.md'}" in result.stdout
    return root


def sections(text: str) -> dict[str, str]:
    """results.md's sections by their heading."""
    parts = re.split(r"^## (.+)$", text, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_results_md_states_its_origin_and_embeds_each_sweeps_report(generated: Path) -> None:
    text = (generated / "docs" / "results.md").read_text()
    head = "\n".join(text.splitlines()[:4])
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert "never edit" in head and "`make results`" in head
    assert f"commit {commit}" in head
    assert datetime.now(timezone.utc).strftime("%Y-%m-%d") in head

    found = sections(text)
    assert list(found) == ["ablation (MNIST)", "lr_fair (MNIST)", "lr_fair (Fashion-MNIST)"]
    ablation = found["ablation (MNIST)"]
    folder = generated / "logs" / "multiruns" / "ablation" / NEW_ABLATION
    assert f"- Sweep: `{folder}`" in ablation
    assert "`cell=sigmoid_mse,softmax_nll`" in ablation and "`seed=0,1`" in ablation
    assert "- Swept: `cell` (2: sigmoid_mse, softmax_nll) × `seed` (2: 0, 1) = 4 comb" in ablation
    assert "- Runs: 5 (4 completed, 1 diverged)" in ablation
    assert re.search(r"- Wall time: \d+ s\n", ablation)

    # The report regenerated just now, embedded whole: its tables and findings, headings demoted.
    report = (folder / "report.md").read_text()
    assert "\n#### Findings\n" in ablation and "\n## Findings\n" in report
    table_rows = [line for line in report.splitlines() if line.startswith("| ")]
    assert len(table_rows) >= 4 and all(row in ablation for row in table_rows)
    assert "- " + first_finding(report) in ablation

    figures = generated / "docs" / "results"
    assert sorted(p.name for p in figures.iterdir()) == [
        "ablation-curves.png",
        "lr_fair-curves.png",
        "lr_fair-fashion_mnist-curves.png",
    ]
    assert (figures / "ablation-curves.png").read_bytes() == (folder / "curves.png").read_bytes()
    assert "](results/ablation-curves.png)" in ablation
    assert "](results/lr_fair-fashion_mnist-curves.png)" in found["lr_fair (Fashion-MNIST)"]


def test_the_newest_sweep_replaces_older_ones_and_each_dataset_has_its_own_section(
    generated: Path,
) -> None:
    found = sections((generated / "docs" / "results.md").read_text())
    assert NEW_ABLATION in found["ablation (MNIST)"]
    assert "Older sweeps of this preset and dataset, not shown: 1" in found["ablation (MNIST)"]
    assert all(OLD_ABLATION not in section for section in found.values())
    assert not (generated / "logs" / "multiruns" / "ablation" / OLD_ABLATION / "report.md").exists()
    assert LR_FAIR in found["lr_fair (MNIST)"] and LR_FAIR_FASHION not in found["lr_fair (MNIST)"]
    assert LR_FAIR_FASHION in found["lr_fair (Fashion-MNIST)"]


def test_the_readme_block_has_each_sections_first_finding_and_link(generated: Path) -> None:
    readme = (generated / "README.md").read_text()
    outside = README.format(BEGIN=BEGIN, END=END).split(BEGIN)
    assert readme.startswith(outside[0]) and readme.endswith(outside[1].split(END)[1])
    block = readme.split(BEGIN)[1].split(END)[0]
    results = (generated / "docs" / "results.md").read_text()
    bullets = [line for line in block.splitlines() if line.startswith("**")]
    assert [line.split(",")[:2] for line in bullets] == [
        ["**ablation** (5 runs", " MNIST"],
        ["**lr_fair** (5 runs", " MNIST"],
        ["**lr_fair** (5 runs", " Fashion-MNIST"],
    ]
    headings = {github_anchor(h) for h in re.findall(r"^## (.+)$", results, flags=re.MULTILINE)}
    links = re.findall(r"\(docs/results\.md#([^)]+)\)", block)
    assert links == ["ablation-mnist", "lr_fair-mnist", "lr_fair-fashion-mnist"]
    assert set(links) <= headings
    for bullet, (heading, section) in zip(bullets, sections(results).items(), strict=True):
        finding = first_finding(section.replace("\n#### ", "\n## "))
        assert finding and f"): {finding}" in bullet, heading
    assert all(value in results for value in PERCENT.findall(block))
    # Each study's first figure, copied beside results.md.
    figures = re.findall(r"!\[[^\]]*\]\((docs/results/[^)]+\.png)\)", block)
    assert len(figures) == 3 and all((generated / f).is_file() for f in figures)


def test_a_missing_required_preset_is_a_one_line_error_and_changes_nothing(
    generated: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, readme = tmp_path / "results.md", tmp_path / "README.md"
    out.write_text("the previous results\n")
    readme.write_text(README.format(BEGIN=BEGIN, END=END))
    logs = generated / "logs"
    args = ["--logs", str(logs), "--out", str(out), "--readme", str(readme)]
    assert main([*args, "--require", "ablation", "depth"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: no depth sweep (data mnist) under {logs / 'multiruns' / 'depth'}: "
        "run make sweep EXPERIMENT=depth"
    ]
    assert out.read_text() == "the previous results\n"
    assert readme.read_text() == README.format(BEGIN=BEGIN, END=END)
    assert not (tmp_path / "results").exists()


def test_a_readme_without_the_markers_is_left_alone(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# project\n\nno markers\n")
    assert not update_readme(readme, "- **ablation**: a finding")
    assert readme.read_text() == "# project\n\nno markers\n"


def test_first_finding_joins_its_lines_and_drops_italics() -> None:
    report = "# R\n\n## Findings\n\n- *With init=large, 57.7%\n  vs 91.9%.*\n- two\n\n## Curves"
    assert first_finding(report) == "With init=large, 57.7% vs 91.9%."
    assert first_finding("# R\n\n## Findings\n\n## Curves\n") is None
    assert demote("# A\n```\n# not a heading\n```\n## B", 2) == (
        "### A\n```\n# not a heading\n```\n#### B"
    )


def test_every_percentage_in_the_readmes_results_block_is_in_docs_results_md() -> None:
    results = REPO / "docs" / "results.md"
    if not results.is_file():
        pytest.skip("docs/results.md is not generated yet: run the sweeps, then make results")
    readme = (REPO / "README.md").read_text()
    assert BEGIN in readme and END in readme, "README.md lost its results markers"
    block = readme.split(BEGIN)[1].split(END)[0]
    text = results.read_text()
    missing = [value for value in PERCENT.findall(block) if value not in text]
    assert not missing, f"in README's results block but not in docs/results.md: {missing}"


def test_a_sweep_with_a_run_still_running_is_left_out(tiny_sweep: Path, tmp_path: Path) -> None:
    folder = fake_sweep(tiny_sweep, tmp_path, "ablation", "2026-01-01_00-00-00-run", "mnist")
    path = job_dirs(folder)[0] / "metrics.json"
    record = json.loads(path.read_text())
    path.write_text(json.dumps(record | {"status": "running"}))
    assert find_sweeps(tmp_path) == []


def test_the_table_across_studies_gives_each_tuned_gap() -> None:
    from slowlearn.report.runs import group_runs
    from slowlearn.report.tables import best_lrs
    from tests.test_fair import fake_runs

    runs = []
    for cell, accuracies in (("sigmoid+mse", {0.1: 0.5, 1.0: 0.8}), ("sigmoid+bce", {0.1: 0.9})):
        for lr, acc in accuracies.items():
            runs += fake_runs(cell, lr, [acc, acc], [acc, acc], optimizer="SGD")
    sweep = Sweep(Path("logs/multiruns/lr_fair/x"), "lr_fair", "mnist")
    section = Section(sweep, 0, "", [], {}, best_lrs(runs, group_runs(runs)))
    table = tuned_gaps([section])
    assert table[0] == "## Across studies: tuned MSE against tuned cross entropy"
    assert table[-2] == (
        "| [lr_fair (MNIST)](#lr_fair-mnist) | SGD | – | sigmoid+mse at lr 1 | 80.0% "
        "| sigmoid+bce at lr 0.1 | 90.0% | +10.0 |"
    )
