"""python -m slowlearn.report <run or sweep folder>: write its report, print the finding."""

from __future__ import annotations

import argparse
import gc
from pathlib import Path

from slowlearn.report import DOSE_RESPONSE, LR_SENSITIVITY, OUTPUTS, make_report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The report of a run or a sweep.")
    parser.add_argument("folder", type=Path, help="a run folder or a sweep (multirun) folder")
    folder = parser.parse_args(argv).folder
    for paragraph in make_report(folder):
        print(paragraph)
    written = [
        name for name in (*OUTPUTS, LR_SENSITIVITY, DOSE_RESPONSE) if (folder / name).exists()
    ]
    print("wrote " + ", ".join(str(folder / name) for name in written))


if __name__ == "__main__":
    gc.freeze()  # the imports' objects live until the exit: no collection walks them (train.py)
    main()
