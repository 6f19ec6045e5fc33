"""The textbook objectives (lecture eqs. 5.4 to 5.8), each computed stably from the logits z.

Every objective is defined per sample, exactly as in the lecture, and the batch loss is the
mean over samples. Logarithms are natural by default; ``base=2`` gives the lecture's bits.
No log is ever taken of a probability: log o and log(1 - o) come from log-sigmoid,
log-softmax and logsumexp, so the losses and their gradients stay finite for any finite z.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

ACTIVATIONS = ("sigmoid", "softmax")
LOSSES = ("mse", "bce", "nll")


def check_choice(kind: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"unknown {kind} {value!r}; valid choices: {', '.join(valid)}")


def probabilities(activation: str, logits: Tensor) -> Tensor:
    """o = sigma(z), one independent unit per output, or o = softmax(z) (eq. 5.7)."""
    check_choice("activation", activation, ACTIVATIONS)
    if activation == "sigmoid":
        return torch.sigmoid(logits)
    return torch.softmax(logits, dim=1)


def log_outputs(activation: str, logits: Tensor) -> Tensor:
    """log o, by log-sigmoid or log-softmax: never the log of a probability."""
    if activation == "sigmoid":
        return F.logsigmoid(logits)
    return torch.log_softmax(logits, dim=1)


def log_one_minus_outputs(activation: str, logits: Tensor) -> Tensor:
    """log(1 - o), by log-sigmoid or logsumexp: never the log of a probability."""
    if activation == "sigmoid":
        return F.logsigmoid(-logits)  # 1 - sigma(z) = sigma(-z)
    # softmax: 1 - o_i = sum_{j != i} exp(z_j) / sum_j exp(z_j), so
    # log(1 - o_i) = logsumexp_{j != i} z_j - logsumexp_j z_j.
    classes = logits.shape[1]
    if classes < 2:
        raise ValueError("softmax needs at least 2 outputs; with 1 output it is constant 1")
    others = logits.unsqueeze(1).expand(-1, classes, -1)
    own_class = torch.eye(classes, dtype=torch.bool, device=logits.device)
    log_rest = torch.logsumexp(others.masked_fill(own_class, -math.inf), dim=2)
    return log_rest - torch.logsumexp(logits, dim=1, keepdim=True)


# Per-sample objectives over the c outputs. y: float targets shaped like z (one-hot rows).


def mean_squared_error(activation: str, logits: Tensor, y: Tensor) -> Tensor:
    """e = 1/2 sum_i (o_i - y_i)^2: its gradient carries the factor sigma'(z) (slow learning)."""
    return 0.5 * (probabilities(activation, logits) - y).square().sum(dim=1)


def binary_cross_entropy(activation: str, logits: Tensor, y: Tensor) -> Tensor:
    """Eq. 5.4 for one output, eq. 5.6 for c outputs:
    e = -sum_i (y_i log o_i + (1 - y_i) log(1 - o_i)); with sigmoid, de/dz = o - y (eq. 5.5)."""
    log_o = log_outputs(activation, logits)
    log_one_minus_o = log_one_minus_outputs(activation, logits)
    return -(y * log_o + (1 - y) * log_one_minus_o).sum(dim=1)


def negative_log_likelihood(activation: str, logits: Tensor, y: Tensor) -> Tensor:
    """Eq. 5.8: e = -log o_y, only the labelled output counts (y one-hot selects it)."""
    return -(y * log_outputs(activation, logits)).sum(dim=1)


PER_SAMPLE: dict[str, Callable[[str, Tensor, Tensor], Tensor]] = {
    "mse": mean_squared_error,
    "bce": binary_cross_entropy,
    "nll": negative_log_likelihood,
}


def as_matrix(logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Bring logits to [N, c] and target to float rows of the same shape.

    target is class indices (an integer tensor [N]) or float targets shaped like logits
    (one-hot rows, or {0, 1} with a single output for the binary case of eq. 5.4)."""
    if logits.dim() == 1:
        logits = logits.unsqueeze(1)
    if target.dtype in (torch.int64, torch.int32, torch.uint8, torch.int16, torch.int8):
        if logits.shape[1] == 1:
            raise ValueError("class-index targets need at least 2 outputs; use float {0,1}")
        # One-hot rows by scatter: F.one_hot would also check the labels' range with two
        # host round trips per call, a visible cost at one call per training step.
        one_hot = torch.zeros_like(logits)
        target = one_hot.scatter_(1, target.long().unsqueeze(1), 1.0)
    elif target.dim() == 1:
        target = target.unsqueeze(1)
    if target.shape != logits.shape:
        raise ValueError(f"target shape {tuple(target.shape)} != logits {tuple(logits.shape)}")
    return logits, target.to(logits.dtype)


def objective(
    activation: str, loss: str, logits: Tensor, target: Tensor, base: float = math.e
) -> Tensor:
    """Mean over the batch of the per-sample objective ``loss`` on outputs ``activation(z)``.

    ``base`` sets the logarithm of the cross-entropy objectives (2 gives bits); MSE has no log.
    """
    check_choice("activation", activation, ACTIVATIONS)
    check_choice("loss", loss, LOSSES)
    logits, y = as_matrix(logits, target)
    per_sample = PER_SAMPLE[loss](activation, logits, y)
    if loss != "mse" and base != math.e:
        per_sample = per_sample / math.log(base)
    return per_sample.mean()
