"""The observation: a bounded float32 vector with a documented name per index, from the ctrl split only.

Layout (``observation_names``), with K teachers (smallest first) and an action vector of length A:

=========================  ===========  ==========================================================
name                       bounds       meaning
=========================  ===========  ==========================================================
``progress``               [0, 1]       decisions taken / decisions per episode
``ctrl_score``             [-1, 1]      student's main task score on ctrl (fraction or correlation)
``ctrl_loss``              [0, 10]      student's mean gold-label loss on ctrl (CE, or MSE)
``best_ctrl_score``        [-1, 1]      best ``ctrl_score`` of the episode so far (reset included)
``last_change``            [-2, 2]      ``ctrl_score`` now minus before the last step (0 at reset)
``train_loss``             [0, 10]      mean unweighted gold-label loss of the last step's training (0 at reset)
``ctrl_uncertainty``       [0, 1]       student's mean normalised entropy on ctrl (0 for regression)
``t{k}_agreement``         [0, 1]       share of ctrl instances where student and teacher k agree
``t{k}_kl``                [0, 10]      mean KL(teacher k ‖ student) on ctrl (MSE for regression)
``t{k}_ctrl_score``        [-1, 1]      teacher k's own score on ctrl (constant within a run)
``compute_used``           [0, 64]      compute so far in plain full-data epochs, over the episode's epochs
``last_action:{label}``    [-1, 1]      the last action, normalised by its codec (0 at reset)
=========================  ===========  ==========================================================

Values are clipped to the bounds (a loss above 10 reads 10); a NaN (e.g. an undefined
correlation) reads 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from gymnasium import spaces

from kd_backend.plan import EvalStats

LOSS_CAP = 10.0
COMPUTE_CAP = 64.0

_HEAD: tuple[tuple[str, float, float], ...] = (
    ("progress", 0.0, 1.0),
    ("ctrl_score", -1.0, 1.0),
    ("ctrl_loss", 0.0, LOSS_CAP),
    ("best_ctrl_score", -1.0, 1.0),
    ("last_change", -2.0, 2.0),
    ("train_loss", 0.0, LOSS_CAP),
    ("ctrl_uncertainty", 0.0, 1.0),
)
_PER_TEACHER: tuple[tuple[str, float, float], ...] = (
    ("agreement", 0.0, 1.0),
    ("kl", 0.0, LOSS_CAP),
    ("ctrl_score", -1.0, 1.0),
)


def _layout(num_teachers: int, action_labels: Sequence[str]) -> list[tuple[str, float, float]]:
    rows = list(_HEAD)
    for k in range(num_teachers):
        rows += [(f"t{k}_{name}", lo, hi) for name, lo, hi in _PER_TEACHER]
    rows.append(("compute_used", 0.0, COMPUTE_CAP))
    rows += [(f"last_action:{label}", -1.0, 1.0) for label in action_labels]
    return rows


def _labels(action_dim: int, action_labels: Sequence[str] | None) -> Sequence[str]:
    if action_labels is None:
        return [str(i) for i in range(action_dim)]
    if len(action_labels) != action_dim:
        raise ValueError(f"action_labels has {len(action_labels)} names for an action vector of {action_dim}")
    return action_labels


def observation_names(
    num_teachers: int, action_dim: int, action_labels: Sequence[str] | None = None
) -> tuple[str, ...]:
    """The name of each observation index (see the module docstring).

    :param num_teachers: K teachers, smallest first.
    :param action_dim: length of the codec's normalised action vector.
    :param action_labels: a name per action component (default: its index).
    """
    return tuple(name for name, _, _ in _layout(num_teachers, _labels(action_dim, action_labels)))


def observation_space(num_teachers: int, action_dim: int) -> spaces.Box:
    """The declared ``Box``: per-index bounds of :func:`observation_names`, float32."""
    rows = _layout(num_teachers, _labels(action_dim, None))
    low = np.array([lo for _, lo, _ in rows], dtype=np.float32)
    high = np.array([hi for _, _, hi in rows], dtype=np.float32)
    return spaces.Box(low, high, dtype=np.float32)


def build_observation(
    space: spaces.Box,
    *,
    progress: float,
    ctrl: EvalStats,
    best_score: float,
    last_change: float,
    train_loss: float,
    compute_used: float,
    last_action: np.ndarray,
) -> np.ndarray:
    """The observation vector, clipped to ``space``.

    :param space: from :func:`observation_space` (fixes K and the action length).
    :param progress: decisions taken / decisions per episode.
    :param ctrl: the student's evaluation on the ctrl split.
    :param best_score: best ctrl score of the episode so far.
    :param last_change: ctrl score change over the last step.
    :param train_loss: mean unweighted gold-label loss of the last training step (0 at reset).
    :param compute_used: compute so far in plain epochs, already divided by the episode's epochs.
    :param last_action: the codec's normalised last action.
    """
    per_teacher = [
        x for triple in zip(ctrl.teacher_agreement, ctrl.teacher_kl, ctrl.teacher_scores, strict=True) for x in triple
    ]
    values = [
        progress, ctrl.score, ctrl.loss, best_score, last_change, train_loss, ctrl.mean_uncertainty,
        *per_teacher, compute_used, *np.asarray(last_action, dtype=np.float64).ravel(),
    ]
    obs = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0)
    if obs.shape != space.shape:
        raise ValueError(f"observation has {obs.shape[0]} values but the space declares {space.shape[0]}")
    return np.clip(obs, space.low, space.high).astype(np.float32)
