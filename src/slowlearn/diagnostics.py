"""Why learning is slow, measured: pure functions on tensors, no logging here.

The output error signal is de/dz, the gradient of one sample's objective at the output
pre-activation z. Eq. 5.5: with sigmoid + bce (and softmax + nll) it is o - y, the error
itself. With sigmoid + mse it is (o - y) o (1 - o): when the true-class unit is saturated
and wrong (o_y near 0), the factor o (1 - o) makes the signal, and so the step, tiny.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from slowlearn.losses import probabilities

# A sample is "saturated and wrong" when it is misclassified and its true-class output o_y is
# below this (independent sigmoids can be right with a low o_y). The output's
# slope do_y/dz_y = o_y (1 - o_y) is then below 0.09 (its maximum is 0.25 at o_y = 0.5), for
# sigmoid and softmax outputs alike, so a loss whose gradient keeps that factor barely moves it.
SATURATED_BELOW = 0.1

# Sums over the samples of a mini-batch; divided by the counts when a window is logged.
ERROR_SIGNAL_FIELDS = (
    "samples",
    "right",
    "true_class",  # |de/dz_y|
    "true_class_right",
    "true_class_wrong",
    "all_outputs",  # mean over the outputs of |de/dz_i|
    "saturated_wrong",
)


def error_signal_sums(
    activation: str, logits: Tensor, labels: Tensor, logits_grad: Tensor
) -> tuple[Tensor, Tensor]:
    """(sums in ERROR_SIGNAL_FIELDS order, per-sample |de/dz_y|) for one mini-batch.

    ``logits_grad`` is d(batch mean)/dz from autograd; times N it is each sample's de/dz.
    """
    signal = (logits_grad * logits.shape[0]).abs()
    true_class = signal.gather(1, labels.unsqueeze(1)).squeeze(1)
    right = (logits.argmax(dim=1) == labels).to(signal.dtype)
    o_y = probabilities(activation, logits).gather(1, labels.unsqueeze(1)).squeeze(1)
    sums = (
        signal.new_tensor(float(len(labels))),
        right.sum(),
        true_class.sum(),
        (true_class * right).sum(),
        (true_class * (1 - right)).sum(),
        signal.mean(dim=1).sum(),
        ((o_y < SATURATED_BELOW) & (right == 0)).to(signal.dtype).sum(),
    )
    return torch.stack(sums), true_class


def window_means(sums: Tensor) -> dict[str, float]:
    """Turn summed ERROR_SIGNAL_FIELDS into the logged means (NaN-free: empty groups skip)."""
    total = dict(zip(ERROR_SIGNAL_FIELDS, sums.tolist(), strict=True))
    samples, right = total["samples"], total["right"]
    wrong = samples - right
    means = {
        "error_signal/true_class": total["true_class"] / samples,
        "error_signal/all_outputs": total["all_outputs"] / samples,
        "saturated_wrong_fraction": total["saturated_wrong"] / samples,
        "train_acc_sampled": right / samples,
    }
    if right:
        means["error_signal/true_class_right"] = total["true_class_right"] / right
    if wrong:
        means["error_signal/true_class_wrong"] = total["true_class_wrong"] / wrong
    return means


def weight_grad_norms(model: nn.Module) -> tuple[list[str], Tensor]:
    """(names, L2 norms) of the gradient of every weight matrix, one device tensor."""
    names, norms = [], []
    for name, parameter in model.named_parameters():
        if parameter.grad is not None and parameter.dim() > 1:
            names.append(name.removesuffix(".weight"))
            norms.append(parameter.grad.norm())
    return names, torch.stack(norms)
