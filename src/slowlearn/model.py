"""The networks, stackable into R members: a deep multi-layer perceptron (DMLP) and the single
neuron of figure 5-4, with their initialisations.

A member is an ordinary ``nn.Module``: its constructor draws the initial weights, and its
``state_dict`` is the on-disk layout of a checkpoint. ``MemberStack`` stacks R members of one
architecture on a leading axis (a linear weight ``[out, in]`` becomes ``[R, in, out]``, see
``stacked_layout``) and trains them as one program: ``torch.baddbmm`` applies each member's
weights to its own mini-batch.
Both return logits z; the output activation and the objective live in ``slowlearn.losses``.
Only configs build them, checked at start-up (``slowlearn.checks``): the names and values they
take are not checked again here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

HIDDEN_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "sigmoid": nn.Sigmoid,
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
}
# The same functions for the stack: a module call costs hook dispatch at every layer and step.
STACKED_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "sigmoid": torch.sigmoid,
    "relu": torch.relu,
    "tanh": torch.tanh,
}
INITS = ("default", "scaled_normal", "large", "xavier")


def initialise_(layer: nn.Linear, init: str) -> None:
    """Set a layer's weights and biases in place.

    default: PyTorch's own (uniform, scaled by fan-in).
    scaled_normal: w ~ N(0, 1/n_in), b ~ N(0, 1), as in Nielsen's network2.py.
    large: w, b ~ N(0, 1), which saturates sigmoid units on purpose.
    xavier: Glorot uniform weights, U(+-sqrt(6 / (n_in + n_out))), zero biases (Glorot and
    Bengio 2010): keeps a deep sigmoid stack's signals from vanishing at the start.
    """
    if init == "default":
        return
    with torch.no_grad():
        if init == "xavier":
            nn.init.xavier_uniform_(layer.weight)
            layer.bias.zero_()
            return
        # checks.py names a bad init to the user; a lookup keeps any other caller from
        # silently getting the large init.
        weight_std = {"scaled_normal": 1.0 / math.sqrt(layer.in_features), "large": 1.0}[init]
        layer.weight.normal_(0.0, weight_std)
        layer.bias.normal_(0.0, 1.0)


def scale_output_init_(layer: nn.Linear, scale: float) -> None:
    """w, b ~ N(0, scale^2) in place: the output layer's own init (``output_init_scale``)."""
    with torch.no_grad():
        layer.weight.normal_(0.0, float(scale))
        layer.bias.normal_(0.0, float(scale))


