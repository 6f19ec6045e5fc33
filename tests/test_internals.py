"""The private Lightning, TensorBoard and Hydra APIs behind ``slowlearn.internals`` are still
where it reaches for them: a release that moves one fails here, by name."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytorch_lightning as pl
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from pytorch_lightning.loggers import TensorBoardLogger

from slowlearn import internals
from tests.conftest import REPO, compose_config


def test_every_internal_is_still_there(tmp_path: Path) -> None:
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    logger = TensorBoardLogger(tmp_path)
    moved = [name for name, found in internals.probes(trainer, logger).items() if not found]
    assert not moved, f"moved in this release, see slowlearn.internals: {', '.join(moved)}"


def test_configs_composed_the_batched_launchers_way_are_hydras() -> None:
    """The batched launcher's loader parses each config file once for all of a sweep's jobs
    and composes the defaults of each set of group choices once; every job's config, its
    Hydra node included (what its .hydra files hold), comes out as Hydra's own loader
    composes it, node types and flags included (pickled, byte for byte)."""
    master = compose_config("experiment=ablation")
    cells = ("sigmoid_mse", "softmax_nll")
    jobs = [
        [f"cell={cell}", f"seed={seed}", "experiment=ablation"] for cell in cells for seed in (0, 1)
    ]
    jobs.append(["seed=3", "cell=sigmoid_mse", "experiment=ablation", "optimizer.lr=0.5"])
    # Group choices a sweep may change besides the cell: another option, a group deleted, a
    # value that interpolates another.
    jobs.append(["seed=0", "cell=sigmoid_mse", "experiment=ablation", "optimizer=adam"])
    jobs.append(["seed=0", "cell=sigmoid_mse", "experiment=ablation", "~logger"])
    jobs.append(["seed=4", "cell=sigmoid_mse", "experiment=ablation", "+extra_seed=${seed}"])
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        hydras = [pickle.dumps(loader.load_sweep_config(master, job)) for job in jobs]
        shared = internals.parse_config_files_once(loader)
        by_choices = internals.ComposedByChoices(loader)
        with by_choices.active():
            ours = [pickle.dumps(loader.load_sweep_config(master, job)) for job in jobs]
        assert ours == hydras
        assert len(by_choices.lists) == 4  # one defaults list per set of group choices
        parsed = {path for _, path in shared.parsed}  # keyed by (sources, path)
        assert {"train", "cell/sigmoid_mse", "experiment/ablation"} <= parsed

        def parse(config_path: str) -> None:
            raise AssertionError(f"{config_path} parsed again")

        shared.repository.load_config = parse  # every file of these jobs is parsed by now
        again = [pickle.dumps(loader.load_sweep_config(master, job)) for job in jobs]
    assert again == hydras  # outside active(): Hydra's defaults lists, the shared files
