"""The distiller: cache reuse and rebuild, online == cached losses, selection costs, errors, persistence."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification

from kd_backend.config import DistillerConfig
from kd_backend.data import load_task
from kd_backend.distiller import Distiller, Teacher
from kd_backend.errors import ConfigError, ModelError, NonFiniteLossError
from kd_backend.models import build_model
from kd_backend.plan import EpochPlan
from kd_backend.synthetic import SyntheticConfig
from kd_backend.tokenization import train_wordpiece_tokenizer


@pytest.fixture(scope="module")
def task():
    return load_task("synthetic", synthetic=SyntheticConfig(num_train=330, num_dev=90, seed=3))


@pytest.fixture(scope="module")
def tokenizer(task):
    return train_wordpiece_tokenizer(task.train.text_a, vocab_size=400)


@pytest.fixture(scope="module")
def teachers(tokenizer):
    # Untrained teachers are enough for mechanics; the learning test below uses trained ones.
    small = build_model("tiny-1x64", 2, len(tokenizer), seed=11)
    large = build_model("tiny-2x128", 2, len(tokenizer), seed=12)
    return [Teacher("large", large, tokenizer), Teacher("small", small, tokenizer)]  # sorted by the distiller


def make(task, tokenizer, teachers, cache_dir, **overrides) -> Distiller:
    settings = dict(epochs=2, batch_size=16, eval_batch_size=64, cache_dir=str(cache_dir), device="cpu")
    cfg = DistillerConfig(**{**settings, **overrides})

    def factory(seed: int):
        return build_model("tiny-1x64", 2, len(tokenizer), seed=seed)

    return Distiller(task, factory, tokenizer, teachers=teachers, config=cfg)


def rows(task) -> int:
    return len(task.train) + len(task.ctrl) + len(task.dev)


def test_teachers_sorted_smallest_first(task, tokenizer, teachers, tmp_path):
    d = make(task, tokenizer, teachers, tmp_path)
    assert d.teacher_names == ("small", "large")


def test_cache_written_once_then_read(task, tokenizer, teachers, tmp_path):
    d = make(task, tokenizer, teachers, tmp_path)
    assert d.cache_teacher_forwards == 2 * rows(task)  # every split, both teachers, once
    files = sorted((tmp_path / "teachers").glob("*.safetensors"))
    assert len(files) == 6
    plan = EpochPlan(teacher_mode="soft-instance", hidden_weight=1.0, objective="uncertainty")
    for _ in range(2):
        assert d.train_epoch(plan).teacher_forwards == 0
    again = make(task, tokenizer, teachers, tmp_path)  # a second run, same inputs
    assert again.cache_teacher_forwards == 0
    assert again.train_epoch(plan).teacher_forwards == 0


def test_changed_input_gives_new_key(task, tokenizer, teachers, tmp_path):
    make(task, tokenizer, teachers, tmp_path)
    other = make(task, tokenizer, teachers, tmp_path, max_seq_length=16)
    assert other.cache_teacher_forwards == 2 * rows(task)
    assert len(list((tmp_path / "teachers").glob("*.safetensors"))) == 12


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_corrupted_cache_is_rebuilt(task, tokenizer, teachers, tmp_path, damage, caplog):
    make(task, tokenizer, teachers, tmp_path)
    biggest = max((tmp_path / "teachers").glob("*.safetensors"), key=lambda p: p.stat().st_size)
    data = bytearray(biggest.read_bytes())
    if damage == "flip":
        data[-50] ^= 0xFF  # inside the tensor payload: only the checksum notices
    else:
        data = data[: len(data) // 2]
    biggest.write_bytes(bytes(data))
    rebuilt = make(task, tokenizer, teachers, tmp_path)
    assert rebuilt.cache_teacher_forwards == len(task.train)  # that one file only (the train split)
    assert any("rebuilt" in r.message for r in caplog.records)
    assert make(task, tokenizer, teachers, tmp_path).cache_teacher_forwards == 0


def test_online_teachers_give_the_same_losses(task, tokenizer, teachers, tmp_path):
    plan = EpochPlan(
        teacher_mode="hard", fraction=0.5, scope="batch", selection="margin",
        hidden_weight=1.0, objective="uncertainty", temperature=2.0,
    )
    cached = make(task, tokenizer, teachers, tmp_path)
    online = make(task, tokenizer, teachers, tmp_path, teacher_source="online")
    a, b = cached.train_epoch(plan), online.train_epoch(plan)
    assert a.teacher_forwards == 0 and b.teacher_forwards > 0
    # The paper's batch selection: only the top half of each batch reaches a teacher (hard: one each).
    assert b.teacher_forwards == sum(max(1, n // 2) for n in _batch_sizes(len(task.train), 16))
    for key in ("ce", "kd", "hidden", "total"):
        assert a.losses[key] == pytest.approx(b.losses[key], rel=1e-4, abs=1e-6), key


def test_kd_loss_selection_is_the_same_online_and_cached(task, tokenizer, teachers, tmp_path):
    plan = EpochPlan(fraction=0.5, scope="batch", selection="kd-loss", temperature=2.0)  # the teachers' mean
    cached = make(task, tokenizer, teachers, tmp_path)
    online = make(task, tokenizer, teachers, tmp_path, teacher_source="online")
    a, b = cached.train_epoch(plan), online.train_epoch(plan)
    # Ranking by KD loss reads both teachers on the whole batch, then again on the selected half.
    assert b.teacher_forwards == 2 * (len(task.train) + sum(max(1, n // 2) for n in _batch_sizes(len(task.train), 16)))
    for key in ("ce", "kd", "total"):
        assert a.losses[key] == pytest.approx(b.losses[key], rel=1e-4, abs=1e-6), key


def test_stale_kd_loss_selection_keeps_the_largest_kd_losses_at_the_cost_of_r(task, tokenizer, teachers, tmp_path):
    n, k = len(task.train), round(0.3 * len(task.train))
    d = make(task, tokenizer, teachers, tmp_path, epochs=3)
    full = d.train_epoch(EpochPlan())
    # What the next epoch should keep: the KD loss to the large teacher alone, from each instance's
    # logits of its training step (the memory) and the cached teacher logits.
    teacher_logits = d._teacher_out[1]["train"].logits
    expected = torch.nn.functional.kl_div(
        torch.log_softmax(d._memory_logits, -1), torch.log_softmax(teacher_logits, -1), reduction="none", log_target=True
    ).sum(-1)
    top = set(torch.topk(expected, k).indices.tolist())
    entropy_top = set(torch.topk(-(torch.softmax(d._memory_logits, -1) * torch.log_softmax(d._memory_logits, -1)).sum(-1), k).indices.tolist())
    assert top != entropy_top  # the test tells the two rules apart
    plan = EpochPlan(fraction=0.3, scope="epoch", scoring="stale", selection="kd-loss", teacher_weights=(0.0, 1.0))
    stats = d.train_epoch(plan)
    assert set(np.flatnonzero(d._memory_epoch == 1).tolist()) == top  # the trained instances
    assert stats.examples_scored == 0 and stats.examples_trained == k and stats.teacher_forwards == 0
    assert stats.student_flops < 0.45 * full.student_flops
    with pytest.raises(ConfigError, match="'kd-loss' ranks instances by their KD loss"):
        EpochPlan(fraction=0.3, selection="kd-loss", kd_weight=0.0)


def _batch_sizes(n: int, b: int) -> list[int]:
    """Length-grouped batching cuts mega-batches of 50*b, so batches are full except the last."""
    return [min(b, n - i) for i in range(0, n, b)]


def test_epoch_scope_trains_only_the_selected_fraction(task, tokenizer, teachers, tmp_path):
    d = make(task, tokenizer, teachers, tmp_path)
    n = len(task.train)
    s = d.train_epoch(EpochPlan(fraction=0.1, scope="epoch", selection="entropy"))
    assert s.examples_scored == n
    assert s.examples_trained == round(0.1 * n)
    assert s.steps == math.ceil(round(0.1 * n) / 16)
    full = d.train_epoch(EpochPlan())
    assert full.examples_trained == n and full.examples_scored == 0
    # One no-grad scoring pass (a forward: 1/3 of a training step) plus training on 10%.
    assert s.student_flops < 0.5 * full.student_flops


def test_sub_epoch_parts_and_step_budget(task, tokenizer, teachers, tmp_path):
    d = make(task, tokenizer, teachers, tmp_path)
    n = len(task.train)
    first = d.train_epoch(EpochPlan(), part=0, parts=2)
    assert d.epoch == 0 and first.examples_trained == n // 2
    second = d.train_epoch(EpochPlan(), part=1, parts=2)
    assert d.epoch == 1 and first.examples_trained + second.examples_trained == n
    capped = d.train_epoch(EpochPlan(max_steps=3))
    assert capped.steps == 3 and not capped.epoch_finished


def test_lr_scale_multiplies_the_schedule_and_nothing_else(task, tokenizer, teachers, tmp_path):
    base, scaled = make(task, tokenizer, teachers, tmp_path), make(task, tokenizer, teachers, tmp_path)
    a, b = base.train_epoch(EpochPlan()), scaled.train_epoch(EpochPlan(lr_scale=2.5))
    assert b.lr == pytest.approx(2.5 * a.lr) and a.lr > 0  # the same point of the schedule, scaled
    assert (b.steps, b.examples_trained, b.student_flops) == (a.steps, a.examples_trained, a.student_flops)
    assert b.losses != a.losses  # the larger steps changed what the student learned
    assert base.progress == scaled.progress  # the schedule advanced alike
    with pytest.raises(ConfigError, match="lr_scale"):
        EpochPlan(lr_scale=0.0)


def test_applied_weights_are_reported(task, tokenizer, teachers, tmp_path):
    d = make(task, tokenizer, teachers, tmp_path)
    s = d.train_epoch(EpochPlan(teacher_weights=(0.0, 1.0)))
    assert s.teacher_weights == pytest.approx((0.0, 1.0))
    s = d.train_epoch(EpochPlan(teacher_mode="hard", objective="uncertainty-r", hidden_weight=0.5))
    assert sum(s.teacher_weights) == pytest.approx(1.0)
    assert 0.0 < s.kd_instance_weight < 1.0
    assert s.kd_instance_weight + s.hidden_instance_weight == pytest.approx(1.0)


def test_same_seed_same_run(task, tokenizer, teachers, tmp_path):
    plan = EpochPlan(teacher_mode="soft", fraction=0.3, selection="random", scope="batch")
    a = make(task, tokenizer, teachers, tmp_path)
    b = make(task, tokenizer, teachers, tmp_path)
    assert a.train_epoch(plan).losses == b.train_epoch(plan).losses
    b.reset(seed=1)
    assert a.train_epoch(plan).losses != b.train_epoch(plan).losses


def test_checkpoint_resume_continues_exactly(task, tokenizer, teachers, tmp_path):
    plan = EpochPlan(teacher_mode="soft", hidden_weight=1.0, fraction=0.5, scope="epoch")
    a = make(task, tokenizer, teachers, tmp_path)
    a.train_epoch(plan, part=0, parts=2)
    a.save_checkpoint(tmp_path / "ckpt")
    expected = a.train_epoch(plan, part=1, parts=2)
    b = make(task, tokenizer, teachers, tmp_path)
    b.load_checkpoint(tmp_path / "ckpt")
    got = b.train_epoch(plan, part=1, parts=2)
    assert got.losses == expected.losses
    assert b.epoch == a.epoch == 1


def test_export_reload_gives_identical_logits(task, tokenizer, teachers, tmp_path):
    d = make(task, tokenizer, teachers, tmp_path)
    d.train_epoch(EpochPlan())
    out = d.export_student(tmp_path / "student")
    reloaded = AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    batch = d._student_enc["dev"].collate(np.arange(len(task.dev)))
    with torch.no_grad():
        assert torch.equal(d.student.eval()(**batch).logits, reloaded(**batch).logits)
    assert torch.equal(d.predict("dev").argmax(-1), reloaded(**batch).logits.argmax(-1))


def test_nan_loss_names_step_and_terms(task, tokenizer, teachers, tmp_path):
    d = make(task, tokenizer, teachers, tmp_path)
    d._teacher_out[0]["train"].logits[:] = float("nan")
    with pytest.raises(NonFiniteLossError, match=r"step 0 .*'kd': nan"):
        d.train_epoch(EpochPlan(teacher_weights=(1.0, 0.0)))


def test_periodic_finite_check_catches_nan_within_its_window(task, tokenizer, teachers, tmp_path):
    # The CUDA default (a device flag read every N steps) exercised on the CPU.
    d = make(task, tokenizer, teachers, tmp_path, finite_check_every=4)
    d._teacher_out[0]["train"].logits[:] = float("nan")
    with pytest.raises(NonFiniteLossError, match=r"step 3 or one of the 3 steps before it \(checked every 4 steps\)"):
        d.train_epoch(EpochPlan(teacher_weights=(1.0, 0.0)))
    # A chunk shorter than the window is still checked when train_epoch returns.
    d = make(task, tokenizer, teachers, tmp_path, finite_check_every=100)
    d._teacher_out[0]["train"].logits[:] = float("nan")
    with pytest.raises(NonFiniteLossError, match="checked every 100 steps"):
        d.train_epoch(EpochPlan(teacher_weights=(1.0, 0.0), max_steps=2))
    with pytest.raises(ConfigError, match="finite_check_every"):
        DistillerConfig(finite_check_every=0)


def test_teacher_with_fixed_weight_zero_is_never_read(task, tokenizer, teachers, tmp_path):
    d = make(task, tokenizer, teachers, tmp_path)
    d._teacher_out[1]["train"].logits[:] = float("nan")
    stats = d.train_epoch(EpochPlan(teacher_weights=(1.0, 0.0), max_steps=3))
    assert math.isfinite(stats.losses["kd"]) and stats.teacher_weights == (1.0, 0.0)


def test_non_finite_teacher_outputs_are_refused_at_cache_time(task, tokenizer, tmp_path):
    broken = build_model("tiny-1x64", 2, len(tokenizer), seed=5)
    with torch.no_grad():
        broken.classifier.weight.fill_(float("nan"))
    with pytest.raises(ModelError, match=r"caching broken \[train\]: the teacher gave non-finite logits for (\d+) of \1 instances"):
        make(task, tokenizer, [Teacher("broken", broken, tokenizer)], tmp_path)


def test_plan_errors_name_the_field():
    with pytest.raises(ConfigError, match="fraction"):
        EpochPlan(fraction=1.5)
    with pytest.raises(ConfigError, match="kd_weight"):
        EpochPlan(kd_weight=float("nan"))
    with pytest.raises(ConfigError, match="teacher_mode"):
        EpochPlan(teacher_mode="biggest")
    with pytest.raises(ConfigError, match="unknown EpochPlan field"):
        EpochPlan.from_dict({"fractoin": 0.3})
    assert EpochPlan.from_dict(EpochPlan(teacher_weights=(1, 2)).to_dict()) == EpochPlan(teacher_weights=(1.0, 2.0))


def test_bad_inputs_fail_before_training(task, tokenizer, teachers, tmp_path):
    three = build_model("tiny-1x64", 3, len(tokenizer), seed=0)
    with pytest.raises(ModelError, match="3 labels"):
        make(task, tokenizer, [Teacher("three", three, tokenizer)], tmp_path)
    with pytest.raises(ModelError, match="layer"):
        make(task, tokenizer, teachers, tmp_path, layer_map=((1, 5),))
    d = make(task, tokenizer, teachers, tmp_path)
    with pytest.raises(ConfigError, match="2 teachers"):
        d.train_epoch(EpochPlan(teacher_weights=(1.0, 1.0, 1.0)))
    alone = make(task, tokenizer, [], tmp_path)
    with pytest.raises(ModelError, match="no teacher"):
        alone.train_epoch(EpochPlan())
    with pytest.raises(ConfigError, match="split"):
        d.evaluate("test")


def test_regression_rejects_uncertainty_plans(tmp_path):
    task = load_task("synthetic", synthetic=SyntheticConfig(num_train=60, num_dev=20, seed=0))
    spec = dataclasses.replace(task.spec, num_labels=1, is_regression=True, label_names=None, metrics=("pearson", "spearman"))
    labels = {s: task.split(s).labels.astype(np.float32) for s in ("train", "ctrl", "dev")}
    reg = dataclasses.replace(
        task, spec=spec, **{s: dataclasses.replace(task.split(s), labels=labels[s]) for s in labels}
    )
    tok = train_wordpiece_tokenizer(reg.train.text_a, vocab_size=200)
    teacher = Teacher("t", build_model("tiny-1x64", 1, len(tok), is_regression=True, seed=0), tok)
    cfg = DistillerConfig(epochs=1, batch_size=8, cache_dir=str(tmp_path), device="cpu")
    d = Distiller(reg, lambda s: build_model("tiny-1x64", 1, len(tok), is_regression=True, seed=s), tok, [teacher], cfg)
    with pytest.raises(ConfigError, match="regression"):
        d.train_epoch(EpochPlan(objective="uncertainty"))
    stats = d.train_epoch(EpochPlan(fraction=0.5, selection="random", scope="batch"))
    assert stats.losses["kd"] > 0
    ranked = d.train_epoch(EpochPlan(fraction=0.5, selection="kd-loss", scope="epoch"))  # KD loss is MSE here
    n = len(reg.train)
    assert ranked.examples_scored == n and ranked.examples_trained == round(0.5 * n)
    ev = d.evaluate("dev")
    assert set(ev.metrics) == {"pearson", "spearman"} and len(ev.teacher_agreement) == 1


def _public_stats(stats) -> dict:
    d = stats.to_dict()
    d.pop("wall_time")
    return d


def test_snapshot_restore_reproduces_the_run_bit_for_bit(task, tokenizer, teachers, tmp_path):
    plans = [
        EpochPlan(teacher_mode="soft", hidden_weight=1.0, objective="uncertainty"),
        EpochPlan(fraction=0.3, selection="random", scope="epoch", kd_weight=0.5),
        EpochPlan(fraction=0.4, scope="epoch", scoring="stale", hidden_weight=1.0),
    ]
    d = make(task, tokenizer, teachers, tmp_path, epochs=3)
    d.reset(5)
    d.train_epoch(plans[0])
    state = d.snapshot()
    straight = [_public_stats(d.train_epoch(p)) for p in plans[1:]]
    weights = {k: v.clone() for k, v in d.student.state_dict().items()}
    dev = d.evaluate("dev").to_dict()
    for _ in range(2):  # the snapshot is unchanged by training on, so it restores twice
        d.reset(9)
        d.train_epoch(plans[2])  # another run in between
        d.restore(state)
        assert [_public_stats(d.train_epoch(p)) for p in plans[1:]] == straight
        assert all(torch.equal(v, weights[k]) for k, v in d.student.state_dict().items())
        again = d.evaluate("dev").to_dict()
        assert {k: v for k, v in again.items() if k != "wall_time"} == {k: v for k, v in dev.items() if k != "wall_time"}
    assert state.num_bytes > 0
    with pytest.raises(ConfigError, match="RunState"):
        d.restore({"student": {}})


def test_stale_scoring_rescores_only_what_is_stale(task, tokenizer, teachers, tmp_path):
    n = len(task.train)
    d = make(task, tokenizer, teachers, tmp_path, epochs=4, stale_max_age=1)
    stale = EpochPlan(fraction=0.3, scope="epoch", scoring="stale")
    first = d.train_epoch(stale)  # nothing seen yet: everything is scored, as with fresh scoring
    assert first.examples_scored == n
    full = d.train_epoch(EpochPlan())
    second = d.train_epoch(stale)  # every instance was trained on in the previous epoch
    assert second.examples_scored == 0 and second.examples_trained == round(0.3 * n)
    assert second.student_flops < 0.45 * full.student_flops
    third = d.train_epoch(stale)  # the 70% not trained in epoch 2 are 2 epochs old now: rescored
    assert third.examples_scored == n - round(0.3 * n)
    with pytest.raises(ConfigError, match="scoring='stale' needs scope='epoch'"):
        EpochPlan(fraction=0.3, scope="batch", scoring="stale")
