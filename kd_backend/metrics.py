"""Task metrics (scikit-learn and scipy) and the GLUE main score.

Degenerate cases never produce NaN: a correlation with a constant side (a collapsed student
predicting one class or one value) is reported as 0.0, so rewards and logs stay finite.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from kd_backend.errors import ConfigError
from kd_backend.tasks import TaskSpec


def _finite(value: float) -> float:
    value = float(value)
    return value if math.isfinite(value) else 0.0


def _correlation(fn, x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:  # undefined: scipy would warn and give NaN
        return 0.0
    return _finite(fn(x, y)[0])


def _classification_metric(name: str, gold: np.ndarray, pred: np.ndarray, num_labels: int) -> float:
    if name == "accuracy":
        return accuracy_score(gold, pred)
    if name == "matthews":
        return matthews_corrcoef(gold, pred)
    if num_labels == 2:  # GLUE's F1 (MRPC, QQP): F1 of the positive class 1
        return f1_score(gold, pred, average="binary", pos_label=1, zero_division=0.0)
    return f1_score(gold, pred, average="macro", labels=list(range(num_labels)), zero_division=0.0)


def predicted_classes(spec: TaskSpec, predictions: np.ndarray) -> np.ndarray:
    """Class ids from logits ``(N, C)``, or integer class ids ``(N,)`` passed through."""
    preds = np.asarray(predictions)
    if preds.ndim == 1 and np.issubdtype(preds.dtype, np.integer):
        return preds.astype(np.int64)
    if preds.ndim != 2 or preds.shape[1] != spec.num_labels:
        raise ConfigError(
            f"predictions for {spec.name} have shape {preds.shape}; pass logits of shape (N, {spec.num_labels}) "
            "or integer class ids of shape (N,)"
        )
    return preds.argmax(axis=1)


def compute_metrics(spec: TaskSpec, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The task's metrics, in the order of ``spec.metrics``.

    :param spec: the task; its ``metrics`` names what is computed.
    :param predictions: classification: logits ``(N, C)`` (or class ids ``(N,)``, integer dtype);
        regression: outputs ``(N,)`` or ``(N, 1)``.
    :param labels: gold labels ``(N,)``: class ids, or real numbers for regression.
    :return: ``{metric: value}``; accuracy, F1 in [0, 1], Matthews, Pearson, Spearman in [-1, 1].
        F1 is binary F1 of class 1 (GLUE's convention for MRPC/QQP), macro F1 with more classes.
    """
    preds = np.asarray(predictions)
    gold = np.asarray(labels)
    if gold.ndim != 1 or len(gold) == 0 or len(preds) != len(gold):
        raise ConfigError(
            f"compute_metrics needs one prediction per label and at least one label; got predictions of shape "
            f"{preds.shape} and labels of shape {gold.shape}"
        )
    if np.issubdtype(preds.dtype, np.floating) and not np.isfinite(preds).all():
        raise ConfigError(f"predictions for {spec.name} contain {int((~np.isfinite(preds)).sum())} NaN or infinite values")
    if spec.is_regression:
        if preds.ndim == 2 and preds.shape[1] == 1:
            preds = preds[:, 0]
        if preds.ndim != 1:
            raise ConfigError(f"regression predictions for {spec.name} have shape {preds.shape}; pass (N,) or (N, 1)")
        x, y = preds.astype(np.float64), gold.astype(np.float64)
        return {m: _correlation(pearsonr if m == "pearson" else spearmanr, x, y) for m in spec.metrics}
    pred_ids, gold_ids = predicted_classes(spec, preds), gold.astype(np.int64)
    return {m: _finite(_classification_metric(m, gold_ids, pred_ids, spec.num_labels)) for m in spec.metrics}


def main_score(spec: TaskSpec, metrics: Mapping[str, float]) -> float:
    """The task's single score: the mean of its metrics (GLUE's convention, e.g. MRPC = (F1 + acc) / 2)."""
    missing = [m for m in spec.metrics if m not in metrics]
    if missing:
        raise ConfigError(f"main_score for {spec.name} needs metric(s) {missing}; got {sorted(metrics)}")
    return float(np.mean([metrics[m] for m in spec.metrics]))


def no_better_than_constant(score: float, floor: float) -> bool:
    """Whether a main score is within 0.005 of (or below) ``floor``, a constant predictor's
    (:func:`constant_score`): the model learned nothing.

    :param score: the model's main score.
    :param floor: the constant predictor's main score on the same labels.
    """
    return score <= floor + 0.005


def constant_score(spec: TaskSpec, labels: np.ndarray) -> float:
    """The best main score a constant predictor gets on ``labels``: the level a model that learned
    nothing sits at (the majority class's score; 0 for regression, whose correlations are 0 then).

    :param spec: the task.
    :param labels: gold labels ``(N,)``.
    """
    gold = np.asarray(labels)
    if spec.is_regression or len(gold) == 0:
        return 0.0
    return max(
        main_score(spec, compute_metrics(spec, np.full(len(gold), c, dtype=np.int64), gold))
        for c in range(spec.num_labels)
    )
