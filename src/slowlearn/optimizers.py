"""torch.optim's SGD and Adam updates for R members stacked on a leading axis, each member with
its own learning rate.

torch.optim takes one scalar lr per parameter group, and scaling the gradients instead would
also scale SGD's momentum buffers and cancel out in Adam. Here the lrs are one per member, a
tensor [R] viewed as [R, 1, ...] in the update, so every member steps as torch.optim steps it
alone, to float rounding (a test compares them). Nothing reduces across members.

A member whose loss stopped being finite is frozen: its gradient and its lr are selected away
with ``torch.where`` (a zeroed gradient alone would not stop momentum or Adam, and NaN times 0
is NaN), so its weights stay as they were when its loss stopped being finite, while the
other members go on. The
network selects the first layer's gradient where it enters that layer
(``model.input_layer``), which spares a pass over the biggest gradient at every step.

``member_state_dict(r)`` returns member r's state in torch.optim's own format, so a member's
checkpoint is the checkpoint of a single run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from slowlearn.model import stacked_layout

# State entries that hold one value per member (stacked); the rest (Adam's step) are shared.
PER_MEMBER_STATE = ("momentum_buffer", "exp_avg", "exp_avg_sq")


def member_axis(param: Tensor) -> tuple[int, ...]:
    """The shape that views [R] values as [R, 1, ...], to broadcast over a stacked parameter."""
    return (-1,) + (1,) * (param.dim() - 1)


class Freeze:
    """The one owner of the freeze mask: which members still train, [R] on the device.

    A member whose loss is not finite is cleared (``stop_diverged``) from that step on. The
    update reads the mask (``MemberOptimizer.step``), and so does the network's input layer,
    which is handed ``training`` at each forward and reads it when the gradient flows
    (``model.SelectGradient``). Disabled, nothing is masked: a single run has no other members
    to protect (its divergence ends it), and the masks are a third of its small update's cost.
    """

    def __init__(self, members: int, device: torch.device, enabled: bool = True) -> None:
        self.enabled = enabled
        self.alive = torch.ones(members, dtype=torch.bool, device=device)

    @property
    def training(self) -> Tensor | None:
        """The mask for the network's input layer; None when nothing freezes."""
        return self.alive if self.enabled else None

    def stop_diverged(self, losses: Tensor) -> None:
        """Clear the members whose loss [R] of this step is not finite (no host sync)."""
        if self.enabled:
            self.alive.logical_and_(torch.isfinite(losses.detach()))