def stacked_linear(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """z = x W^T + b for R members at once: ``weight`` [R, in, out] (nn.Linear's weight
    transposed, see MemberStack), ``bias`` [R, out].

    ``x`` is each member's own batch [R, B, in], or one batch [B, in] shared by all members
    (evaluation): that one is never copied R times, it goes through a single matrix product
    with every member's weights side by side.
    """
    if x.dim() == 3:
        return torch.baddbmm(bias.unsqueeze(1), x, weight)
    members, inputs, outputs = weight.shape
    side_by_side = weight.transpose(0, 1).reshape(inputs, members * outputs)
    z = (x @ side_by_side).view(len(x), members, outputs)  # [B, R, out]
    return z.transpose(0, 1) + bias.unsqueeze(1)


class SelectGradient(torch.autograd.Function):
    """Identity forward. Backward keeps the gradient of the members still training and sets
    the others' to zero by selection (``torch.where``: NaN times 0 would be NaN).

    The mask (``optimizers.Freeze``, its owner) is read when the gradient flows, not when the
    forward ran: a member whose loss of this very step is not finite is cleared before the
    backward pass.
    """

    @staticmethod
    def forward(ctx: Any, z: Tensor, training: Tensor) -> Tensor:
        ctx.training = training  # by reference: its values at backward time count
        return z.view_as(z)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        keep = ctx.training.view(-1, *[1] * (grad.dim() - 1))
        return torch.where(keep, grad, 0.0), None


def input_layer(z: Tensor, training: Tensor | None) -> Tensor:
    """The first layer's pre-activation, through which no gradient reaches a frozen member:
    its first-layer weight and bias gradients (products of the input, data, always finite,
    with this gradient) are exactly zero, with no pass over the biggest weight gradient."""
    return z if training is None else SelectGradient.apply(z, training)


class DMLP(nn.Sequential):
    """in -> hidden_sizes[0] -> ... -> hidden_sizes[-1] -> out logits."""

    def __init__(
        self,
        in_features: int = 784,
        hidden_sizes: Sequence[int] = (100,),
        out_features: int = 10,
        hidden_activation: str = "sigmoid",
        init: str = "default",
        output_init_scale: float | None = None,
    ) -> None:
        """``init`` draws every layer's weights and biases; ``output_init_scale`` s, when set,
        draws the output layer's from N(0, s^2) instead, so that how saturated the outputs
        start can be set apart from the hidden layers' init."""
        sizes = [in_features, *hidden_sizes, out_features]
        layers: list[nn.Module] = []
        for index, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            linear = nn.Linear(n_in, n_out)
            if index == len(sizes) - 2 and output_init_scale is not None:
                scale_output_init_(linear, output_init_scale)
            else:
                initialise_(linear, init)
            layers.append(linear)
            if index < len(sizes) - 2:
                layers.append(HIDDEN_ACTIVATIONS[hidden_activation]())
        super().__init__(*layers)
        self.hidden_activation = hidden_activation
        # Per-layer tags name layers, never module indices.
        self.layer_names = [f"hidden{i}" for i in range(1, len(hidden_sizes) + 1)] + ["output"]

    def forward(self, x: Tensor) -> Tensor:
        """One member on its own: the plain nn.Sequential, the reference for the stack."""
        return super().forward(x.flatten(1))

    def stacked_forward(
        self,
        params: Sequence[Tensor],
        x: Tensor,
        keep_hidden: bool = False,
        training: Tensor | None = None,
    ) -> tuple[Tensor, list[Tensor]]:
        """(logits [R, B, out], the hidden layers' outputs if ``keep_hidden``) of R members;
        ``x`` is flat: [R, B, in], or [B, in] shared by all. ``training`` [R]: which
        members' gradients to keep (``input_layer``).

        ``params`` are the stacked parameters in ``named_parameters`` order, weight ([R, in,
        out], see ``stacked_layout``) and bias of each layer in turn.
        """
        activation = STACKED_ACTIVATIONS[self.hidden_activation]
        hidden: list[Tensor] = []
        h = x
        last = len(params) // 2 - 1
        for index in range(last + 1):
            z = stacked_linear(h, params[2 * index], params[2 * index + 1])
            if index == 0:
                z = input_layer(z, training)
            if index == last:
                return z, hidden
            h = activation(z)
            if keep_hidden:
                hidden.append(h)
        raise AssertionError("a DMLP has an output layer")


class Neuron(nn.Module):
    """Figure 5-4: one input, one output unit, z = w x + b, from start = (w, b)."""

    def __init__(
        self, start: Sequence[float] = (2.0, 2.0), output_init_scale: float | None = None
    ) -> None:
        # The key exists for every model so that a run's settings name it; the neuron's one
        # unit starts from ``start``, so only null is allowed (slowlearn.checks).
        super().__init__()
        w, b = start
        self.w = nn.Parameter(torch.tensor(float(w)))
        self.b = nn.Parameter(torch.tensor(float(b)))
        self.hidden_activation = None
        self.layer_names = ["output"]

    def forward(self, x: Tensor) -> Tensor:
        return self.w * x.reshape(-1, 1) + self.b

    def stacked_forward(
        self,
        params: Sequence[Tensor],
        x: Tensor,
        keep_hidden: bool = False,
        training: Tensor | None = None,
    ) -> tuple[Tensor, list[Tensor]]:
        w, b = (p.view(-1, 1, 1) for p in params)
        return input_layer(w * x.reshape(*x.shape[:-2], -1, 1) + b, training), []


def stacked_layout(member_parameter: Tensor) -> Tensor:
    """A member's parameter as it sits in the stack: a linear layer's weight [out, in]
    transposed to [in, out], the layout in which baddbmm's backward writes its gradient (a
    transposed parameter would cost a transposing copy of its gradient at every step, which
    for the first layer of 18 members takes longer than the matrix product itself)."""
    return member_parameter.T if member_parameter.dim() == 2 else member_parameter


class MemberStack(nn.Module):
    """R members of one architecture, each parameter stacked on a leading member axis.

    Each member's initial weights are exactly those its own constructor drew; ``member_state``
    gives them back in the member's own ``state_dict`` layout.
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        template = members[0]
        self.names = [name for name, _ in template.named_parameters()]
        self.stacked = nn.ParameterList(
            nn.Parameter(
                torch.stack(
                    [stacked_layout(dict(m.named_parameters())[name].detach()) for m in members]
                )
            )
            for name in self.names
        )
        # Plain attributes: the template's own parameters are not part of the stack.
        self.__dict__["template_forward"] = template.stacked_forward
        self.layer_names: list[str] = template.layer_names
        self.hidden_activation: str | None = template.hidden_activation

    def forward(
        self, x: Tensor, keep_hidden: bool = False, training: Tensor | None = None
    ) -> tuple[Tensor, list[Tensor]]:
        return self.template_forward(list(self.stacked), x, keep_hidden, training)

    def input_layer_parameters(self) -> list[Tensor]:
        """The first layer's weight and bias, whose gradient ``input_layer`` selects."""
        return list(self.stacked[:2])

    def layer_parameters(self) -> list[tuple[str, Tensor, Tensor]]:
        """(layer name, stacked weight, stacked bias) of every layer, input to output."""
        params = list(self.stacked)
        return [(name, params[2 * i], params[2 * i + 1]) for i, name in enumerate(self.layer_names)]

    def member_state(self, member: int) -> dict[str, Tensor]:
        """Member ``member``'s parameters in its own ``state_dict`` layout."""
        return {
            name: stacked_layout(p[member].detach()).clone()
            for name, p in zip(self.names, self.stacked, strict=True)
        }
