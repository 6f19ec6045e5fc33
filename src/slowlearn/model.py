"""The networks: a deep multi-layer perceptron (DMLP) and the single neuron of figure 5-4.

Both return logits z; the output activation and the objective live in ``slowlearn.losses``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

HIDDEN_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "sigmoid": nn.Sigmoid,
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
}
INITS = ("default", "scaled_normal", "large")


def initialise_(layer: nn.Linear, init: str) -> None:
    """Set a layer's weights and biases in place.

    default: PyTorch's own (uniform, scaled by fan-in).
    scaled_normal: w ~ N(0, 1/n_in), b ~ N(0, 1), as in Nielsen's network2.py.
    large: w, b ~ N(0, 1), which saturates sigmoid units on purpose.
    """
    if init == "default":
        return
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; valid choices: {', '.join(INITS)}")
    weight_std = 1.0 / math.sqrt(layer.in_features) if init == "scaled_normal" else 1.0
    with torch.no_grad():
        layer.weight.normal_(0.0, weight_std)
        layer.bias.normal_(0.0, 1.0)


class DMLP(nn.Sequential):
    """in -> hidden_sizes[0] -> ... -> hidden_sizes[-1] -> out logits."""

    def __init__(
        self,
        in_features: int = 784,
        hidden_sizes: Sequence[int] = (100,),
        out_features: int = 10,
        hidden_activation: str = "sigmoid",
        init: str = "default",
    ) -> None:
        if hidden_activation not in HIDDEN_ACTIVATIONS:
            raise ValueError(
                f"unknown hidden_activation {hidden_activation!r}; "
                f"valid choices: {', '.join(HIDDEN_ACTIVATIONS)}"
            )
        sizes = [in_features, *hidden_sizes, out_features]
        layers: list[nn.Module] = []
        for index, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            linear = nn.Linear(n_in, n_out)
            initialise_(linear, init)
            layers.append(linear)
            if index < len(sizes) - 2:
                layers.append(HIDDEN_ACTIVATIONS[hidden_activation]())
        super().__init__(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.flatten(1))


class Neuron(nn.Module):
    """Figure 5-4: one input, one output unit, z = w x + b, from start = (w, b)."""

    def __init__(self, start: Sequence[float] = (2.0, 2.0)) -> None:
        super().__init__()
        w, b = start
        self.w = nn.Parameter(torch.tensor(float(w)))
        self.b = nn.Parameter(torch.tensor(float(b)))

    def forward(self, x: Tensor) -> Tensor:
        return self.w * x.reshape(-1, 1) + self.b
