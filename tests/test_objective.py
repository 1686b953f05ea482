"""The KD objective (kd_backend.objective) against hand-computed values, and the teacher sources.

Hand values: a student at uniform logits against a teacher whose ``softmax(t/T)`` is (3/4, 1/4)
has ``KL = 3/4 ln(3/2) + 1/4 ln(1/2)``; unit vectors give a normalised squared distance of 0
(same), 2 (orthogonal) or 4 (opposite).
"""

from __future__ import annotations

import math

import pytest
import torch

import kd_backend.distiller as distiller_module
from kd_backend.config import DistillerConfig
from kd_backend.data import load_task
from kd_backend.distiller import Distiller, Teacher
from kd_backend.models import build_model
from kd_backend.objective import (
    TeacherBatch,
    aligned_student_hidden,
    combine_terms,
    kd_objective,
    selection_denominator,
    teacher_kd_terms,
)
from kd_backend.plan import EpochPlan
from kd_backend.synthetic import SyntheticConfig
from kd_backend.teacher_source import CachedTeachers, OnlineTeachers
from kd_backend.tokenization import train_wordpiece_tokenizer

LN3 = math.log(3.0)
KL_SHARP_VS_UNIFORM = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)  # KL((3/4, 1/4) || (1/2, 1/2))
KL_UNIFORM_VS_SHARP = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)  # KL((1/2, 1/2) || (3/4, 1/4))


def _ones(n: int) -> torch.Tensor:
    return torch.ones(n)


def _kl_setup(temperature: float):
    """S = 2, K = 2: teacher 0 is sharp ((3/4, 1/4) at T), teacher 1 uniform."""
    sharp = [temperature * LN3, 0.0]  # t / T = (ln 3, 0)
    student = torch.tensor([[0.0, 0.0], sharp])
    t0 = torch.tensor([sharp, sharp])
    t1 = torch.zeros(2, 2)
    w = torch.tensor([[0.5, 0.5], [0.25, 0.75]])
    return student, [TeacherBatch(t0, None, w[:, 0]), TeacherBatch(t1, None, w[:, 1])]


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_kl_term_with_temperature_teacher_weights_and_instance_weights(temperature):
    student, targets = _kl_setup(temperature)
    kd_w = torch.tensor([1.0, 0.5])
    kd, hid = kd_objective(student, targets, kd_w, _ones(2), batch_size=2, temperature=temperature)
    # instance 0: 0.5 * KL(sharp || uniform) + 0.5 * 0; instance 1: 0.25 * 0 + 0.75 * KL(uniform || sharp)
    t2 = temperature**2
    per_instance = [0.5 * t2 * KL_SHARP_VS_UNIFORM, 0.75 * t2 * KL_UNIFORM_VS_SHARP]
    assert float(kd) == pytest.approx((1.0 * per_instance[0] + 0.5 * per_instance[1]) / 2, rel=1e-6)
    assert float(hid) == 0.0  # no student hidden states: the hidden term stays 0


def test_per_instance_kd_terms_are_what_kd_objective_averages():
    student, targets = _kl_setup(1.0)
    # instance 0: 0.5 * KL(sharp || uniform); instance 1: 0.75 * KL(uniform || sharp)
    terms = teacher_kd_terms(student, targets)
    assert terms.tolist() == pytest.approx([0.5 * KL_SHARP_VS_UNIFORM, 0.75 * KL_UNIFORM_VS_SHARP], rel=1e-6)
    kd, _ = kd_objective(student, targets, _ones(2), _ones(2), batch_size=2)
    assert float(kd) == pytest.approx(float(terms.mean()), rel=1e-6)
    # an online source's rows are added where they belong; an unread teacher adds nothing
    online = TeacherBatch(targets[1].logits[1:], None, targets[1].weight[1:], rows=torch.tensor([1]))
    assert teacher_kd_terms(student, [targets[0], None]).tolist() == pytest.approx([0.5 * KL_SHARP_VS_UNIFORM, 0.0])
    assert teacher_kd_terms(student, [None, online]).tolist() == pytest.approx([0.0, 0.75 * KL_UNIFORM_VS_SHARP])
    assert teacher_kd_terms(student, [targets[0]], kd_loss="mse").tolist() == pytest.approx(
        [0.5 * LN3**2 / 2, 0.0]  # mse of (0, 0) vs (ln 3, 0), weight 0.5; the second student equals t0
    )


