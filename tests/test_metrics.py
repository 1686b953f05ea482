"""Metrics against values computed by hand."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from kd_backend.errors import ConfigError
from kd_backend.metrics import (
    compute_metrics,
    constant_score,
    main_score,
    predicted_classes,
)
from kd_backend.tasks import TaskSpec, get_task_spec

# gold 1 0 1 1 0 1, predicted 1 0 0 1 1 1  ->  TP=3 FP=1 FN=1 TN=1
GOLD = np.array([1, 0, 1, 1, 0, 1])
LOGITS = np.array([[0.1, 0.9], [2.0, -1.0], [0.7, 0.3], [-3.0, 3.0], [0.0, 0.5], [0.2, 0.4]])


def test_accuracy_and_f1_by_hand() -> None:
    metrics = compute_metrics(get_task_spec("mrpc"), LOGITS, GOLD)
    assert list(metrics) == ["f1", "accuracy"]
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    assert metrics["f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))  # 2TP / (2TP + FP + FN)
    assert main_score(get_task_spec("mrpc"), metrics) == pytest.approx((4 / 6 + 0.75) / 2)


def test_matthews_by_hand() -> None:
    tp, tn, fp, fn = 3, 1, 1, 1
    expected = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    metrics = compute_metrics(get_task_spec("cola"), LOGITS, GOLD)
    assert metrics == {"matthews": pytest.approx(expected)}


def test_class_ids_are_accepted_as_predictions() -> None:
    ids = np.array([1, 0, 0, 1, 1, 1])
    assert np.array_equal(predicted_classes(get_task_spec("sst2"), ids), ids)
    assert compute_metrics(get_task_spec("sst2"), ids, GOLD)["accuracy"] == pytest.approx(4 / 6)


def test_three_class_accuracy_and_macro_f1() -> None:
    spec = TaskSpec("custom", ("text",), "label", 3, ("a", "b", "c"), False, ("accuracy", "f1"))
    gold = np.array([0, 1, 2, 2])
    pred = np.array([0, 1, 1, 2])  # per-class F1: a 1, b 2/3, c 2/3
    metrics = compute_metrics(spec, np.eye(3)[pred], gold)
    assert metrics["accuracy"] == pytest.approx(0.75)
    assert metrics["f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)


def test_pearson_and_spearman_by_hand() -> None:
    pred = np.array([0.5, 2.0, 1.0, 4.0, 3.5])
    gold = np.array([1.0, 1.5, 2.0, 5.0, 3.0])
    pc, gc = pred - pred.mean(), gold - gold.mean()
    pearson = (pc @ gc) / math.sqrt((pc @ pc) * (gc @ gc))
    rank_p, rank_g = np.array([1, 3, 2, 5, 4]), np.array([1, 2, 3, 5, 4])
    spearman = 1 - 6 * np.sum((rank_p - rank_g) ** 2) / (5 * (25 - 1))
    spec = get_task_spec("stsb")
    metrics = compute_metrics(spec, pred[:, None], gold)  # (N, 1) like a regression head
    assert metrics["pearson"] == pytest.approx(pearson)
    assert metrics["spearman"] == pytest.approx(spearman)
    assert main_score(spec, metrics) == pytest.approx((pearson + spearman) / 2)


def test_degenerate_predictions_give_zero_not_nan() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no ConstantInputWarning or sklearn warnings either
        reg = compute_metrics(get_task_spec("stsb"), np.full(4, 2.5), np.array([0.0, 1.0, 2.0, 3.0]))
        mcc = compute_metrics(get_task_spec("cola"), np.tile([1.0, 0.0], (4, 1)), np.array([0, 1, 0, 1]))
        f1 = compute_metrics(get_task_spec("qqp"), np.tile([1.0, 0.0], (4, 1)), np.array([0, 1, 0, 1]))
        one = compute_metrics(get_task_spec("stsb"), np.array([1.0]), np.array([2.0]))
    assert reg == {"pearson": 0.0, "spearman": 0.0}
    assert mcc == {"matthews": 0.0}
    assert f1 == {"f1": 0.0, "accuracy": 0.5}
    assert one == {"pearson": 0.0, "spearman": 0.0}


def test_bad_inputs_name_the_problem() -> None:
    with pytest.raises(ConfigError, match=r"\(N, 2\)"):
        compute_metrics(get_task_spec("sst2"), np.zeros((6, 3)), GOLD)
    with pytest.raises(ConfigError, match="one prediction per label"):
        compute_metrics(get_task_spec("sst2"), LOGITS[:5], GOLD)
    with pytest.raises(ConfigError, match="NaN"):
        compute_metrics(get_task_spec("stsb"), np.array([1.0, np.nan]), np.array([1.0, 2.0]))
    with pytest.raises(ConfigError, match=r"\(N,\) or \(N, 1\)"):
        compute_metrics(get_task_spec("stsb"), np.zeros((2, 2)), np.array([1.0, 2.0]))
    with pytest.raises(ConfigError, match="f1"):
        main_score(get_task_spec("mrpc"), {"accuracy": 0.5})


def test_constant_score_is_the_best_single_class_by_hand() -> None:
    labels = np.array([1, 1, 0, 1])
    assert constant_score(get_task_spec("sst2"), labels) == pytest.approx(0.75)
    # MRPC: all-ones gives F1 = 2*3 / (2*3 + 1) = 6/7 and accuracy 3/4; all-zeros gives F1 0, accuracy 1/4.
    assert constant_score(get_task_spec("mrpc"), labels) == pytest.approx((6 / 7 + 0.75) / 2)
    assert constant_score(get_task_spec("cola"), labels) == 0.0  # Matthews of a constant is 0
    assert constant_score(get_task_spec("stsb"), np.array([0.5, 3.0, 4.2])) == 0.0
