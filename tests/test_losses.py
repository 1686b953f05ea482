"""The loss functions against values worked out by hand with ``math``."""

from __future__ import annotations

import math

import pytest
import torch

from kd_backend.errors import ConfigError
from kd_backend.losses import (
    ce_loss,
    hidden_mse_loss,
    kd_kl_loss,
    kd_mse_loss,
    regression_loss,
)


def softmax2(a: float, b: float) -> tuple[float, float]:
    ea, eb = math.exp(a), math.exp(b)
    return ea / (ea + eb), eb / (ea + eb)


def kl2(teacher: tuple[float, float], student: tuple[float, float]) -> float:
    """KL(teacher || student) of two 2-class distributions."""
    return sum(t * (math.log(t) - math.log(s)) for t, s in zip(teacher, student))


def t64(x: list) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


# --- cross-entropy and regression -----------------------------------------------------------


def test_ce_loss_per_instance_by_hand() -> None:
    logits = t64([[1.0, 3.0], [0.0, 0.0]])
    labels = torch.tensor([0, 1])
    # -log(e^1 / (e^1 + e^3)) = log(1 + e^2); a uniform 2-class guess costs log 2
    expected = [math.log(1 + math.exp(2.0)), math.log(2.0)]
    out = ce_loss(logits, labels)
    assert out.shape == (2,)
    assert out.tolist() == pytest.approx(expected, rel=1e-12)


def test_ce_loss_rejects_mismatched_batch() -> None:
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3,\)"):
        ce_loss(torch.zeros(2, 3), torch.zeros(3, dtype=torch.long))


def test_regression_loss_accepts_column_and_flat_predictions() -> None:
    targets = t64([1.0, 2.0, -1.0])
    expected = [(1.5 - 1.0) ** 2, (0.0 - 2.0) ** 2, (-0.5 + 1.0) ** 2]  # 0.25, 4, 0.25
    assert regression_loss(t64([[1.5], [0.0], [-0.5]]), targets).tolist() == pytest.approx(expected)
    assert regression_loss(t64([1.5, 0.0, -0.5]), targets).tolist() == pytest.approx(expected)


def test_regression_loss_rejects_wrong_shape() -> None:
    with pytest.raises(ValueError, match=r"\(3, 2\)"):
        regression_loss(torch.zeros(3, 2), torch.zeros(3))
    with pytest.raises(ValueError, match=r"\(4,\)"):
        regression_loss(torch.zeros(3, 1), torch.zeros(4))


# --- KD on logits ---------------------------------------------------------------------------


def test_kd_kl_loss_temperature_one_by_hand() -> None:
    student = t64([[0.0, 1.0], [0.5, 0.5]])
    teacher = t64([[2.0, 0.0], [0.5, 0.5]])
    expected0 = kl2(softmax2(2.0, 0.0), softmax2(0.0, 1.0))  # ~1.0806
    out = kd_kl_loss(student, teacher, temperature=1.0)
    assert out.shape == (2,)
    assert out[0].item() == pytest.approx(expected0, rel=1e-12)
    assert out[1].item() == pytest.approx(0.0, abs=1e-15)  # identical distributions


def test_kd_kl_loss_temperature_two_scales_by_t_squared() -> None:
    student = t64([[0.0, 1.0]])
    teacher = t64([[2.0, 0.0]])
    # softened: student (0, 0.5), teacher (1, 0); then multiplied by T^2 = 4
    expected = 4.0 * kl2(softmax2(1.0, 0.0), softmax2(0.0, 0.5))
    assert kd_kl_loss(student, teacher, temperature=2.0).item() == pytest.approx(expected, rel=1e-12)
    # and it is not the un-softened KL
    assert expected != pytest.approx(kl2(softmax2(2.0, 0.0), softmax2(0.0, 1.0)), rel=1e-3)


