"""The cells: an output activation and a per-sample objective, each with its role in the
lecture's argument and the gradient it gives at the output pre-activation, ∂e/∂z (eq. 5.5),
in the spirit of the cost classes of Nielsen's network2.py. The report's comparisons, its
colours and its cell order read this one list.
"""

from __future__ import annotations

from dataclasses import dataclass

SLOW_LEARNER = "slow learner"  # MSE on outputs whose slope multiplies the error
CURE = "cure"  # a cross entropy: the error alone sets the step
CONTROL = "control"  # the error alone sets the step, but the outputs are no probabilities
NO_CURE = "no cure"  # a log-likelihood that never pushes the wrong outputs down


@dataclass(frozen=True)
class Cell:
    activation: str  # the output activation
    loss: str  # the per-sample objective
    role: str
    dedz: str  # ∂e/∂z in terms of the outputs o and the targets y
    cure: str = ""  # a slow learner's cure with the same output activation

    @property
    def name(self) -> str:
        return f"{self.activation}+{self.loss}"


CELLS = (
    Cell("sigmoid", "mse", SLOW_LEARNER, "(o − y)·o(1 − o): σ′(z) times the error", "sigmoid+bce"),
    Cell("sigmoid", "bce", CURE, "o − y (eq. 5.5)"),
    Cell("sigmoid", "nll", NO_CURE, "o_y − 1 at the labelled output, 0 at the others"),
    Cell("softmax", "mse", SLOW_LEARNER, "the softmax Jacobian times (o − y)", "softmax+nll"),
    Cell("softmax", "bce", CURE, "o − y plus terms from the other outputs' log(1 − o)"),
    Cell("softmax", "nll", CURE, "o − y (eqs. 5.7, 5.8)"),
    Cell("identity", "mse", CONTROL, "o − y = z − y, with no σ′ factor"),
)
BY_NAME = {cell.name: cell for cell in CELLS}


def named(role: str) -> tuple[str, ...]:
    """The names of the cells with this role, in CELLS' order."""
    return tuple(cell.name for cell in CELLS if cell.role == role)


SLOW_LEARNERS = named(SLOW_LEARNER)
CROSS_ENTROPY = named(CURE)
(CONTROL_CELL,) = named(CONTROL)
SAME_ACTIVATION_CURE = {cell.name: cell.cure for cell in CELLS if cell.cure}