class MemberOptimizer(torch.optim.Optimizer):
    """Shared by the update rules: the per-member lr, the freeze mask, the checkpoint format."""

    rule: type[torch.optim.Optimizer]  # the torch.optim class whose update this reproduces

    def __init__(
        self,
        params: Sequence[Tensor],
        lr: Sequence[float],
        selected: Sequence[Tensor] = (),
        freeze: bool = True,
        **hyperparameters: Any,
    ) -> None:
        # The lrs as given (saved exactly), and as a tensor beside the parameters.
        super().__init__(list(params), dict(lr=[float(value) for value in lr], **hyperparameters))
        device = self.param_groups[0]["params"][0].device
        self.lr = torch.tensor(self.param_groups[0]["lr"], device=device)
        self.freeze = Freeze(len(lr), device, enabled=freeze)
        # Parameters whose gradient the network has already selected (zero when frozen).
        self.selected = {id(param) for param in selected}
        # Whether every count lives on the device, so that a CUDA graph can replay the update
        # (torch.optim's ``capturable``): set by the module on CUDA.
        self.capturable = False
        # Worked out once: a method call on an nn.Parameter costs tens of microseconds.
        self.member_axes = {
            id(param): member_axis(param) for param in self.param_groups[0]["params"]
        }

    @property
    def hyperparameters(self) -> dict[str, Any]:
        group = self.param_groups[0]
        return {key: group[key] for key in self.defaults if key != "lr"}

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One update of every member: torch's ``_foreach`` ops take all parameters in one
        call each (a small model's step is mostly per-call overhead)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        group = self.param_groups[0]
        freeze = self.freeze
        params = [param for param in group["params"] if param.grad is not None]
        axes = [self.member_axes[id(param)] for param in params]
        grads = [  # select, never multiply: NaN times 0 is NaN
            param.grad
            if id(param) in self.selected or not freeze.enabled
            else torch.where(freeze.alive.view(axis), param.grad, 0.0)
            for param, axis in zip(params, axes, strict=True)
        ]
        if group["weight_decay"]:
            grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
        lr = torch.where(freeze.alive, self.lr, 0.0) if freeze.enabled else self.lr
        lrs = [lr.view(axis) for axis in axes]
        self.update(params, grads, lrs, [self.state[param] for param in params], group)
        return loss

    def update(
        self,
        params: list[Tensor],
        grads: list[Tensor],
        lrs: list[Tensor],
        states: list[dict],
        group: dict,
    ) -> None:  # pragma: no cover - every rule overrides it
        raise NotImplementedError

    def member_state_dict(self, member: int) -> dict[str, Any]:
        """Member ``member``'s state as ``rule`` (torch.optim) saves it for the member alone."""
        group = self.param_groups[0]
        alone = self.rule(
            [torch.zeros(p.shape[1:]) for p in group["params"]],
            lr=group["lr"][member],
            **self.hyperparameters,
        )
        saved = alone.state_dict()
        saved["state"] = {
            index: {
                key: stacked_layout(value[member]).clone()
                if key in PER_MEMBER_STATE
                else value.to("cpu", copy=True)  # torch.optim's step count, on the CPU
                for key, value in self.state[param].items()
            }
            for index, param in enumerate(group["params"])
            if self.state[param]
        }
        return saved

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.lr = torch.tensor(self.param_groups[0]["lr"], device=self.lr.device)


def stack_optimizer_states(members: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The state dict of a MemberOptimizer from its members' own (torch.optim) state dicts."""
    group = dict(members[0]["param_groups"][0])
    group["lr"] = [m["param_groups"][0]["lr"] for m in members]
    state = {
        index: {
            key: torch.stack([stacked_layout(m["state"][index][key]) for m in members])
            if key in PER_MEMBER_STATE
            else value
            for key, value in entries.items()
        }
        for index, entries in members[0]["state"].items()
    }
    return {"state": state, "param_groups": [group]}


class SGD(MemberOptimizer):
    """torch.optim.SGD: v = momentum v + (1 - dampening) g (v = g at the first step);
    w -= lr v, or w -= lr (g + momentum v) with nesterov."""

    rule = torch.optim.SGD

    def __init__(
        self,
        params: Sequence[Tensor],
        lr: Sequence[float],
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        selected: Sequence[Tensor] = (),
        freeze: bool = True,
    ) -> None:
        super().__init__(
            params,
            lr,
            selected,
            freeze,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
        )

    def update(
        self,
        params: list[Tensor],
        grads: list[Tensor],
        lrs: list[Tensor],
        states: list[dict],
        group: dict,
    ) -> None:
        momentum = group["momentum"]
        if momentum:
            if "momentum_buffer" not in states[0]:  # the first step: v = g
                for state, grad in zip(states, grads, strict=True):
                    state["momentum_buffer"] = grad.clone()
            else:
                buffers = [state["momentum_buffer"] for state in states]
                torch._foreach_mul_(buffers, momentum)
                torch._foreach_add_(buffers, grads, alpha=1 - group["dampening"])
            buffers = [state["momentum_buffer"] for state in states]
            grads = (
                torch._foreach_add(grads, buffers, alpha=momentum) if group["nesterov"] else buffers
            )
        torch._foreach_addcmul_(params, grads, lrs, value=-1)


class Adam(MemberOptimizer):
    """torch.optim.Adam: m = beta1 m + (1 - beta1) g, v = beta2 v + (1 - beta2) g^2,
    w -= lr / (1 - beta1^t) m / (sqrt(v / (1 - beta2^t)) + eps)."""

    rule = torch.optim.Adam

    def __init__(
        self,
        params: Sequence[Tensor],
        lr: Sequence[float],
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        selected: Sequence[Tensor] = (),
        freeze: bool = True,
    ) -> None:
        super().__init__(
            params, lr, selected, freeze, betas=tuple(betas), eps=eps, weight_decay=weight_decay
        )

    def update(
        self,
        params: list[Tensor],
        grads: list[Tensor],
        lrs: list[Tensor],
        states: list[dict],
        group: dict,
    ) -> None:
        beta1, beta2 = group["betas"]
        device = params[0].device if self.capturable else torch.device("cpu")
        for state, param in zip(states, params, strict=True):
            if not state:
                state["step"] = torch.tensor(0.0)
                state["exp_avg"] = torch.zeros_like(param)
                state["exp_avg_sq"] = torch.zeros_like(param)
            # On the CPU, as torch.optim keeps it (no device sync); on the device when captured.
            state["step"] = state["step"].to(device)
        counts = [state["step"] for state in states]
        torch._foreach_add_(counts, 1)
        # The bias corrections: numbers, or tensors on the device when capturable.
        step = counts[0] if self.capturable else counts[0].item()
        correction1, correction2 = 1 - beta1**step, (1 - beta2**step) ** 0.5
        averages = [state["exp_avg"] for state in states]
        squares = [state["exp_avg_sq"] for state in states]
        torch._foreach_lerp_(averages, grads, 1 - beta1)
        torch._foreach_mul_(squares, beta2)
        torch._foreach_addcmul_(squares, grads, grads, value=1 - beta2)
        denominators = torch._foreach_sqrt(squares)
        torch._foreach_div_(denominators, correction2)
        torch._foreach_add_(denominators, group["eps"])
        steps = torch._foreach_mul(averages, [lr / correction1 for lr in lrs])
        torch._foreach_addcdiv_(params, steps, denominators, value=-1)


# The keys of an optimizer config that are not settings of its rule: Hydra's, and the lr, which
# each member has its own of.
NOT_SETTINGS = ("_target_", "_partial_", "lr")
# The update rules, by the ``_target_`` that names them in an optimizer config.
OPTIMIZERS: dict[str, type[MemberOptimizer]] = {
    f"{rule.__module__}.{rule.__name__}": rule for rule in (SGD, Adam)
}
