"""DDP on CPU: two gloo processes split every epoch, see each sample once, and stay in sync."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch
from torch import Tensor

from slowlearn.data import ImageDataModule
from tests.conftest import TINY_ARGS, read_metrics, run_train

TRAIN_SIZE, BATCH = 500, 50  # tiny_data's 600 samples less TINY_ARGS' val_size=100


def tiny_datamodule(tiny_data: Path) -> ImageDataModule:
    datamodule = ImageDataModule(
        dir=str(tiny_data), val_size=100, batch_size=BATCH, steps_per_chunk=2, online=False
    )
    datamodule.setup()
    return datamodule


def rows(images: Tensor) -> list[bytes]:
    """Each image's pixel bytes (the data holds pixels / 255): they identify the samples."""
    pixels = (images * 255).round().to(torch.uint8).reshape(-1, 784)  # any member axes
    return [row.numpy().tobytes() for row in pixels]


def test_datamodule_rank_shards_are_disjoint_and_cover_each_epoch(tiny_data: Path) -> None:
    datamodule = tiny_datamodule(tiny_data)
    train = set(rows(datamodule.tensors["train"][0]))
    assert len(train) == TRAIN_SIZE  # the rows identify the samples
    for epoch in (0, 1):
        shards = []
        for rank in (0, 1):
            datamodule.trainer = SimpleNamespace(
                global_rank=rank,
                world_size=2,
                current_epoch=epoch,
                strategy=SimpleNamespace(root_device=torch.device("cpu")),
            )
            loader = datamodule.train_dataloader()
            chunks = list(loader)
            assert len(chunks) == len(loader)
            shards.append(rows(torch.cat([x for chunk in chunks for x, _ in chunk])))
        assert len(shards[0]) == len(shards[1]) == TRAIN_SIZE // 2
        assert not set(shards[0]) & set(shards[1])
        assert set(shards[0]) | set(shards[1]) == train


def test_ddp_run_on_two_cpu_processes(tiny_data: Path, tmp_path: Path) -> None:
    run_dir, probe = tmp_path / "run", tmp_path / "probe"
    args = [a for a in TINY_ARGS if not a.startswith("trainer.max_epochs")]
    run_train(
        [
            "trainer=ddp",
            "trainer.devices=2",
            "trainer.max_epochs=1",
            f"data.dir={tiny_data}",
            f"hydra.run.dir={run_dir}",
            "+callbacks.probe._target_=tests.ddp_probe.RankProbe",
            f"+callbacks.probe.out={probe}",
            *args,
        ],
        timeout=300,
    )
    # Lightning re-ran the command for rank 1 in the same run folder; rank 0 alone wrote it.
    assert (run_dir / "train_ddp_process_1.log").exists()
    record = read_metrics(run_dir)
    assert record["status"] == "completed", record.get("error")
    steps = -(-TRAIN_SIZE // 2 // BATCH)  # each rank takes its half in batches
    assert record["metrics"]["val_history"][-1]["step"] == steps

    ranks = [torch.load(probe / f"rank{r}.pt") for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert [r["global_step"] for r in ranks] == [steps, steps]
    seen = [rows(r["images"]) for r in ranks]
    assert len(seen[0]) == len(seen[1]) == TRAIN_SIZE // 2
    assert not set(seen[0]) & set(seen[1])
    assert set(seen[0]) | set(seen[1]) == set(rows(tiny_datamodule(tiny_data).tensors["train"][0]))
    # Each rank evaluated its own half; both report the accuracy over all of it.
    assert ranks[0]["val_history"] == ranks[1]["val_history"]
    assert ranks[0]["val_history"] == record["metrics"]["val_history"]
    # Different data on each rank, yet identical weights: every step's gradients were averaged.
    for name, weight in ranks[0]["weights"].items():
        assert torch.equal(weight, ranks[1]["weights"][name]), name