def test_mse_term():
    student = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    a = TeacherBatch(torch.tensor([[0.0, 0.0], [1.0, 1.0]]), None, torch.tensor([1.0, 0.5]))  # mse (2.5, 1)
    b = TeacherBatch(torch.tensor([[1.0, 2.0], [3.0, 3.0]]), None, torch.tensor([0.0, 0.5]))  # mse (0, 9)
    kd, _ = kd_objective(student, [a, b], _ones(2), _ones(2), batch_size=2, kd_loss="mse")
    assert float(kd) == pytest.approx((2.5 + (0.5 * 1 + 0.5 * 9)) / 2)
    # temperature does not enter the MSE loss
    again, _ = kd_objective(student, [a, b], _ones(2), _ones(2), batch_size=2, kd_loss="mse", temperature=3.0)
    assert torch.equal(kd, again)


def _hidden_setup():
    """S = 2, two aligned student layers of width 2; teacher 0 (width 2) pairs with layer 1 only,
    teacher 1 (width 3) with both, through a zero-padding projection."""
    student_hidden = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [1.0, 0.0]]])
    g0 = torch.tensor([[[0.0, 1.0]], [[0.0, 1.0]]])  # (S, 1, 2): same (0), orthogonal (2)
    g1 = torch.tensor([  # (S, 2, 3) against the projected (1,0,0),(0,1,0) and (1,0,0),(1,0,0)
        [[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]],  # orthogonal (2), same (0): mean 1
        [[-1.0, 0.0, 0.0], [5.0, 0.0, 0.0]],  # opposite (4), same (0, the scale is normalised away): mean 2
    ])
    w = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    logits = torch.zeros(2, 2)
    targets = [TeacherBatch(logits, g0.half(), w[:, 0]), TeacherBatch(logits, g1.half(), w[:, 1])]

    def pad(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, torch.zeros(len(x), 1)], dim=1)

    layers = [[1], [0, 1]]
    projections = [None, [pad, pad]]
    return student_hidden, targets, layers, projections


def test_hidden_term_through_layer_pairs_and_projections():
    student_hidden, targets, layers, projections = _hidden_setup()
    kd, hid = kd_objective(
        torch.zeros(2, 2), targets, _ones(2), torch.tensor([1.0, 0.5]), batch_size=2,
        student_hidden=student_hidden, hidden_layers=layers, projections=projections,
    )
    # hid_i = (0.5 * 0 + 0.5 * 1, 1 * 2 + 0 * 2) = (0.5, 2); instance weights (1, 0.5)
    assert float(hid) == pytest.approx((0.5 + 0.5 * 2) / 2)
    assert float(kd) == 0.0  # student and teachers share the logits
    assert aligned_student_hidden(student_hidden, [0, 1], [projections[1][0]] * 2).shape == (2, 2, 3)


def test_selection_norm_batch_divides_by_the_whole_batch():
    student, targets = _kl_setup(1.0)
    selected, _ = kd_objective(student, targets, _ones(2), _ones(2), batch_size=8, selection_norm="selected")
    batch, _ = kd_objective(student, targets, _ones(2), _ones(2), batch_size=8, selection_norm="batch")
    assert float(batch) == pytest.approx(float(selected) * 2 / 8)
    assert selection_denominator("batch", 8, 2) == 8 and selection_denominator("selected", 8, 2) == 2


