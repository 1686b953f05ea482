"""The environment's configuration: one frozen dataclass, every field documented (the CLI help text)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from kd_backend.config import BackendConfig
from kd_backend.errors import ConfigError
from kd_backend.plan import (
    KD_LOSSES,
    SELECTION_RULES,
    SELECTION_SCOPES,
    KDLoss,
    SelectionRule,
    SelectionScope,
)
from kd_backend.validation import check_float, check_int

ActionSpaceKind = Literal["discrete", "multidiscrete", "box"]
RewardKind = Literal["dense", "final"]
ACTION_SPACES: tuple[str, ...] = ("discrete", "multidiscrete", "box")
REWARDS: tuple[str, ...] = ("dense", "final")


@dataclass(frozen=True)
class EnvConfig:
    """One episode = one KD run of ``horizon`` epochs, ``decisions_per_epoch`` plans per epoch."""

    backend: BackendConfig = field(default_factory=BackendConfig)
    """The KD run: task, teachers, student and optimisation (see ``kd_backend.pipeline``)."""
    horizon: int | None = None
    """Epochs per episode; None = ``backend.epochs`` (the learning-rate schedule's length)."""
    decisions_per_epoch: int = 1
    """Plans per epoch: each step trains one of this many equal chunks of the epoch."""
    action_space: ActionSpaceKind = "discrete"
    """``discrete`` (a menu of named plans; DQN, PPO, A2C), ``multidiscrete`` (teacher mode x
    fraction x selection x KD weight x hidden weight x objective; PPO, A2C) or ``box`` in [-1, 1]
    (teacher mixture logits, fraction, KD and hidden weights; PPO, A2C, SAC)."""
    menu: tuple[str, ...] | None = None
    """Names of the plans of the ``discrete`` menu (see ``envs.actions.named_plans``), or any
    ``frac-R[-random|-stale|-kd|-stale-kd][-tK]``, any of them with ``-lrX`` to scale that epoch's learning rate by X
    (``envs.actions.plan_fields``); None = the default menu."""
    reward: RewardKind = "dense"
    """``dense``: 100 x (ctrl score now - before) - cost_weight x step compute, every step;
    ``final``: 100 x final ctrl score - cost_weight x episode compute, on the last step (0 before)."""
    cost_weight: float = 0.0
    """Reward points paid per unit of compute, the unit being one plain full-data epoch of the student."""
    r_min: float = 0.05
    """Smallest data fraction a ``box`` action can ask for (the fraction axis spans [r_min, 1])."""
    fraction_bins: tuple[float, ...] = (1.0, 0.5, 0.3, 0.1)
    """Data fractions a ``multidiscrete`` action chooses from (each in (0, 1])."""
    weight_bins: tuple[float, ...] = (0.0, 0.5, 1.0)
    """KD and hidden-loss weights a ``multidiscrete`` action chooses from; their maximum is the top
    of the ``box`` weight axes."""
    selection: SelectionRule = "entropy"
    """Selection rule of ``box`` actions (``multidiscrete`` actions choose their own)."""
    scope: SelectionScope = "epoch"
    """Selection scope of ``multidiscrete`` and ``box`` plans: ``epoch`` (train on the top-r only,
    saves student compute) or ``batch`` (the paper: KD on each batch's top-r)."""
    teacher_logit_scale: float = 3.0
    """``box`` teacher weights are softmax(scale x action): 3 lets one teacher take ~99.8% of the weight."""
    kd_loss: KDLoss = "kl"
    """KD loss of every decoded plan: ``kl`` (T^2 KL) or ``mse`` on logits."""
    temperature: float = 1.0
    """KD temperature of every decoded plan (the paper used 1)."""
    branch_cache: int = 0
    """Branching episodes: keep up to this many epoch states keyed by (episode seed, plans so far),
    so an episode that repeats a stored prefix of plans with the same seed continues from its state
    instead of retraining it (bit for bit the same run on the CPU; see ``envs.branching``). 0 = off.
    Pays off when episodes share seeds: the protocol's grid search, or learning with a seed pool."""
    report_dev: bool = True
    """Evaluate the dev split after an episode's last step and put it in that step's ``info``
    (for reporting only: the dev split never reaches the observation or the reward)."""

    def __post_init__(self) -> None:
        if isinstance(self.backend, dict):  # from YAML / tyro-free callers
            object.__setattr__(self, "backend", BackendConfig(**self.backend))
        check_int("EnvConfig", "horizon", self.horizon, minimum=1, allow_none=True)
        check_int("EnvConfig", "decisions_per_epoch", self.decisions_per_epoch, minimum=1)
        _choice("action_space", self.action_space, ACTION_SPACES)
        _choice("reward", self.reward, REWARDS)
        _choice("selection", self.selection, SELECTION_RULES)
        _choice("scope", self.scope, SELECTION_SCOPES)
        _choice("kd_loss", self.kd_loss, KD_LOSSES)
        if self.menu is not None:
            object.__setattr__(self, "menu", tuple(self.menu))
            if not self.menu:
                raise ConfigError("EnvConfig.menu=() is empty; name at least one plan or use None for the default menu")
        if not math.isfinite(self.cost_weight) or self.cost_weight < 0:
            raise ConfigError(f"EnvConfig.cost_weight={self.cost_weight!r} must be a finite number >= 0")
        if not isinstance(self.branch_cache, int) or isinstance(self.branch_cache, bool) or self.branch_cache < 0:
            raise ConfigError(f"EnvConfig.branch_cache={self.branch_cache!r} must be an integer >= 0 (0 = off)")
        check_float("EnvConfig", "r_min", self.r_min, 0.0, 1.0, low_open=True)
        fractions = tuple(float(f) for f in self.fraction_bins)
        if not fractions or any(not 0 < f <= 1 for f in fractions):
            raise ConfigError(f"EnvConfig.fraction_bins={self.fraction_bins!r} must be non-empty, each in (0, 1]")
        weights = tuple(float(w) for w in self.weight_bins)
        if not weights or any(not (math.isfinite(w) and w >= 0) for w in weights) or max(weights) <= 0:
            raise ConfigError(
                f"EnvConfig.weight_bins={self.weight_bins!r} must be non-empty, finite, >= 0, with a positive maximum"
            )
        object.__setattr__(self, "fraction_bins", fractions)
        object.__setattr__(self, "weight_bins", weights)
        if not math.isfinite(self.teacher_logit_scale) or self.teacher_logit_scale <= 0:
            raise ConfigError(f"EnvConfig.teacher_logit_scale={self.teacher_logit_scale!r} must be finite and > 0")
        if not math.isfinite(self.temperature) or self.temperature <= 0:
            raise ConfigError(f"EnvConfig.temperature={self.temperature!r} must be finite and > 0")

    @property
    def epochs(self) -> int:
        """Epochs per episode (``horizon`` resolved)."""
        return self.horizon if self.horizon is not None else self.backend.epochs

    @property
    def steps_per_episode(self) -> int:
        """Decisions per episode: ``epochs x decisions_per_epoch``."""
        return self.epochs * self.decisions_per_epoch

    def replace(self, **changes: Any) -> EnvConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"EnvConfig.{name}={value!r} is not one of {list(allowed)}")


