"""A scientific regression test on the real MNIST: cross entropy cures slow learning.

The setting is the one where the effect is textbook-clear (the `ablation` preset): one hidden
layer of 100 sigmoid units, PyTorch's default init, plain SGD at lr 0.1, batch 64. No
adaptive optimiser: Adam rescales the gradient and hides the sigma'(z) factor.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import cell_of, job_dirs, read_metrics, run_train


@pytest.mark.mnist
def test_cross_entropy_beats_mse_after_one_epoch(mnist_dir: Path, tmp_path: Path) -> None:
    run_train(
        [
            "-m",
            "experiment=ablation",
            "cell=sigmoid_mse,sigmoid_bce,softmax_nll",
            "seed=0",
            "trainer.max_epochs=1",
            "trainer.accelerator=cpu",
            f"data.dir={mnist_dir}",
            f"hydra.sweep.dir={tmp_path}",
            "hydra/launcher=batched",
            "+trainer.enable_progress_bar=false",
        ]
    )
    val_acc = {
        cell_of(run_dir): read_metrics(run_dir)["metrics"]["val_history"][0]["val/acc"]
        for run_dir in job_dirs(tmp_path)
    }
    assert set(val_acc) == {"sigmoid+mse", "sigmoid+bce", "softmax+nll"}
    for cross_entropy in ("sigmoid+bce", "softmax+nll"):
        assert val_acc[cross_entropy] - val_acc["sigmoid+mse"] >= 0.20, val_acc
