"""Evaluate a saved checkpoint on the test set, with the configuration of the run that saved it.

python -m slowlearn.evaluate logs/runs/default/<date>_<time>/<cell>/checkpoints/last.ckpt

Any run's checkpoint: a single run's, a member's of a batched group (the same format), or one
written before the batched launcher existed.
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from slowlearn.checkpoints import stack_checkpoint
from slowlearn.checks import in_current_keys
from slowlearn.groups import build_module


def run_config(checkpoint: Path) -> DictConfig:
    """The composed config saved by Hydra in the run folder that holds ``checkpoint``."""
    for folder in checkpoint.resolve().parents:
        saved = folder / ".hydra" / "config.yaml"
        if saved.is_file():
            return in_current_keys(OmegaConf.load(saved))
    raise FileNotFoundError(f"{checkpoint}: no .hydra/config.yaml in any folder above it")


def evaluate(checkpoint: Path, accelerator: str = "auto") -> dict[str, float]:
    """Test accuracy and loss of the weights in ``checkpoint`` on the official test set."""
    cfg = run_config(checkpoint)
    module = build_module([cfg])
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    stack_checkpoint(saved, module.network)  # as a resumed run loads it
    module.load_state_dict(saved["state_dict"])
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
    )
    trainer.test(module, datamodule=instantiate(cfg.data), verbose=False)
    return module.histories[0].test_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--accelerator", default="auto")
    args = parser.parse_args()
    if not args.checkpoint.is_file():
        sys.exit(f"error: checkpoint {args.checkpoint} does not exist")
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module="pytorch_lightning")
    try:
        results = evaluate(args.checkpoint, args.accelerator)
    except FileNotFoundError as error:
        sys.exit(f"error: {error}")
    for name, value in results.items():
        print(f"{name} {value:.6f}")


if __name__ == "__main__":
    gc.freeze()  # the imports' objects live until the exit: no collection walks them (train.py)
    main()