def test_with_kd_false_leaves_the_kd_term_at_zero():
    student, targets = _kl_setup(1.0)
    kd, _ = kd_objective(student, targets, _ones(2), _ones(2), batch_size=2, with_kd=False)
    assert float(kd) == 0.0


def test_a_teacher_not_read_equals_a_teacher_of_weight_zero():
    student, (t0, t1) = _kl_setup(1.0)
    nan_teacher = TeacherBatch(torch.full((2, 2), float("nan")), None, torch.ones(2))
    skipped, _ = kd_objective(student, [t0, None], _ones(2), _ones(2), batch_size=2)
    zero, _ = kd_objective(student, [t0, TeacherBatch(t1.logits, None, torch.zeros(2))], _ones(2), _ones(2), batch_size=2)
    assert torch.equal(skipped, zero)
    assert float(skipped) == pytest.approx(0.5 * KL_SHARP_VS_UNIFORM / 2)
    # a teacher that is not read cannot poison the loss, whatever its outputs
    assert torch.isnan(kd_objective(student, [t0, nan_teacher], _ones(2), _ones(2), batch_size=2)[0])


def test_online_rows_give_exactly_the_cached_result():
    """Teacher k read on its adopted rows only (index_add) == every row with weight 0 elsewhere."""
    student_hidden, targets, layers, projections = _hidden_setup()
    student = torch.tensor([[0.3, -0.2], [1.5, 0.1]])
    hard = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # hard adoption: one teacher per instance
    cached = [TeacherBatch(t.logits + k, t.hidden, hard[:, k]) for k, t in enumerate(targets)]
    online = [
        TeacherBatch(c.logits[[k]], c.hidden[[k]], hard[[k], k], rows=torch.tensor([k])) for k, c in enumerate(cached)
    ]
    kw = {"batch_size": 3, "temperature": 2.0, "student_hidden": student_hidden, "hidden_layers": layers, "projections": projections}
    a = kd_objective(student, cached, _ones(2), _ones(2), **kw)
    b = kd_objective(student, online, _ones(2), _ones(2), **kw)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_gradient_reaches_the_student_and_projections_not_the_teachers():
    student = torch.tensor([[0.2, -0.1], [0.0, 0.4]], requires_grad=True)
    hidden = torch.randn(2, 1, 2, generator=torch.Generator().manual_seed(0), requires_grad=True)
    teacher = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    g = torch.randn(2, 1, 3, generator=torch.Generator().manual_seed(1), requires_grad=True)
    proj = torch.nn.Linear(2, 3)
    target = TeacherBatch(teacher, g, torch.ones(2))
    kd, hid = kd_objective(
        student, [target], _ones(2), _ones(2), batch_size=2, student_hidden=hidden, hidden_layers=[[0]],
        projections=[[proj]],
    )
    (kd + hid).backward()
    assert student.grad is not None and hidden.grad is not None and proj.weight.grad is not None
    assert teacher.grad is None and g.grad is None


