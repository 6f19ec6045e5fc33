"""Why learning is slow, measured: pure functions on tensors of R members, no logging here.

The output error signal is de/dz, the gradient of one sample's objective at the output
pre-activation z. Eq. 5.5: with sigmoid + bce (and softmax + nll) it is o - y, the error
itself. With sigmoid + mse it is (o - y) o (1 - o): when the true-class unit is saturated
and wrong (o_y near 0), the factor o (1 - o) makes the signal, and so the step, tiny.

Per layer (named hidden1 ... output, never by module index): the norm of the weight and bias
gradients (the bias gradient's norm is Nielsen's "speed of learning" of a layer), and for
sigmoid hidden layers their mean slope sigma'(z) and the fraction of saturated units. The
output factor ||delta_out|| / ||o - y|| is 1 when the error alone sets the step (sigmoid+bce,
softmax+nll, identity+mse) and the effective sigma' of sigmoid+mse.

Everything stays on the device: a diagnosed step adds a few tensors [R, F], and the host reads
them once per logging window.

Two kinds of measurement, never under one tag: mini-batch windows (``layer_values``,
``error_signal_sums``: means over the sampled steps of a window) and the fixed sample
(``fixed_sample_values``: one measurement over the same 1,000 training images, at step 0 and at
every epoch's end), whose values do not carry mini-batch noise and compare across runs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

# A sample is "saturated and wrong" when it is misclassified and its true-class output o_y is
# below this (independent sigmoids can be right with a low o_y). The output's
# slope do_y/dz_y = o_y (1 - o_y) is then below 0.09 (its maximum is 0.25 at o_y = 0.5), for
# sigmoid and softmax outputs alike, so a loss whose gradient keeps that factor barely moves it.
SATURATED_BELOW = 0.1
# An (sample, output) pair is "saturated and wrong" when |o_i - y_i| is above this: the output
# sits at the wrong end of its range, where the slope of a sigmoid is below 0.09.
SATURATED_PAIR_ERROR = 0.9
# A hidden sigmoid unit is saturated on a sample where its slope sigma'(z) is below this
# (|z| above about 3: a fifth of the slope's maximum, 0.25).
SATURATED_SLOPE = 0.05

# Sums over the samples of a mini-batch, one row per member; divided by the counts when a
# window is logged.
ERROR_SIGNAL_FIELDS = (
    "samples",
    "right",
    "true_class",  # |de/dz_y|
    "true_class_right",
    "true_class_wrong",
    "all_outputs",  # mean over the outputs of |de/dz_i|
    "saturated_wrong",  # NaN for members without probabilities (identity outputs)
)


def error_signal_sums(
    outputs: Tensor, logits: Tensor, labels: Tensor, logits_grad: Tensor, probabilities: Tensor
) -> tuple[Tensor, Tensor]:
    """(sums [R, ERROR_SIGNAL_FIELDS], per-sample |de/dz_y| [R, B]) for one mini-batch.

    ``outputs`` o and ``logits`` z are [R, B, c], ``labels`` [R, B]; ``logits_grad`` is
    d(sum of the members' batch means)/dz from autograd, so times B it is each sample's de/dz.
    ``probabilities`` [R] is False where the outputs are no probabilities.
    """
    signal = (logits_grad * logits.shape[-2]).abs()
    true_class = signal.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    right = (logits.argmax(dim=-1) == labels).to(signal.dtype)
    o_y = outputs.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    saturated_wrong = ((o_y < SATURATED_BELOW) & (right == 0)).to(signal.dtype).sum(dim=-1)
    sums = (
        torch.ones_like(right).sum(dim=-1),  # on the device: no host number per step
        right.sum(dim=-1),
        true_class.sum(dim=-1),
        (true_class * right).sum(dim=-1),
        (true_class * (1 - right)).sum(dim=-1),
        signal.mean(dim=-1).sum(dim=-1),
        torch.where(probabilities, saturated_wrong, math.nan),
    )
    return torch.stack(sums, dim=-1), true_class


def window_means(sums: Sequence[float]) -> dict[str, float]:
    """One member's summed ERROR_SIGNAL_FIELDS as the logged means (NaN-free: empty groups and
    fields that do not apply are left out)."""
    total = dict(zip(ERROR_SIGNAL_FIELDS, sums, strict=True))
    samples, right = total["samples"], total["right"]
    wrong = samples - right
    means = {
        "error_signal/true_class": total["true_class"] / samples,
        "error_signal/all_outputs": total["all_outputs"] / samples,
        "train_acc_sampled": right / samples,
    }
    if not math.isnan(total["saturated_wrong"]):
        means["saturated_wrong_fraction"] = total["saturated_wrong"] / samples
    if right:
        means["error_signal/true_class_right"] = total["true_class_right"] / right
    if wrong:
        means["error_signal/true_class_wrong"] = total["true_class_wrong"] / wrong
    return means


def member_norms(tensor: Tensor) -> Tensor:
    """The L2 norm of each member's slice of a stacked tensor: [R, ...] -> [R]."""
    return torch.linalg.vector_norm(tensor.reshape(len(tensor), -1), dim=1)


