"""docs/results.md, and the README's summary of it, rebuilt from the newest sweep of every
preset and dataset under logs/multiruns, so that the results shown can never be older than the
code and the sweeps:

    python -m slowlearn.report.results        # make results

Each sweep's report is regenerated (``make_report``) and its report.md embedded whole, headings
demoted and figures copied into docs/results/, so that whatever the report states, results.md
states too. A required preset without a sweep is an error (exit 2) that leaves both files alone.
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from itertools import groupby
from pathlib import Path
from typing import Any

from slowlearn.cells import CROSS_ENTROPY, SLOW_LEARNERS
from slowlearn.records import write_atomically
from slowlearn.report import analyse, write_report
from slowlearn.report.runs import context_text
from slowlearn.report.sweeps import (
    REQUIRED,
    WALL_TIME_NOTE,
    Sweep,
    dataset_name,
    duration,
    find_sweeps,
    grid_text,
    missing_error,
    multirun_settings,
    newest,
    parse_required,
    section_order,
    statuses_text,
    wall_seconds,
)
from slowlearn.report.tables import BestLr, lr_text, percent

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
COMMAND = "make results"
IMAGE = re.compile(r"(!?\[[^\]]*\]\()([^)\s]+)(\))")  # a markdown link or image: [alt](target)
PERCENT = re.compile(r"\d+(?:\.\d+)?%")


# ------------------------------------------------------------------ embedding report.md


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def demote(markdown: str, levels: int) -> str:
    """Every heading ``levels`` deeper, outside fenced code."""
    lines, fenced = [], False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,6} ", line):
            line = "#" * levels + line
        lines.append(line)
    return "\n".join(lines)


def relink(
    markdown: str, sweep: Sweep, images: Path, out_dir: Path, copies: dict[Path, Path]
) -> str:
    """Images to copies in ``images`` (recorded in ``copies``: copy -> original), other
    relative links to the sweep's files, both relative to ``out_dir``."""

    def replace(match: re.Match) -> str:
        target = match.group(2)
        if "://" in target or target.startswith(("#", "/", "mailto:")):
            return match.group(0)
        source = sweep.folder / target
        if match.group(1).startswith("!"):
            if not source.is_file():
                print(f"warning: {source} is missing: its link is left as it is", file=sys.stderr)
                return match.group(0)
            copy = images / f"{sweep.slug}-{target.replace('/', '-')}"
            copies[copy] = source
            source = copy
        link = Path(os.path.relpath(source.resolve(), out_dir.resolve())).as_posix()
        return f"{match.group(1)}{link}{match.group(3)}"

    return IMAGE.sub(replace, markdown)


def findings(report: str) -> list[str]:
    """The bullets of report.md's "## Findings", each on one line, italics stripped."""
    bullets: list[list[str]] = []
    inside = False
    for line in report.splitlines():
        if re.match(r"#{1,6} ", line):
            inside = line.strip() == "## Findings"
        elif inside and line.startswith("- "):
            bullets.append([line[2:].strip()])
        elif inside and line.strip() and bullets:
            bullets[-1].append(line.strip())
        elif inside and not line.strip() and bullets:
            break
    return [
        re.sub(r"(?<![\w*])[*_]([^*_]+)[*_](?![\w*])", r"\1", " ".join(b)).strip() for b in bullets
    ]


def first_finding(report: str) -> str | None:
    """The first bullet of report.md's "## Findings"."""
    return next(iter(findings(report)), None)


def first_why(report: str) -> str | None:
    """The first finding that gives the measured why (report/findings.py's why_sentence)."""
    return next((f for f in findings(report) if "why (" in f.lower()), None)


def first_figure(markdown: str) -> str | None:
    """The target of the first image in already relinked markdown."""
    image = next((m for m in IMAGE.finditer(markdown) if m.group(1).startswith("!")), None)
    return image.group(2) if image else None


# ------------------------------------------------------------------ across studies


def optimizer_text(choice: BestLr) -> str:
    settings = choice.best.runs[0].settings
    momentum = settings.get("momentum")
    if settings["optimizer"] == "SGD" and momentum:
        return f"SGD, momentum {momentum:g}"
    return str(settings["optimizer"])