def test_shapes_are_checked():
    student, targets = _kl_setup(1.0)
    with pytest.raises(ValueError, match=r"must be \(S, C\)"):
        kd_objective(student[0], targets, _ones(2), _ones(2), batch_size=2)
    with pytest.raises(ValueError, match="kd_instance_weights shape"):
        kd_objective(student, targets, _ones(3), _ones(2), batch_size=2)
    with pytest.raises(ValueError, match="hidden_instance_weights shape"):
        kd_objective(student, targets, _ones(2), torch.ones(2, 1), batch_size=2)
    with pytest.raises(ValueError, match="teacher shape"):
        kd_objective(student, [TeacherBatch(torch.zeros(2, 3), None, _ones(2))], _ones(2), _ones(2), batch_size=2)
    with pytest.raises(ValueError, match="kd_loss"):
        kd_objective(student, targets, _ones(2), _ones(2), batch_size=2, kd_loss="l1")
    with pytest.raises(ValueError, match="selection_norm"):
        kd_objective(student, targets, _ones(2), _ones(2), batch_size=2, selection_norm="mean")
    student_hidden, h_targets, layers, projections = _hidden_setup()
    with pytest.raises(ValueError, match="student_hidden shape"):
        kd_objective(student, h_targets, _ones(2), _ones(2), batch_size=2, student_hidden=student_hidden[0])
    with pytest.raises(ValueError, match="hidden_layers"):
        kd_objective(student, h_targets, _ones(2), _ones(2), batch_size=2, student_hidden=student_hidden)
    with pytest.raises(ValueError, match="no hidden targets"):
        kd_objective(student, targets, _ones(2), _ones(2), batch_size=2, student_hidden=student_hidden,
                     hidden_layers=layers, projections=projections)
    with pytest.raises(ValueError, match="projections for"):
        aligned_student_hidden(student_hidden, [0, 1], projections[1][:1])
    kd, hid = kd_objective(student, targets, _ones(2), _ones(2), batch_size=2)
    assert kd.shape == () and hid.shape == ()


def test_combine_terms_logs_each_term_unweighted_and_weighted():
    ce, kd, hid = torch.tensor(1.0, requires_grad=True), torch.tensor(2.0), torch.tensor(3.0)
    total, terms = combine_terms(ce, kd, hid, ce_weight=0.5, kd_weight=2.0, hidden_weight=0.0)
    assert float(total.detach()) == 0.5 * 1 + 2 * 2 + 0 * 3 and total.requires_grad
    expected = {"ce": 1.0, "kd": 2.0, "hidden": 3.0, "ce_w": 0.5, "kd_w": 4.0, "hidden_w": 0.0, "total": 4.5}
    assert {k: float(v) for k, v in terms.items()} == expected
    assert not any(v.requires_grad for v in terms.values())


# ---------------------------------------------------------------- with a distiller

@pytest.fixture(scope="module")
def setup():
    task = load_task("synthetic", synthetic=SyntheticConfig(num_train=120, num_dev=40, seed=5))
    tokenizer = train_wordpiece_tokenizer(task.train.text_a, vocab_size=300)
    teachers = [
        Teacher("small", build_model("tiny-1x64", 2, len(tokenizer), seed=21), tokenizer),
        Teacher("large", build_model("tiny-2x128", 2, len(tokenizer), seed=22), tokenizer),  # wider: projected
    ]
    return task, tokenizer, teachers


def _distiller(setup, cache_dir, **overrides) -> Distiller:
    task, tokenizer, teachers = setup
    settings = {"epochs": 1, "batch_size": 16, "eval_batch_size": 64, "cache_dir": str(cache_dir), "device": "cpu"}
    cfg = DistillerConfig(**{**settings, **overrides})
    return Distiller(task, lambda seed: build_model("tiny-1x64", 2, len(tokenizer), seed=seed), tokenizer, teachers, cfg)


