"""The values that flow through a KD run: an :class:`EpochPlan` goes in, stats come out.

All three are frozen dataclasses, validated on construction, so an invalid plan fails before any
heavy work with a message that names the field and the allowed values.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from kd_backend.errors import ConfigError

TeacherMode = Literal["fixed", "hard", "soft", "soft-instance"]
SelectionRule = Literal["entropy", "margin", "least-confidence", "random", "kd-loss"]
SelectionScope = Literal["batch", "epoch"]
SelectionNorm = Literal["selected", "batch"]
ObjectiveMode = Literal["static", "uncertainty", "uncertainty-r"]
ScoringMode = Literal["fresh", "stale"]
KDLoss = Literal["kl", "mse"]

TEACHER_MODES: tuple[str, ...] = get_args(TeacherMode)
SELECTION_RULES: tuple[str, ...] = get_args(SelectionRule)
UNCERTAINTY_RULES: tuple[str, ...] = ("entropy", "margin", "least-confidence")
"""The selection rules that rank by the student's own uncertainty (its class probabilities alone)."""
SELECTION_SCOPES: tuple[str, ...] = get_args(SelectionScope)
SELECTION_NORMS: tuple[str, ...] = get_args(SelectionNorm)
OBJECTIVE_MODES: tuple[str, ...] = get_args(ObjectiveMode)
KD_LOSSES: tuple[str, ...] = get_args(KDLoss)
SCORING_MODES: tuple[str, ...] = get_args(ScoringMode)


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"EpochPlan.{name}={value!r} is not one of {list(allowed)}")