def output_factor(logits_grad: Tensor, outputs: Tensor, targets: Tensor) -> Tensor:
    """||delta_out|| / ||o - y|| per member, norms over the batch: 1 when de/dz = o - y."""
    delta = logits_grad * logits_grad.shape[-2]  # each sample's de/dz
    return member_norms(delta) / member_norms(outputs - targets)


def sigmoid_slopes(hidden_outputs: Tensor) -> Tensor:
    """sigma'(z) = h (1 - h) of every unit and sample of a sigmoid layer's outputs h."""
    return hidden_outputs * (1 - hidden_outputs)


def layer_fields(layer_names: Sequence[str], sigmoid_hidden: bool) -> list[str]:
    """The names of the per-layer values, in the order ``layer_values`` returns them."""
    fields = [f"grad_norm/{name}" for name in layer_names]
    fields += [f"bias_grad_norm/{name}" for name in layer_names]
    if sigmoid_hidden:
        hidden = layer_names[:-1]
        fields += [f"sigmoid_slope/{name}" for name in hidden]
        fields += [f"saturated_fraction/{name}" for name in hidden]
    return [*fields, "output_factor"]


def layer_values(
    weight_grads: Sequence[Tensor],
    bias_grads: Sequence[Tensor],
    slopes: Sequence[Tensor],
    factor: Tensor,
) -> Tensor:
    """[R, len(layer_fields)]: weight and bias gradient norms of every layer, the mean slope
    and the saturated fraction of every sigmoid hidden layer (``slopes``: [R, B, units]
    each; empty for other hidden units), and the output factor."""
    columns = [member_norms(grad) for grad in weight_grads]
    columns += [member_norms(grad) for grad in bias_grads]
    columns += [slope.mean(dim=(1, 2)) for slope in slopes]
    columns += [(slope < SATURATED_SLOPE).to(slope.dtype).mean(dim=(1, 2)) for slope in slopes]
    return torch.stack([*columns, factor], dim=1)


def fixed_fields(layer_names: Sequence[str]) -> list[str]:
    """The names of ``fixed_sample_values``' columns (logged under ``diag/fixed/``)."""
    return [
        "saturated_wrong_pairs",
        "saturated_wrong_fraction",
        "output_factor",
        "error_signal/true_class_wrong",
        "error_signal/true_class_right",
        *(f"bias_grad_norm/{name}" for name in layer_names),
    ]


def fixed_sample_values(
    outputs: Tensor,
    logits: Tensor,
    labels: Tensor,
    targets: Tensor,
    logits_grad: Tensor,
    probabilities: Tensor,
    bias_grads: Sequence[Tensor],
) -> Tensor:
    """[R, len(fixed_fields)] over one fixed sample of B images: the fraction of (sample,
    output) pairs with |o - y| > SATURATED_PAIR_ERROR and of misclassified samples with
    o_y < SATURATED_BELOW (NaN without probabilities), the output factor, the mean |de/dz_y|
    over the misclassified and over the rightly classified samples (NaN for an empty set), and
    every layer's ||dC/db|| for C the sample's mean objective (Nielsen's speed of learning).

    ``logits_grad`` and ``bias_grads`` are gradients of the sum of the members' sample means.
    """
    sums, _ = error_signal_sums(outputs, logits, labels, logits_grad, probabilities)
    total = dict(zip(ERROR_SIGNAL_FIELDS, sums.unbind(dim=-1), strict=True))
    wrong = total["samples"] - total["right"]
    pairs = ((outputs - targets).abs() > SATURATED_PAIR_ERROR).to(outputs.dtype).mean(dim=(1, 2))
    columns = [
        torch.where(probabilities, pairs, math.nan),
        total["saturated_wrong"] / total["samples"],
        output_factor(logits_grad, outputs, targets),
        total["true_class_wrong"] / wrong,  # 0 / 0 is NaN: no such sample, no value
        total["true_class_right"] / total["right"],
        *(member_norms(grad) for grad in bias_grads),
    ]
    return torch.stack(columns, dim=1)
