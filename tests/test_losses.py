"""The objectives against the lecture's numbers, torch's references and eq. 5.5."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from slowlearn.losses import objective


def logit(p: float) -> torch.Tensor:
    return torch.tensor([[math.log(p / (1 - p))]], dtype=torch.float64)


@pytest.mark.parametrize(("output", "expected"), [(0.98, 0.0291), (0.0001, 13.2877)])
def test_eq_5_4_in_bits(output: float, expected: float) -> None:
    y = torch.tensor([[1.0]], dtype=torch.float64)
    value = objective("sigmoid", "bce", base=2)(logit(output), y)
    assert value.item() == pytest.approx(expected, abs=5e-5)


@pytest.mark.parametrize(("o_y", "expected"), [(0.0508, 4.2990), (0.8360, 0.2584)])
def test_eq_5_8_in_bits(o_y: float, expected: float) -> None:
    # Softmax logits whose labelled output (class 1) is o_y: z = log o, shifted freely.
    rest = (1 - o_y) / 2
    logits = torch.tensor([[math.log(rest), math.log(o_y), math.log(rest)]], dtype=torch.float64)
    value = objective("softmax", "nll", base=2)(logits + 3.0, torch.tensor([1]))
    assert value.item() == pytest.approx(expected, abs=5e-5)


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(32, 10, generator=generator, dtype=torch.float64) * 3
    labels = torch.randint(0, 10, (32,), generator=generator)
    return logits, labels, F.one_hot(labels, 10).double()


def test_softmax_nll_matches_cross_entropy_and_the_lecture_forms(batch) -> None:
    logits, labels, one_hot = batch
    ours = objective("softmax", "nll")(logits, labels)
    torch.testing.assert_close(ours, F.cross_entropy(logits, labels))
    torch.testing.assert_close(ours, F.nll_loss(F.log_softmax(logits, dim=1), labels))
    low_level = (one_hot * -torch.log(F.softmax(logits, dim=1))).sum(1).mean()
    torch.testing.assert_close(ours, low_level)
    torch.testing.assert_close(objective("softmax", "nll")(logits, one_hot), ours)


def test_sigmoid_bce_is_summed_over_classes_and_averaged_over_samples(batch) -> None:
    logits, labels, one_hot = batch
    reference = F.binary_cross_entropy_with_logits(logits, one_hot, reduction="none").sum(1).mean()
    torch.testing.assert_close(objective("sigmoid", "bce")(logits, labels), reference)


def test_softmax_bce_matches_its_direct_formula(batch) -> None:
    logits, labels, one_hot = batch
    o = F.softmax(logits, dim=1)
    direct = -(one_hot * o.log() + (1 - one_hot) * (1 - o).log()).sum(1).mean()
    torch.testing.assert_close(objective("softmax", "bce")(logits, labels), direct)


@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
def test_mse_is_half_the_summed_square_averaged_over_samples(batch, activation: str) -> None:
    logits, labels, one_hot = batch
    o = torch.sigmoid(logits) if activation == "sigmoid" else F.softmax(logits, dim=1)
    reference = F.mse_loss(o, one_hot, reduction="sum") / 2 / len(labels)
    torch.testing.assert_close(objective(activation, "mse")(logits, labels), reference)


def test_sigmoid_nll_uses_only_the_labelled_output(batch) -> None:
    logits, labels, _ = batch
    reference = -F.logsigmoid(logits.gather(1, labels[:, None])).mean()
    torch.testing.assert_close(objective("sigmoid", "nll")(logits, labels), reference)


def test_base_two_is_the_natural_value_over_ln_2(batch) -> None:
    logits, labels, _ = batch
    natural = objective("softmax", "nll")(logits, labels)
    torch.testing.assert_close(
        objective("softmax", "nll", base=2)(logits, labels), natural / math.log(2)
    )
    mse = objective("sigmoid", "mse")(logits, labels)
    torch.testing.assert_close(objective("sigmoid", "mse", base=2)(logits, labels), mse)


def per_sample_gradient(activation: str, loss: str, logits: torch.Tensor, labels: torch.Tensor):
    z = logits.clone().requires_grad_(True)
    objective(activation, loss)(z, labels).backward()
    return z.grad * len(labels)  # the batch mean divides each sample's gradient by N


@pytest.mark.parametrize(("activation", "loss"), [("sigmoid", "bce"), ("softmax", "nll")])
def test_eq_5_5_the_error_alone_sets_the_step(batch, activation: str, loss: str) -> None:
    logits, labels, one_hot = batch
    o = torch.sigmoid(logits) if activation == "sigmoid" else F.softmax(logits, dim=1)
    torch.testing.assert_close(per_sample_gradient(activation, loss, logits, labels), o - one_hot)


def test_mse_gradient_carries_the_slow_learning_factor(batch) -> None:
    logits, labels, one_hot = batch
    o = torch.sigmoid(logits)
    expected = (o - one_hot) * o * (1 - o)
    torch.testing.assert_close(per_sample_gradient("sigmoid", "mse", logits, labels), expected)


@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
@pytest.mark.parametrize("loss", ["mse", "bce", "nll"])
def test_huge_logits_stay_finite_in_float32(activation: str, loss: str) -> None:
    logits = torch.tensor([[1e4, -1e4, 0.0, 5e3], [-1e4, 1e4, -5e3, 1e4]], requires_grad=True)
    labels = torch.tensor([1, 0])  # both badly wrong: the hardest case
    value = objective(activation, loss)(logits, labels)
    value.backward()
    assert torch.isfinite(value)
    assert torch.isfinite(logits.grad).all()
    if loss != "mse":
        assert value.item() > 1e3  # saturated and wrong costs a lot, not a clamped constant


def test_single_output_binary_target_of_eq_5_4() -> None:
    z = torch.tensor([0.3, -2.0, 4.0])
    y = torch.tensor([1.0, 0.0, 0.0])
    reference = F.binary_cross_entropy_with_logits(z, y)
    torch.testing.assert_close(objective("sigmoid", "bce")(z, y), reference)
    torch.testing.assert_close(objective("sigmoid", "bce")(z[:, None], y[:, None]), reference)


def test_identity_mse_gradient_is_the_error_alone(batch) -> None:
    """The control: linear outputs under MSE, de/dz = o - y = z - y, no sigma' factor."""
    logits, labels, one_hot = batch
    torch.testing.assert_close(
        per_sample_gradient("identity", "mse", logits, labels), logits - one_hot
    )


def test_stacked_members_in_one_call_equal_each_alone(batch) -> None:
    """[R, N, c] logits give each member's own batch mean, as R separate calls would."""
    logits, labels, _ = batch
    stacked = torch.stack([logits, 2 * logits, -logits])
    for activation, loss in [("sigmoid", "bce"), ("softmax", "bce"), ("softmax", "nll")]:
        call = objective(activation, loss)
        alone = torch.stack([call(member, labels) for member in stacked])
        torch.testing.assert_close(call(stacked, labels), alone)  # labels shared by all


def test_softmax_bce_stays_exact_where_one_minus_o_underflows() -> None:
    """A wrong class at o_i = 1 - 1e-13: 1 - o_i is 0 in float32, yet log(1 - o_i) = -30."""
    logits = torch.tensor([[30.0, 0.0, -1e4]])
    value = objective("softmax", "bce")(logits, torch.tensor([1]))
    exact = objective("softmax", "bce")(logits.double(), torch.tensor([1]))
    assert torch.isfinite(value) and value.item() == pytest.approx(exact.item(), rel=1e-5)
    assert value.item() > 59  # -log o_1 (30) + -log(1 - o_0) (30)