def tuned_gaps(sections: list[Section]) -> list[str]:
    """One row per slow learner and context of every one-epoch lr sweep: the slow learner and
    the best cross-entropy cell present, each at its own best lr, and the gap between them."""
    rows = []
    for section in sections:
        tuned = [c for c in section.choices if c.best is not None]
        if (
            not tuned
            or any("depth" in c.best.context for c in tuned)
            or tuned[0].when != ("after epoch 1")
        ):
            continue
        for context, chosen in groupby(tuned, key=lambda choice: choice.context):
            chosen = list(chosen)
            cross = [c for c in chosen if c.cell in CROSS_ENTROPY]
            best = max(cross, key=lambda c: c.mean(c.on), default=None)
            for slow in (c for c in chosen if c.cell in SLOW_LEARNERS and best):
                gap = 100 * (best.mean(best.on) - slow.mean(slow.on))
                rows.append(
                    f"| [{section.sweep.title}](#{section.anchor}) | {optimizer_text(slow)} "
                    f"| {context_text(context) or '–'} | {slow.cell} at lr {lr_text(slow.lr)} "
                    f"| {percent(slow.mean(slow.on))} | {best.cell} at lr {lr_text(best.lr)} "
                    f"| {percent(best.mean(best.on))} | {gap:+.1f} |"
                )
    if not rows:
        return []
    return [
        "## Across studies: tuned MSE against tuned cross entropy",
        "",
        "Every one-epoch lr sweep below: each slow learner and the best of the cross-entropy "
        "cells present (the highest mean, a choice that favours cross entropy), each at its own "
        "best lr chosen on validation, with their val accuracy after epoch 1 (mean over seeds) "
        "and the gap in points (positive: cross entropy ahead). The per-seed comparisons and "
        "the test accuracies are in each section.",
        "",
        "| sweep | optimizer | context | slow learner | val acc | best cross entropy | val acc "
        "| gap |",
        "|---|---|---|---|---:|---|---:|---:|",
        *rows,
        "",
    ]


# ------------------------------------------------------------------ the two documents


