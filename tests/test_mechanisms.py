"""Uncertainty scores, selection and the three mechanisms against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from kd_backend.errors import ConfigError
from kd_backend.losses import hidden_mse_loss, kd_kl_loss
from kd_backend.mechanisms import objective_weights, teacher_weights
from kd_backend.uncertainty import (
    least_confidence,
    margin,
    normalized_entropy,
    num_selected,
    select_most_uncertain,
    uncertainty_scores,
)


def logits_of(*probs: list[float]) -> torch.Tensor:
    """Logits whose softmax is exactly ``probs`` (log-probabilities)."""
    return torch.tensor([[math.log(p) for p in row] for row in probs], dtype=torch.float64)


def assert_rows(weights: torch.Tensor, expected: list[list[float]]) -> None:
    """Compare (B, K) weights with rows written out by hand."""
    torch.testing.assert_close(weights, torch.tensor(expected, dtype=weights.dtype), rtol=0, atol=1e-6)


def entropy(probs: list[float]) -> float:
    return -sum(p * math.log(p) for p in probs) / math.log(len(probs))


# two rows on which the rules disagree:
#   A = (0.49, 0.49, 0.02): margin 0 (very unsure between two classes), low entropy, max p 0.49
#   B = (0.40, 0.30, 0.30): margin 0.1, high entropy, max p 0.40
ROW_A, ROW_B = [0.49, 0.49, 0.02], [0.40, 0.30, 0.30]


# --- uncertainty scores ---------------------------------------------------------------------


def test_normalized_entropy_by_hand() -> None:
    logits = torch.cat([logits_of([0.75, 0.25]), torch.tensor([[0.0, 0.0], [100.0, -100.0]], dtype=torch.float64)])
    expected = [-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)) / math.log(2), 1.0, 0.0]  # ~0.8113, 1, 0
    out = normalized_entropy(logits)
    assert out.shape == (3,)
    assert out.tolist() == pytest.approx(expected, abs=1e-6)
    expected_ab = [entropy(ROW_A), entropy(ROW_B)]  # ~0.7076, ~0.9912
    assert normalized_entropy(logits_of(ROW_A, ROW_B)).tolist() == pytest.approx(expected_ab, abs=1e-6)


def test_normalized_entropy_handles_zero_probability() -> None:
    # p = (1, 0): 0 * log 0 must count as 0, not NaN
    out = normalized_entropy(torch.tensor([[0.0, -math.inf]]))
    assert out.tolist() == [0.0]


def test_margin_and_least_confidence_by_hand() -> None:
    logits = logits_of([0.5, 0.3, 0.2], ROW_A, ROW_B)
    assert margin(logits).tolist() == pytest.approx([0.5 - 0.3, 0.0, 0.40 - 0.30], abs=1e-6)
    assert least_confidence(logits).tolist() == pytest.approx([1 - 0.5, 1 - 0.49, 1 - 0.40], abs=1e-6)


def test_uncertainty_scores_higher_means_more_uncertain() -> None:
    logits = logits_of([0.5, 0.3, 0.2], ROW_A, ROW_B)
    assert uncertainty_scores(logits, "margin").tolist() == pytest.approx([1 - 0.2, 1 - 0.0, 1 - 0.1], abs=1e-6)
    assert uncertainty_scores(logits, "least-confidence").tolist() == pytest.approx([0.5, 0.51, 0.6], abs=1e-6)
    assert uncertainty_scores(logits, "entropy").tolist() == pytest.approx(
        [entropy([0.5, 0.3, 0.2]), entropy(ROW_A), entropy(ROW_B)], abs=1e-6
    )


def test_rules_rank_differently() -> None:
    logits = logits_of(ROW_A, ROW_B)
    # margin says A is the most uncertain; entropy and least confidence say B
    assert select_most_uncertain(uncertainty_scores(logits, "margin"), 0.5).tolist() == [0]
    assert select_most_uncertain(uncertainty_scores(logits, "entropy"), 0.5).tolist() == [1]
    assert select_most_uncertain(uncertainty_scores(logits, "least-confidence"), 0.5).tolist() == [1]


def test_random_scores_are_reproducible_and_uniform() -> None:
    logits = torch.zeros(1000, 1)  # one output column: random also serves regression
    a = uncertainty_scores(logits, "random", torch.Generator().manual_seed(7))
    b = uncertainty_scores(logits, "random", torch.Generator().manual_seed(7))
    c = uncertainty_scores(logits, "random", torch.Generator().manual_seed(8))
    assert a.shape == (1000,)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert 0.0 <= a.min().item() and a.max().item() < 1.0
    assert a.mean().item() == pytest.approx(0.5, abs=0.05)


def test_scores_need_class_probabilities() -> None:
    for fn in (normalized_entropy, margin, least_confidence):
        with pytest.raises(ConfigError, match="selection='random'.*teacher_mode='fixed'.*objective='static'"):
            fn(torch.zeros(4, 1))
    with pytest.raises(ConfigError, match="uncertainty needs class probabilities"):
        uncertainty_scores(torch.zeros(4, 1), "entropy")


def test_unknown_rule_lists_the_rules() -> None:
    with pytest.raises(ConfigError, match="'entropy'.*'margin'.*'least-confidence'.*'random'"):
        uncertainty_scores(torch.zeros(2, 2), "variance")


# --- selection ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "fraction", "rounding", "k"),
    [
        (10, 0.3, "floor", 3),
        (10, 0.25, "floor", 2),  # floor(2.5)
        (10, 0.25, "round", 3),  # half up
        (10, 0.24, "round", 2),
        (3, 0.1, "floor", 1),  # floor(0.3) = 0 -> at least one
        (1, 0.1, "round", 1),
        (100, 0.29, "floor", 29),  # 100 * 0.29 == 28.999999999999996 in floats
        (7, 1.0, "floor", 7),
    ],
)
def test_num_selected(n: int, fraction: float, rounding: str, k: int) -> None:
    assert num_selected(n, fraction, rounding) == k


def test_select_most_uncertain_orders_by_descending_score() -> None:
    scores = torch.tensor([0.1, 0.9, 0.5, 0.7, 0.3])
    assert select_most_uncertain(scores, 0.6).tolist() == [1, 3, 2]  # floor(3.0)
    assert select_most_uncertain(scores, 0.5).tolist() == [1, 3]  # floor(2.5)
    assert select_most_uncertain(scores, 0.5, rounding="round").tolist() == [1, 3, 2]
    assert select_most_uncertain(scores, 0.1).tolist() == [1]  # floor(0.5) = 0 -> 1, never empty
    assert select_most_uncertain(scores, 1.0).tolist() == [1, 3, 2, 4, 0]


def test_select_most_uncertain_breaks_ties_by_lower_index() -> None:
    scores = torch.tensor([0.5, 0.9, 0.5, 0.5, 0.1, 0.5])
    assert select_most_uncertain(scores, 0.5).tolist() == [1, 0, 2]
    assert select_most_uncertain(torch.full((8,), 0.25), 0.5).tolist() == [0, 1, 2, 3]
    # large enough that an unstable sort scrambles equal scores: 3000 scores cycling 0, 1, 2
    cycling = torch.arange(3000) % 3
    assert select_most_uncertain(cycling.float(), 1 / 3).tolist() == list(range(2, 3000, 3))
    # a tie across the small/large boundary: the lower indices go to the small teacher
    hard = teacher_weights("hard", torch.full((3000,), 0.5), 2)
    assert hard[:, 0].tolist() == [1.0] * 1500 + [0.0] * 1500


def test_selection_rejects_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="fraction=0"):
        select_most_uncertain(torch.rand(4), 0.0)
    with pytest.raises(ConfigError, match="fraction=1.5"):
        select_most_uncertain(torch.rand(4), 1.5)
    with pytest.raises(ConfigError, match="rounding='ceil'"):
        select_most_uncertain(torch.rand(4), 0.5, rounding="ceil")
    with pytest.raises(ValueError, match="n=0"):
        select_most_uncertain(torch.zeros(0), 0.5)
    with pytest.raises(ValueError, match=r"\(2, 2\)"):
        select_most_uncertain(torch.zeros(2, 2), 0.5)


# --- teacher adoption -----------------------------------------------------------------------

SMALL, LARGE = [1.0, 0.0], [0.0, 1.0]


def test_hard_two_teachers_even_batch() -> None:
    u = torch.tensor([0.2, 0.9, 0.5, 0.7])  # descending: 1, 3 | 2, 0
    w = teacher_weights("hard", u, 2)
    assert w.tolist() == [LARGE, SMALL, LARGE, SMALL]


def test_hard_two_teachers_odd_batch() -> None:
    u = torch.tensor([0.3, 0.1, 0.8, 0.6, 0.4])  # descending: 2, 3 | 4, 0, 1 -- floor(5/2) = 2 get the small one
    w = teacher_weights("hard", u, 2)
    assert w.tolist() == [LARGE, LARGE, SMALL, SMALL, LARGE]
    assert teacher_weights("hard", torch.tensor([0.9]), 2).tolist() == [LARGE]  # floor(1/2) = 0


def test_hard_ties_keep_lower_index_in_the_uncertain_group() -> None:
    w = teacher_weights("hard", torch.full((4,), 0.5), 2)
    assert w.tolist() == [SMALL, SMALL, LARGE, LARGE]


def test_hard_three_teachers() -> None:
    # B = 7, K = 3: boundaries floor(0) = 0, floor(7/3) = 2, floor(14/3) = 4, 7 -> groups of 2, 2, 3
    u = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])  # descending: 6, 5 | 4, 3 | 2, 1, 0
    w = teacher_weights("hard", u, 3)
    assert w.argmax(dim=1).tolist() == [2, 2, 2, 1, 1, 0, 0]
    assert w.sum(dim=1).tolist() == [1.0] * 7
    assert w.max(dim=1).values.tolist() == [1.0] * 7  # one-hot


def test_soft_two_teachers() -> None:
    u = torch.tensor([0.2, 0.6])  # u_bar = 0.4: small 0.4, large 0.6 for every instance
    assert_rows(teacher_weights("soft", u, 2), [[0.4, 0.6], [0.4, 0.6]])


@pytest.mark.parametrize(
    ("u", "row"),
    [
        ([0.25, 0.25], [0.0, 0.5, 0.5]),  # s = 0.75 * 2 = 1.5
        ([0.8, 1.0], [0.8, 0.2, 0.0]),  # u_bar 0.9, s = 0.2
        ([1.0, 1.0], [1.0, 0.0, 0.0]),  # maximally uncertain: smallest teacher
        ([0.0, 0.0], [0.0, 0.0, 1.0]),  # fully confident: largest teacher
        ([0.4, 0.6], [0.0, 1.0, 0.0]),  # s = 1: the middle teacher
    ],
)
def test_soft_three_teachers(u: list[float], row: list[float]) -> None:
    assert_rows(teacher_weights("soft", torch.tensor(u), 3), [row, row])


def test_soft_instance_two_and_three_teachers() -> None:
    u = torch.tensor([0.2, 0.6])
    assert_rows(teacher_weights("soft-instance", u, 2), [[0.2, 0.8], [0.6, 0.4]])
    u = torch.tensor([1.0, 0.5, 0.0, 0.8])  # s = (1 - u) * 2 = 0, 1, 2, 0.4
    expected = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.6, 0.4, 0.0]]
    assert_rows(teacher_weights("soft-instance", u, 3), expected)


def test_fixed_weights_are_normalised() -> None:
    assert teacher_weights("fixed", None, 2, fixed=(1.0, 3.0), batch_size=2).tolist() == [[0.25, 0.75]] * 2
    assert_rows(teacher_weights("fixed", None, 3, batch_size=1), [[1 / 3] * 3])
    assert teacher_weights("fixed", torch.rand(5), 2, fixed=(2.0, 0.0)).tolist() == [SMALL] * 5


def test_fixed_weights_reject_wrong_length_and_bad_values() -> None:
    with pytest.raises(ConfigError, match="has 2 weights but there are 3 teachers"):
        teacher_weights("fixed", None, 3, fixed=(0.5, 0.5), batch_size=2)
    with pytest.raises(ConfigError, match="positive sum"):
        teacher_weights("fixed", None, 2, fixed=(0.0, 0.0), batch_size=2)
    with pytest.raises(ValueError, match="pass uncertainty or batch_size"):
        teacher_weights("fixed", None, 2)


def test_weights_without_uncertainty_go_to_the_requested_device() -> None:
    # the meta device stands in for an accelerator: the weights must not silently stay on the CPU
    assert teacher_weights("fixed", None, 2, batch_size=3, device="meta").device.type == "meta"
    assert teacher_weights("fixed", None, 2, batch_size=3).device.type == "cpu"
    assert all(w.device.type == "meta" for w in objective_weights("static", None, 3, device="meta"))


@pytest.mark.parametrize("mode", ["fixed", "hard", "soft", "soft-instance"])
def test_one_teacher_gets_all_weight(mode: str) -> None:
    assert teacher_weights(mode, torch.tensor([0.1, 0.7, 0.4]), 1).tolist() == [[1.0]] * 3


@pytest.mark.parametrize("mode", ["fixed", "hard", "soft", "soft-instance"])
@pytest.mark.parametrize("k", [2, 3, 4, 5])
def test_rows_sum_to_one(mode: str, k: int) -> None:
    u = torch.rand(13, generator=torch.Generator().manual_seed(k))
    w = teacher_weights(mode, u, k)
    assert w.shape == (13, k)
    assert (w >= 0).all()
    assert w.sum(dim=1).tolist() == pytest.approx([1.0] * 13, abs=1e-6)


def test_teacher_weights_reject_bad_input() -> None:
    with pytest.raises(ConfigError, match="'fixed', 'hard', 'soft', 'soft-instance'"):
        teacher_weights("mixed", torch.rand(3), 2)
    with pytest.raises(ConfigError, match="teacher_mode='hard' needs the student's uncertainty"):
        teacher_weights("hard", None, 2)
    with pytest.raises(ValueError, match="must lie in \\[0, 1\\]"):
        teacher_weights("soft", torch.tensor([0.5, 1.5]), 2)
    with pytest.raises(ValueError, match="must lie in \\[0, 1\\]"):
        teacher_weights("soft-instance", torch.tensor([0.5, math.nan]), 2)
    with pytest.raises(ConfigError, match="num_teachers=0"):
        teacher_weights("fixed", None, 0, batch_size=2)


# --- objective weighting --------------------------------------------------------------------


def test_objective_weights_all_modes() -> None:
    u = torch.tensor([0.0, 0.25, 1.0])
    kd, hid = objective_weights("static", None, 3)
    assert kd.tolist() == [1.0, 1.0, 1.0] and hid.tolist() == [1.0, 1.0, 1.0]
    kd, hid = objective_weights("uncertainty", u, 3)
    assert kd.tolist() == [1.0, 0.75, 0.0] and hid.tolist() == [0.0, 0.25, 1.0]
    kd, hid = objective_weights("uncertainty-r", u, 3)
    assert kd.tolist() == [0.0, 0.25, 1.0] and hid.tolist() == [1.0, 0.75, 0.0]


def test_objective_weights_reject_bad_input() -> None:
    with pytest.raises(ConfigError, match="'static', 'uncertainty', 'uncertainty-r'"):
        objective_weights("dynamic", None, 3)
    with pytest.raises(ConfigError, match="objective='uncertainty' needs"):
        objective_weights("uncertainty", None, 3)
    with pytest.raises(ValueError, match="3 values but batch_size=4"):
        objective_weights("uncertainty-r", torch.rand(3), 4)


# --- no gradient through any weight ---------------------------------------------------------


def _student_and_teachers() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    student = torch.randn(6, 3, generator=g, dtype=torch.float64).requires_grad_(True)
    small = torch.randn(6, 3, generator=g, dtype=torch.float64)
    large = torch.randn(6, 3, generator=g, dtype=torch.float64)
    return student, small, large


@pytest.mark.parametrize("rule", ["entropy", "margin", "least-confidence", "random"])
def test_scores_and_weights_carry_no_gradient(rule: str) -> None:
    student, _, _ = _student_and_teachers()
    u = uncertainty_scores(student, rule, torch.Generator().manual_seed(0))
    assert u.requires_grad is False
    for fn in (normalized_entropy, margin, least_confidence):
        assert fn(student).requires_grad is False
    for mode in ("fixed", "hard", "soft", "soft-instance"):
        assert teacher_weights(mode, u, 2).requires_grad is False
    for mode in ("static", "uncertainty", "uncertainty-r"):
        assert all(w.requires_grad is False for w in objective_weights(mode, u, 6))
    # still detached when handed a tensor that carries gradient
    leaky = torch.full((6,), 0.5, requires_grad=True)
    assert teacher_weights("soft-instance", leaky, 3).requires_grad is False
    assert all(w.requires_grad is False for w in objective_weights("uncertainty", leaky, 6))


@pytest.mark.parametrize("mode", ["hard", "soft", "soft-instance"])
def test_teacher_weighted_kd_gradient_is_weighted_sum_of_unweighted_gradients(mode: str) -> None:
    student, small, large = _student_and_teachers()
    w = teacher_weights(mode, normalized_entropy(student), 2).double()
    kd = w[:, 0] * kd_kl_loss(student, small, 1.0) + w[:, 1] * kd_kl_loss(student, large, 1.0)
    (grad,) = torch.autograd.grad(kd.mean(), student)
    # each instance's KD depends only on its own row, so the per-row gradients of the summed
    # unweighted losses are the per-instance gradients
    (g_small,) = torch.autograd.grad(kd_kl_loss(student, small, 1.0).sum(), student)
    (g_large,) = torch.autograd.grad(kd_kl_loss(student, large, 1.0).sum(), student)
    expected = (w[:, :1] * g_small + w[:, 1:] * g_large) / 6
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-12)


def test_objective_weighted_gradient_is_constant_times_unweighted_gradient() -> None:
    student, teacher, _ = _student_and_teachers()
    g = torch.Generator().manual_seed(1)
    s_hidden = torch.randn(6, 2, 4, generator=g, dtype=torch.float64).requires_grad_(True)
    t_hidden = torch.randn(6, 2, 4, generator=g, dtype=torch.float64)
    u = normalized_entropy(student).double()
    w_kd, w_hid = objective_weights("uncertainty", u, 6)
    loss = (w_kd * kd_kl_loss(student, teacher, 1.0)).mean() + (w_hid * hidden_mse_loss(s_hidden, t_hidden)).mean()
    grad_z, grad_h = torch.autograd.grad(loss, (student, s_hidden))

    (g_kd,) = torch.autograd.grad(kd_kl_loss(student, teacher, 1.0).sum(), student)
    (g_hid,) = torch.autograd.grad(hidden_mse_loss(s_hidden, t_hidden).sum(), s_hidden)
    torch.testing.assert_close(grad_z, w_kd[:, None] * g_kd / 6, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad_h, w_hid[:, None, None] * g_hid / 6, rtol=1e-12, atol=1e-12)

    # the check has teeth: a weight that keeps its graph (the original code's bug) changes the gradient
    probs = torch.softmax(student, dim=-1)
    leaky_u = -(probs * probs.log()).sum(dim=-1) / math.log(3)
    leaky = ((1 - leaky_u) * kd_kl_loss(student, teacher, 1.0)).mean()
    (grad_leaky,) = torch.autograd.grad(leaky, student)
    assert not torch.allclose(grad_leaky, w_kd[:, None] * g_kd / 6, rtol=1e-6, atol=1e-9)