def test_distiller_reports_the_objective_it_computes(setup, tmp_path, monkeypatch):
    """One step: the reported KD / hidden losses are the pure function's, and they match a plain
    re-computation (softmax by hand) from the cache's own rows."""
    d = _distiller(setup, tmp_path)
    calls, reads = [], []
    real_objective, real_batch = distiller_module.kd_objective, d._teacher_source.batch

    def spy_objective(*args, **kwargs):
        out = real_objective(*args, **kwargs)
        calls.append((args, kwargs, out))
        return out

    def spy_batch(k, ids, weight, use_hidden):
        reads.append((k, ids.clone(), weight.clone()))
        return real_batch(k, ids, weight, use_hidden)

    monkeypatch.setattr(distiller_module, "kd_objective", spy_objective)
    monkeypatch.setattr(d._teacher_source, "batch", spy_batch)
    plan = EpochPlan(
        teacher_mode="soft-instance", objective="uncertainty", hidden_weight=1.0, temperature=2.0,
        fraction=0.5, scope="batch", selection_norm="batch", max_steps=1,
    )
    stats = d.train_epoch(plan)
    (args, kwargs, (kd, hid)), = calls
    assert stats.losses["kd"] == float(kd.detach()) and stats.losses["hidden"] == float(hid.detach())
    z, targets, kd_w, _ = args
    assert kwargs["batch_size"] == 16 and len(z) == 8  # half of the batch selected, normalised by all of it
    assert [k for k, *_ in reads] == [0, 1]
    expected = torch.zeros(len(z))
    for (k, ids, weight), target in zip(reads, targets):
        assert target.rows is None and torch.equal(target.weight, weight)  # the cache reads every row
        t = d._teacher_out[k]["train"].logits[ids]
        assert torch.equal(target.logits, t)
        p = torch.softmax(t / 2.0, dim=-1)
        kl = (p * (p.log() - torch.log_softmax(z.detach() / 2.0, dim=-1))).sum(-1) * 4.0
        expected += weight * kl
    assert float(kd.detach()) == pytest.approx(float((kd_w * expected).sum() / 16), rel=1e-5)
    assert stats.losses["total"] == pytest.approx(stats.losses["ce"] + float(kd.detach()) + float(hid.detach()), rel=1e-6)


def test_cached_and_online_sources_give_the_same_targets(setup, tmp_path):
    cached = _distiller(setup, tmp_path)._teacher_source
    online = _distiller(setup, tmp_path, teacher_source="online")._teacher_source
    assert isinstance(cached, CachedTeachers) and isinstance(online, OnlineTeachers)
    ids = torch.tensor([3, 0, 17, 42, 5])
    weight = torch.tensor([0.0, 0.7, 1.0, 0.0, 0.2])
    for k in range(2):
        a, b = cached.batch(k, ids, weight, True), online.batch(k, ids, weight, True)
        assert a.rows is None and len(a.logits) == 5 and a.forwards == 0 and a.flops == 0.0
        assert b.rows.tolist() == [1, 2, 4] and b.forwards == 3 and b.flops > 0
        assert torch.equal(b.weight, weight[[1, 2, 4]])
        torch.testing.assert_close(b.logits, a.logits[b.rows], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(b.hidden.float(), a.hidden[b.rows].float(), rtol=2e-3, atol=2e-3)
        assert a.hidden.dtype == b.hidden.dtype == torch.float16
        z = torch.randn(5, 2, generator=torch.Generator().manual_seed(k))
        kd_a, _ = kd_objective(z, [a], _ones(5), _ones(5), batch_size=5)
        kd_b, _ = kd_objective(z, [b], _ones(5), _ones(5), batch_size=5)
        assert float(kd_a) == pytest.approx(float(kd_b), rel=1e-4)
    assert online.batch(0, ids, torch.zeros(5), False) is None  # no adopted row: the teacher is not run
    assert cached.batch(0, ids, torch.zeros(5), False).hidden is None


def test_online_and_cached_runs_match_step_for_step(setup, tmp_path):
    """Same seed and plan: the same selection, weights and (to float tolerance) losses, online or cached."""
    plan = EpochPlan(teacher_mode="hard", fraction=0.5, scope="batch", hidden_weight=1.0, selection_norm="batch")
    a = _distiller(setup, tmp_path).train_epoch(plan)
    b = _distiller(setup, tmp_path, teacher_source="online").train_epoch(plan)
    assert a.teacher_forwards == 0 and a.teacher_flops == 0.0
    assert 0 < b.teacher_forwards < a.examples_trained and b.teacher_flops > 0  # only the selected rows
    assert a.teacher_weights == pytest.approx(b.teacher_weights)
    for key in ("ce", "kd", "hidden", "total"):
        assert a.losses[key] == pytest.approx(b.losses[key], rel=1e-4, abs=1e-6), key
