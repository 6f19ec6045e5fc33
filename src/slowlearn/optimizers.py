"""torch.optim's SGD and Adam updates for R members stacked on a leading axis, each member with
its own learning rate.

torch.optim takes one scalar lr per parameter group, and scaling the gradients instead would
also scale SGD's momentum buffers and cancel out in Adam. Here the lrs are one per member, a
tensor [R] viewed as [R, 1, ...] in the update, so every member steps exactly as torch.optim
steps it alone (a test compares them). Nothing reduces across members.

A member whose loss stopped being finite is frozen: its gradient and its lr are selected away
with ``torch.where`` (a zeroed gradient alone would not stop momentum or Adam, and NaN times 0
is NaN), so its weights keep their last finite values while the other members go on. The
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


def per_member(values: Tensor, like: Tensor) -> Tensor:
    """[R] viewed as [R, 1, ...] to broadcast over one stacked parameter."""
    return values.view(-1, *[1] * (like.dim() - 1))


class MemberOptimizer(torch.optim.Optimizer):
    """Shared by the update rules: the per-member lr, the freeze mask, the checkpoint format."""

    rule: type[torch.optim.Optimizer]  # the torch.optim class whose update this reproduces

    def __init__(
        self,
        params: Sequence[Tensor],
        lr: Sequence[float],
        selected: Sequence[Tensor] = (),
        **hyperparameters: Any,
    ) -> None:
        # The lrs as given (saved exactly), and as a tensor beside the parameters.
        super().__init__(list(params), dict(lr=[float(value) for value in lr], **hyperparameters))
        device = self.param_groups[0]["params"][0].device
        self.lr = torch.tensor(self.param_groups[0]["lr"], device=device)
        # True while a member trains; the module clears it when the member's loss is not finite.
        self.alive = torch.ones(len(lr), dtype=torch.bool, device=device)
        # Parameters whose gradient the network has already selected (zero when frozen).
        self.selected = {id(param) for param in selected}

    @property
    def hyperparameters(self) -> dict[str, Any]:
        group = self.param_groups[0]
        return {key: group[key] for key in self.defaults if key != "lr"}

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        group = self.param_groups[0]
        lr = torch.where(self.alive, self.lr, 0.0)
        for param in group["params"]:
            if param.grad is None:
                continue
            grad = param.grad
            if id(param) not in self.selected:  # select, never multiply: NaN times 0 is NaN
                grad = torch.where(per_member(self.alive, param), grad, 0.0)
            if group["weight_decay"]:
                grad = grad.add(param, alpha=group["weight_decay"])
            self.update(param, grad, per_member(lr, param), self.state[param], group)
        return loss

    def update(
        self, param: Tensor, grad: Tensor, lr: Tensor, state: dict, group: dict
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
                else value.clone()
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
        lr: Tensor,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        selected: Sequence[Tensor] = (),
    ) -> None:
        super().__init__(
            params,
            lr,
            selected,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
        )

    def update(self, param: Tensor, grad: Tensor, lr: Tensor, state: dict, group: dict) -> None:
        momentum = group["momentum"]
        if momentum:
            buffer = state.get("momentum_buffer")
            if buffer is None:
                buffer = state["momentum_buffer"] = grad.clone()
            else:
                buffer.mul_(momentum).add_(grad, alpha=1 - group["dampening"])
            grad = grad.add(buffer, alpha=momentum) if group["nesterov"] else buffer
        param.addcmul_(grad, lr, value=-1)


class Adam(MemberOptimizer):
    """torch.optim.Adam: m = beta1 m + (1 - beta1) g, v = beta2 v + (1 - beta2) g^2,
    w -= lr / (1 - beta1^t) m / (sqrt(v / (1 - beta2^t)) + eps)."""

    rule = torch.optim.Adam

    def __init__(
        self,
        params: Sequence[Tensor],
        lr: Tensor,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        selected: Sequence[Tensor] = (),
    ) -> None:
        super().__init__(
            params, lr, selected, betas=tuple(betas), eps=eps, weight_decay=weight_decay
        )

    def update(self, param: Tensor, grad: Tensor, lr: Tensor, state: dict, group: dict) -> None:
        beta1, beta2 = group["betas"]
        if not state:
            state["step"] = torch.tensor(0.0)
            state["exp_avg"] = torch.zeros_like(param)
            state["exp_avg_sq"] = torch.zeros_like(param)
        state["step"] += 1
        step = state["step"].item()  # a CPU tensor, as torch.optim keeps it: no device sync
        state["exp_avg"].lerp_(grad, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        step_size = lr / (1 - beta1**step)
        denom = (state["exp_avg_sq"].sqrt() / (1 - beta2**step) ** 0.5).add_(group["eps"])
        param.addcdiv_(state["exp_avg"] * step_size, denom, value=-1)


OPTIMIZERS: dict[str, type[MemberOptimizer]] = {
    "torch.optim.SGD": SGD,
    "torch.optim.Adam": Adam,
}
