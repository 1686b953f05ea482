"""The reward, in metric points (a score of 0.873 is 87.3 points), with a compute cost.

* ``dense`` (default): ``100 x (ctrl score after the step - before it) - cost_weight x step compute``.
  The first step's "before" is the fresh student's score at reset, so with gamma = 1 an
  episode's return telescopes to ``100 x (final - initial ctrl score) - cost_weight x total compute``.
* ``final``: 0 on every step but the last, which pays
  ``100 x final ctrl score - cost_weight x total compute``.

Compute is measured in plain epochs: (student + teacher training FLOPs of the step) over the student
FLOPs of one full-data epoch without selection. Cached teachers cost nothing; evaluation on ctrl is
the controller's overhead and is not charged.
"""

from __future__ import annotations

import math

from kd_backend.errors import ConfigError

POINTS = 100.0
"""Metric points per unit of score."""


def step_reward(
    kind: str,
    *,
    score: float,
    prev_score: float,
    step_compute: float,
    episode_compute: float,
    cost_weight: float,
    last: bool,
) -> float:
    """The reward of one step.

    :param kind: ``dense`` or ``final``.
    :param score: ctrl score after the step.
    :param prev_score: ctrl score before the step.
    :param step_compute: this step's compute, in plain epochs.
    :param episode_compute: the episode's compute so far (this step included), in plain epochs.
    :param cost_weight: points per plain epoch of compute.
    :param last: whether this is the episode's last step.
    """
    score = 0.0 if math.isnan(score) else score
    prev_score = 0.0 if math.isnan(prev_score) else prev_score
    if kind == "dense":
        return POINTS * (score - prev_score) - cost_weight * step_compute
    if kind == "final":
        return POINTS * score - cost_weight * episode_compute if last else 0.0
    raise ConfigError(f"reward={kind!r} is not one of ['dense', 'final']")