def git_state() -> str:
    """The commit, and whether tracked code or configs differ from it."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        changes = subprocess.run(
            ["git", "status", "--porcelain", "--", "src", "conf"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return "an unknown commit (no git repository here)"
    dirty = any(not line.startswith("??") for line in changes)
    return f"commit {commit}" + (" + uncommitted changes" if dirty else "")


@dataclass
class Section:
    sweep: Sweep
    older: int  # older sweeps of the same preset and dataset, not shown
    report: str  # report.md as written just now
    overrides: list[str]
    swept: dict[str, Any]
    choices: list[BestLr] = field(default_factory=list)  # each cell's best lr, if tuned

    @property
    def anchor(self) -> str:
        return github_anchor(self.sweep.title)


def section_md(section: Section, shown: Path, images: Path, out_dir: Path, copies: dict) -> str:
    sweep = section.sweep
    overrides = ", ".join(f"`{o}`" for o in section.overrides) or "none (no multirun.yaml)"
    lines = [
        f"## {sweep.title}",
        "",
        f"- Sweep: `{shown}`",
        f"- Overrides: {overrides}",
        f"- Swept: {grid_text(section.swept)}",
        f"- Runs: {sweep.runs} ({statuses_text(sweep.statuses)})",
        f"- Wall time: {duration(wall_seconds(sweep.folder))}",
    ]
    if section.older:
        lines.append(f"- Older sweeps of this preset and dataset, not shown: {section.older}")
    body = relink(demote(section.report, 2), sweep, images, out_dir, copies)
    return "\n".join([*lines, "", body.strip(), ""])


def results_md(sections: list[Section], shown: list[Path], images: Path, out: Path) -> tuple:
    """The text of results.md, and the figures to copy (copy -> original)."""
    copies: dict[Path, Path] = {}
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "<!-- Generated by `make results`: never edit by hand, rerun it. -->",
        "# Results",
        "",
        f"Generated by `{COMMAND}` on {stamp} from {git_state()}; never edit this file by "
        f"hand. Each section is the newest sweep of one preset on one dataset, with the report "
        f"that `make report` writes for it, regenerated now. {WALL_TIME_NOTE}",
        "",
        *(f"- [{s.sweep.title}](#{s.anchor}): {s.sweep.runs} runs" for s in sections),
        "",
        *tuned_gaps(sections),
    ]
    for section, folder in zip(sections, shown, strict=True):
        lines.append(section_md(section, folder, images, out.parent, copies))
    return "\n".join(lines).rstrip() + "\n", copies


def readme_block(sections: list[Section], out: Path, readme: Path) -> str:
    """Per section: its first finding, its first measured why, and its first figure."""
    link = Path(os.path.relpath(out.resolve(), readme.parent.resolve())).as_posix()
    images = out.with_suffix("")
    lines = [
        f"Written by `{COMMAND}` with [{link}]({link}): per study, the first finding and the "
        "first measured why of its newest sweep, and its first figure; the tables, the other "
        "findings and the figures are there.",
    ]
    for section in sections:
        sweep = section.sweep
        lines += [
            "",
            f"**{sweep.preset}** ({sweep.runs} runs, {dataset_name(sweep.dataset)}, "
            f"[more]({link}#{section.anchor})): {first_finding(section.report) or 'no finding.'}",
        ]
        why = first_why(section.report)
        if why and why != first_finding(section.report):
            lines[-1] += f" {why}"  # one paragraph a study
        figure = first_figure(relink(section.report, sweep, images, readme.parent, {}))
        if figure:
            lines += ["", f"![{sweep.title}]({figure})"]
    return "\n".join(lines)


def update_readme(readme: Path, block: str) -> bool:
    """Replace what stands between the markers; False (and the file untouched) without them."""
    if not readme.is_file():
        return False
    text = readme.read_text()
    begin, end = text.find(BEGIN), text.find(END)
    if begin < 0 or end < begin:
        return False
    updated = f"{text[: begin + len(BEGIN)]}\n{block}\n{text[end:]}"
    if updated != text:
        write_atomically(readme, updated.encode())
    return True


def shown_path(folder: Path) -> Path:
    """A folder as results.md names it: relative to here when below it."""
    try:
        return folder.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="docs/results.md and the README's summary, from the newest sweeps."
    )
    parser.add_argument("--logs", type=Path, default=Path("logs"), help="default: logs")
    parser.add_argument("--out", type=Path, default=Path("docs/results.md"))
    parser.add_argument("--readme", type=Path, default=Path("README.md"))
    parser.add_argument(
        "--require",
        nargs="*",
        default=list(REQUIRED),
        metavar="P",
        help="presets that must have a sweep, P or P:DATASET (default: %(default)s on mnist)",
    )
    args = parser.parse_args(argv)

    sweeps = newest(find_sweeps(args.logs))
    missing = [key for key in parse_required(args.require) if key not in sweeps]
    for preset, dataset in missing:
        print(missing_error(args.logs, preset, dataset), file=sys.stderr)
    if missing:
        return 2

    sections = []
    for key in section_order(sweeps, [p for p, _ in parse_required(args.require)]):
        sweep, *older = sweeps[key]
        print(f"report: {sweep.folder}")
        analysis = analyse(sweep.folder)
        write_report(analysis)
        overrides, swept = multirun_settings(sweep.folder)
        report = (sweep.folder / "report.md").read_text()
        sections.append(Section(sweep, len(older), report, overrides, swept, analysis.choices))

    images = args.out.with_suffix("")
    shown = [shown_path(section.sweep.folder) for section in sections]
    text, copies = results_md(sections, shown, images, args.out)
    images.mkdir(parents=True, exist_ok=True)
    for copy, source in copies.items():
        write_atomically(copy, source.read_bytes(), durable=False)
    for stale in set(images.glob("*.png")) - set(copies):  # figures of sweeps no longer shown
        stale.unlink()
    write_atomically(args.out, text.encode())
    print(f"wrote {args.out} ({len(sections)} sections) and {len(copies)} figures in {images}")

    if update_readme(args.readme, readme_block(sections, args.out, args.readme)):
        print(f"updated the results block of {args.readme}")
    else:
        print(f"{args.readme} left alone: it has no {BEGIN} ... {END} block")
    return 0


if __name__ == "__main__":
    gc.freeze()  # the imports' objects live until the exit: no collection walks them (train.py)
    sys.exit(main())