def test_kd_kl_loss_gradient_by_hand() -> None:
    # d/dz [T^2 KL(p_t^T || p_s^T)] = T * (p_s^T - p_t^T)
    student = t64([[0.0, 1.0]]).requires_grad_(True)
    teacher = t64([[2.0, 0.0]]).requires_grad_(True)
    kd_kl_loss(student, teacher, temperature=2.0).sum().backward()
    ps, pt = softmax2(0.0, 0.5), softmax2(1.0, 0.0)
    assert student.grad[0].tolist() == pytest.approx([2.0 * (ps[0] - pt[0]), 2.0 * (ps[1] - pt[1])], rel=1e-12)
    assert teacher.grad is None  # the teacher side is a detached target


def test_kd_kl_loss_is_stable_for_large_logits() -> None:
    # teacher puts all mass on class 0; the student gives it log-probability ~ -1000
    out = kd_kl_loss(t64([[0.0, 1000.0]]), t64([[1000.0, 0.0]]), temperature=1.0)
    assert torch.isfinite(out).all()
    assert out.item() == pytest.approx(1000.0, rel=1e-9)


def test_kd_kl_loss_rejects_bad_shapes_and_temperature() -> None:
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(2, 2\)"):
        kd_kl_loss(torch.zeros(2, 3), torch.zeros(2, 2), 1.0)
    with pytest.raises(ConfigError, match="temperature=0"):
        kd_kl_loss(torch.zeros(2, 2), torch.zeros(2, 2), 0.0)


def test_kd_mse_loss_by_hand() -> None:
    student = t64([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    teacher = t64([[0.0, 2.0, 5.0], [1.0, -1.0, 2.0]])
    expected = [(1 + 0 + 4) / 3, (1 + 1 + 4) / 3]
    assert kd_mse_loss(student, teacher).tolist() == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 3\)"):
        kd_mse_loss(torch.zeros(2, 3), torch.zeros(3, 3))


# --- hidden-state alignment -----------------------------------------------------------------


def test_hidden_mse_loss_worked_2d_example() -> None:
    # one instance, two layer pairs, H = 2
    # layer 0: student (3, 4) -> (0.6, 0.8); teacher (1, 0) -> (1, 0); squared distance 0.16 + 0.64 = 0.8
    # layer 1: student (0, 2) -> (0, 1);     teacher (0, 5) -> (0, 1); squared distance 0
    # mean over the 2 layers = 0.4
    student = t64([[[3.0, 4.0], [0.0, 2.0]]])
    teacher = t64([[[1.0, 0.0], [0.0, 5.0]]])
    out = hidden_mse_loss(student, teacher)
    assert out.shape == (1,)
    assert out.item() == pytest.approx(0.4, rel=1e-12)


def test_hidden_mse_loss_is_per_instance_and_scale_invariant() -> None:
    # instance 1: opposite unit vectors, distance |(1,0) - (-1,0)|^2 = 4 on the single layer pair
    student = t64([[[3.0, 4.0]], [[2.0, 0.0]]])
    teacher = t64([[[30.0, 40.0]], [[-7.0, 0.0]]])
    assert hidden_mse_loss(student, teacher).tolist() == pytest.approx([0.0, 4.0], abs=1e-12)


def test_hidden_mse_loss_zero_vector_is_finite() -> None:
    # an all-zero student vector normalises to 0 (eps-safe), so the loss is |unit teacher|^2 = 1
    student = torch.zeros(1, 1, 2, dtype=torch.float64, requires_grad=True)
    out = hidden_mse_loss(student, t64([[[0.0, 3.0]]]))
    assert out.item() == pytest.approx(1.0)
    out.sum().backward()
    assert torch.isfinite(student.grad).all()


def test_hidden_mse_loss_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(2, 3, 4\).*\(2, 3, 8\)"):
        hidden_mse_loss(torch.zeros(2, 3, 4), torch.zeros(2, 3, 8))
    with pytest.raises(ValueError, match=r"\(2, 4\)"):
        hidden_mse_loss(torch.zeros(2, 4), torch.zeros(2, 4))