def tiny_backend(**overrides: Any) -> BackendConfig:
    """The tiny KD run behind ``DynamicKD-tiny-v0``: 3 epochs, under a second per episode on one CPU thread.

    Synthetic task (600 train instances, a fifth held out as ctrl, 200 dev), two tiny teachers
    fine-tuned for 2 epochs on first use (cached under ``cache_dir``), a 1-layer 64-wide student.

    :param overrides: ``BackendConfig`` fields to change (e.g. ``cache_dir``).
    """
    base: dict[str, Any] = dict(
        task="synthetic", synthetic_train=600, synthetic_dev=200, ctrl_fraction=0.2,
        teachers=("tiny-1x64", "tiny-2x128"), student="tiny-1x64", teacher_epochs=2, vocab_size=1000,
        epochs=3, batch_size=32, lr=2e-3, max_seq_length=48, device="cpu", progress=False,
    )
    base.update(overrides)
    return BackendConfig(**base)


def tiny_config(cache_dir: str | None = None, **overrides: Any) -> EnvConfig:
    """``EnvConfig`` of the tiny variant.

    :param cache_dir: where teachers and caches go (default: ``BackendConfig``'s).
    :param overrides: ``EnvConfig`` fields to change.
    """
    backend = tiny_backend(**({} if cache_dir is None else {"cache_dir": cache_dir}))
    return EnvConfig(backend=backend, **overrides)