def _check_weight(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or math.isnan(value) or math.isinf(value) or value < 0:
        raise ConfigError(f"EpochPlan.{name}={value!r} must be a finite number >= 0")


@dataclass(frozen=True)
class EpochPlan:
    """What the student does in one epoch (or one chunk of an epoch).

    The three dynamic mechanisms of Li et al. (2021) are three groups of fields: teacher adoption
    (``teacher_mode``, ``teacher_weights``), data selection (``fraction``, ``selection``, ``scope``)
    and objective weighting (``objective`` and the three ``*_weight`` fields).
    """

    teacher_mode: TeacherMode = "fixed"
    """How teachers are mixed: ``fixed`` (``teacher_weights``), ``hard`` (sort the batch by student
    uncertainty; the most uncertain group learns from the smallest teacher), ``soft`` (batch mean
    uncertainty interpolates from the largest to the smallest teacher) or ``soft-instance``
    (the same per instance). Teachers are ordered by size, smallest first."""
    teacher_weights: tuple[float, ...] | None = None
    """Weights of the teachers for ``teacher_mode='fixed'`` (normalised to sum 1); None = uniform."""
    fraction: float = 1.0
    """Fraction r in (0, 1] of the data that receives the KD objectives (``scope='batch'``) or that
    the epoch trains on at all (``scope='epoch'``)."""
    selection: SelectionRule = "entropy"
    """Which instances are kept: the student's most uncertain by ``entropy``, ``margin`` or
    ``least-confidence``; ``random`` (the control); or ``kd-loss``, those whose KD loss under this
    plan's teachers is largest (where the student is furthest from what the teachers say, so the
    most is left to learn from them; needs teachers). Ignored when ``fraction == 1``."""
    scope: SelectionScope = "epoch"
    """``batch`` (the paper: CE on the whole batch, KD on its top-r) or ``epoch`` (score the whole
    pool once without gradient, train only on its top-r, so a small fraction costs less)."""
    selection_norm: SelectionNorm = "selected"
    """How batch-scope KD / hidden terms are averaged: over the ``selected`` instances (the paper's
    code: at r = 0.1 each of the ~3 selected instances of a batch of 32 weighs 10x what it weighs in
    full KD) or over the whole ``batch`` (each selected instance keeps its full-KD weight)."""
    scoring: ScoringMode = "fresh"
    """Epoch scope only: ``fresh`` (score the whole pool in one no-grad pass first) or ``stale``
    (reuse each instance's uncertainty from its last forward pass, training or scoring, and rescore
    only instances never seen or older than ``DistillerConfig.stale_max_age`` epochs: a fraction r
    then costs about r, not r + 1/3)."""
    objective: ObjectiveMode = "static"
    """``static`` weights, ``uncertainty`` (per instance KD weight 1-u, hidden weight u, as the
    paper) or ``uncertainty-r`` (reversed)."""
    ce_weight: float = 1.0
    """Weight of the cross-entropy (MSE for regression) loss on gold labels."""
    kd_weight: float = 1.0
    """Weight of the KD loss on teacher logits."""
    hidden_weight: float = 0.0
    """Weight of the [CLS] hidden-state alignment loss (normalised MSE, PKD-style)."""
    kd_loss: KDLoss = "kl"
    """``kl`` (T^2 * KL(teacher || student)) or ``mse`` on logits. Regression tasks always use MSE."""
    temperature: float = 1.0
    """KD temperature T (the paper used T = 1 everywhere)."""
    max_steps: int | None = None
    """Optional cap on optimizer steps in this call (a step budget for sub-epoch decisions)."""
    lr_scale: float = 1.0
    """Multiplies the run's learning-rate schedule during this call (the schedule itself, warm-up
    and linear decay over the run's epochs, is unchanged). An epoch that trains on a fraction r of
    the data takes about r times the optimizer steps; a scale above 1 lets those fewer steps move
    the student further."""
    final: bool = False
    """This plan ends the run: the rest of the learning-rate schedule (any warm-up left, then the
    linear decay to 0) is compressed into this epoch (or chunk), and the episode terminates after it.
    A controller that picks it chooses the run's length, and so its compute, as well as its plan."""

    def __post_init__(self) -> None:
        _check_choice("teacher_mode", self.teacher_mode, TEACHER_MODES)
        _check_choice("selection", self.selection, SELECTION_RULES)
        _check_choice("scope", self.scope, SELECTION_SCOPES)
        _check_choice("selection_norm", self.selection_norm, SELECTION_NORMS)
        _check_choice("objective", self.objective, OBJECTIVE_MODES)
        _check_choice("scoring", self.scoring, SCORING_MODES)
        if self.scoring == "stale" and self.scope != "epoch":
            raise ConfigError(
                "EpochPlan.scoring='stale' needs scope='epoch' (batch scope already has every instance's "
                "fresh logits); use scoring='fresh' with scope='batch'"
            )
        _check_choice("kd_loss", self.kd_loss, KD_LOSSES)
        if (
            not isinstance(self.fraction, (int, float))
            or math.isnan(self.fraction)
            or not 0.0 < self.fraction <= 1.0
        ):
            raise ConfigError(f"EpochPlan.fraction={self.fraction!r} must be in (0, 1]")
        for name in ("ce_weight", "kd_weight", "hidden_weight"):
            _check_weight(name, getattr(self, name))
        if not isinstance(self.temperature, (int, float)) or not math.isfinite(self.temperature) or self.temperature <= 0:
            raise ConfigError(f"EpochPlan.temperature={self.temperature!r} must be a finite number > 0")
        if self.teacher_weights is not None:
            weights = tuple(float(w) for w in self.teacher_weights)
            for i, w in enumerate(weights):
                _check_weight(f"teacher_weights[{i}]", w)
            if not weights or sum(weights) <= 0:
                raise ConfigError(
                    f"EpochPlan.teacher_weights={self.teacher_weights!r} must hold one weight >= 0 per "
                    "teacher with a positive sum"
                )
            object.__setattr__(self, "teacher_weights", weights)
        if not isinstance(self.lr_scale, (int, float)) or not math.isfinite(self.lr_scale) or self.lr_scale <= 0:
            raise ConfigError(f"EpochPlan.lr_scale={self.lr_scale!r} must be a finite number > 0")
        if not isinstance(self.final, bool):
            raise ConfigError(f"EpochPlan.final={self.final!r} must be True or False")
        if self.max_steps is not None and (not isinstance(self.max_steps, int) or self.max_steps < 1):
            raise ConfigError(f"EpochPlan.max_steps={self.max_steps!r} must be None or an integer >= 1")
        if self.fraction < 1.0 and self.selection == "kd-loss" and not self.uses_teachers:
            raise ConfigError(
                "EpochPlan.selection='kd-loss' ranks instances by their KD loss, but the plan uses no teacher "
                "(kd_weight=0 and hidden_weight=0); give it a teacher or select by 'entropy' or 'random'"
            )
        if self.ce_weight + self.kd_weight + self.hidden_weight <= 0:
            raise ConfigError("EpochPlan: ce_weight, kd_weight and hidden_weight are all 0; nothing would be trained")

    @property
    def uses_teachers(self) -> bool:
        """Whether this plan needs teacher outputs at all."""
        return self.kd_weight > 0 or self.hidden_weight > 0

    @property
    def needs_uncertainty(self) -> bool:
        """Whether any mechanism reads the student's uncertainty."""
        return (
            self.teacher_mode in ("hard", "soft", "soft-instance")
            or self.objective != "static"
            or (self.fraction < 1.0 and self.selection in UNCERTAINTY_RULES)
        )

    def replace(self, **changes: Any) -> EpochPlan:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists)."""
        d = dataclasses.asdict(self)
        if d["teacher_weights"] is not None:
            d["teacher_weights"] = list(d["teacher_weights"])
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EpochPlan:
        """Inverse of :meth:`to_dict`; unknown keys raise a :class:`ConfigError` naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown EpochPlan field(s) {unknown}; valid fields are {sorted(names)}")
        kwargs = dict(data)
        if kwargs.get("teacher_weights") is not None:
            kwargs["teacher_weights"] = tuple(kwargs["teacher_weights"])
        return cls(**kwargs)


