"""The textbook objectives (lecture eqs. 5.4 to 5.8), each computed stably from the logits z.

Every objective is defined per sample, exactly as in the lecture, and the batch loss is the
mean over samples. Logarithms are natural by default; ``base=2`` gives the lecture's bits.
No log is ever taken of a probability: log o and log(1 - o) come from log-sigmoid,
log-softmax and logsumexp, so the losses and their gradients stay finite for any finite z.

``objective(activation, loss, base)`` resolves the names once into a callable. It takes logits
shaped ``[..., N, c]`` (a stack of R members is ``[R, N, c]``) and returns the batch mean of
each leading index, so the members of one cell go through one call.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class OutputActivation:
    """o(z) over the last axis, and log o, log(1 - o) computed from z (None: no probabilities)."""

    outputs: Callable[[Tensor], Tensor]
    log_outputs: Callable[[Tensor], Tensor] | None = None
    log_one_minus_outputs: Callable[[Tensor], Tensor] | None = None


@functools.lru_cache(maxsize=8)
def own_class_mask(classes: int, device: torch.device) -> Tensor:
    return torch.eye(classes, dtype=torch.bool, device=device)


def softmax_log_one_minus(logits: Tensor) -> Tensor:
    """log(1 - o_i) for o = softmax(z): 1 - o_i = sum_{j != i} exp(z_j) / sum_j exp(z_j), so
    log(1 - o_i) = logsumexp_{j != i} z_j - logsumexp_j z_j.

    The sum over the others is taken on its own (never as 1 - o_i, which is 0 in float32
    once o_i > 1 - 6e-8), shifted by its largest term, so it is at least 1: no underflow.
    """
    classes = logits.shape[-1]
    if classes < 2:
        raise ValueError("softmax needs at least 2 outputs; with 1 output it is constant 1")
    others = logits.unsqueeze(-2).masked_fill(own_class_mask(classes, logits.device), -math.inf)
    # The shift cancels in value and in gradient, so it needs no gradient of its own.
    shift = others.detach().amax(dim=-1, keepdim=True)
    log_rest = (others - shift).exp().sum(dim=-1).log() + shift.squeeze(-1)
    return log_rest - torch.logsumexp(logits, dim=-1, keepdim=True)


ACTIVATIONS: dict[str, OutputActivation] = {
    # o_i = sigma(z_i): c independent units; 1 - sigma(z) = sigma(-z).
    "sigmoid": OutputActivation(torch.sigmoid, F.logsigmoid, lambda logits: F.logsigmoid(-logits)),
    # o_j = exp(z_j) / sum_i exp(z_i) (eq. 5.7).
    "softmax": OutputActivation(
        lambda logits: torch.softmax(logits, dim=-1),
        lambda logits: torch.log_softmax(logits, dim=-1),
        softmax_log_one_minus,
    ),
    # o = z: linear outputs, the control whose de/dz = o - y under MSE has no sigma' factor.
    "identity": OutputActivation(lambda logits: logits),
}
LOSSES = ("mse", "bce", "nll")
# The objectives that take a logarithm, so need probabilities: not for identity outputs.
LOG_LOSSES = ("bce", "nll")


# Per-sample objectives over the c outputs (the last axis). y: float targets shaped like z.


def mean_squared_error(activation: OutputActivation, logits: Tensor, y: Tensor) -> Tensor:
    """e = 1/2 sum_i (o_i - y_i)^2: its gradient carries the factor sigma'(z) (slow learning)."""
    return 0.5 * (activation.outputs(logits) - y).square().sum(dim=-1)


def binary_cross_entropy(activation: OutputActivation, logits: Tensor, y: Tensor) -> Tensor:
    """Eq. 5.4 for one output, eq. 5.6 for c outputs:
    e = -sum_i (y_i log o_i + (1 - y_i) log(1 - o_i)); with sigmoid, de/dz = o - y (eq. 5.5)."""
    log_o = activation.log_outputs(logits)
    log_one_minus_o = activation.log_one_minus_outputs(logits)
    return -(y * log_o + (1 - y) * log_one_minus_o).sum(dim=-1)


def negative_log_likelihood(activation: OutputActivation, logits: Tensor, y: Tensor) -> Tensor:
    """Eq. 5.8: e = -log o_y, only the labelled output counts (y one-hot selects it)."""
    return -(y * activation.log_outputs(logits)).sum(dim=-1)


PER_SAMPLE: dict[str, Callable[[OutputActivation, Tensor, Tensor], Tensor]] = {
    "mse": mean_squared_error,
    "bce": binary_cross_entropy,
    "nll": negative_log_likelihood,
}


def targets_like(logits: Tensor, target: Tensor) -> Tensor:
    """Float targets shaped like the logits ``[..., N, c]``.

    ``target`` is class indices (an integer tensor ``[..., N]``) or float targets (one-hot rows,
    or {0, 1} with a single output for the binary case of eq. 5.4). Either may lack the leading
    member axes: one batch shared by every member.
    """
    if not target.is_floating_point():
        if logits.shape[-1] == 1:
            raise ValueError("class-index targets need at least 2 outputs; use float {0,1}")
        # One-hot rows by scatter: F.one_hot would also check the labels' range with two
        # host round trips per call, a visible cost at one call per training step.
        index = target.long().expand(logits.shape[:-1]).unsqueeze(-1)
        return torch.zeros_like(logits).scatter_(-1, index, 1.0)
    if target.shape != logits.shape[-target.dim() :] and logits.shape[-1] == 1:
        target = target.unsqueeze(-1)  # [..., N] binary targets of single outputs
    if target.shape != logits.shape[-target.dim() :]:
        raise ValueError(f"target shape {tuple(target.shape)} != logits {tuple(logits.shape)}")
    return target.to(logits.dtype).expand_as(logits)


Objective = Callable[[Tensor, Tensor], Tensor]


def objective(activation: str, loss: str, base: float = math.e) -> Objective:
    """The batch mean of the per-sample objective ``loss`` on outputs ``activation(z)``.

    The returned callable takes logits ``[..., N, c]`` (``[N]`` for a single binary output) and
    targets, and returns the mean over N for each leading index. ``base`` sets the logarithm of
    the cross-entropy objectives (2 gives bits); MSE has no log. The names come from a config
    that ``slowlearn.checks`` has checked (bce and nll need probabilities: no identity).
    """
    output, per_sample = ACTIVATIONS[activation], PER_SAMPLE[loss]
    scale = 1.0 if loss == "mse" or base == math.e else 1.0 / math.log(base)

    def batch_mean(logits: Tensor, target: Tensor) -> Tensor:
        if logits.dim() == 1:
            logits = logits.unsqueeze(-1)
        mean = per_sample(output, logits, targets_like(logits, target)).mean(dim=-1)
        return mean * scale if scale != 1.0 else mean

    return batch_mean