@dataclass(frozen=True)
class EpochStats:
    """What happened during one :meth:`Distiller.train_epoch` call."""

    epoch: int
    """0-based epoch index of the run."""
    part: int
    """Which chunk of the epoch this was (0-based; 0 when one decision per epoch)."""
    steps: int
    """Optimizer steps taken."""
    examples_trained: int
    """Instances that went through a gradient step."""
    examples_scored: int
    """Instances scored without gradient for epoch-scope selection."""
    teacher_forwards: int
    """Instances passed through a teacher network (0 when the teacher cache serves them)."""
    losses: Mapping[str, float]
    """Mean per-step loss terms: ``ce``, ``kd``, ``hidden`` (unweighted) and ``ce_w``, ``kd_w``,
    ``hidden_w`` (as weighted in the total) and ``total``."""
    student_flops: float
    """Estimated student FLOPs (training and scoring)."""
    teacher_flops: float
    """Estimated teacher FLOPs (online teachers and cache builds triggered by this call)."""
    wall_time: float
    """Seconds spent in this call."""
    teacher_weights: tuple[float, ...]
    """Average weight each teacher actually received over the instances that got KD."""
    kd_instance_weight: float
    """Average per-instance KD weight actually applied (1 for static objectives)."""
    hidden_instance_weight: float
    """Average per-instance hidden-alignment weight actually applied."""
    lr: float
    """Learning rate at the end of the call."""
    epoch_finished: bool
    """Whether the epoch's pool was exhausted (False when ``max_steps`` stopped it early)."""

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["losses"] = dict(self.losses)
        d["teacher_weights"] = list(self.teacher_weights)
        return d


@dataclass(frozen=True)
class EvalStats:
    """The student's competency on one split."""

    split: str
    """``train``, ``ctrl`` or ``dev``."""
    num_examples: int
    metrics: Mapping[str, float] = field(default_factory=dict)
    """Task metrics (fractions in [0, 1], or correlations in [-1, 1])."""
    score: float = 0.0
    """The task's main score: the mean of its metrics (GLUE's convention for MRPC, QQP, STS-B)."""
    loss: float = 0.0
    """Mean CE (MSE for regression) on gold labels."""
    mean_uncertainty: float = 0.0
    """Mean normalised entropy of the student (0 for regression)."""
    teacher_agreement: tuple[float, ...] = ()
    """Per teacher: fraction of instances where student and teacher predict the same class
    (for regression: 1 - mean absolute difference / label range, clipped to [0, 1])."""
    teacher_kl: tuple[float, ...] = ()
    """Per teacher: mean KL(teacher || student) at T=1 (MSE of predictions for regression)."""
    teacher_scores: tuple[float, ...] = ()
    """Per teacher: the teacher's own main score on this split."""
    wall_time: float = 0.0
    student_flops: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["metrics"] = dict(self.metrics)
        for k in ("teacher_agreement", "teacher_kl", "teacher_scores"):
            d[k] = list(d[k])
        return d
