"""Baseline controllers and the one evaluation loop shared with learned policies.

Every controller has SB3's ``predict(observation, state=None, episode_start=None, deterministic=True)
-> (action, state)``. Baselines that think in plans return an :class:`EpochPlan` as the action:
:class:`envs.distillation_env.DistillationEnv` applies a plan as given, so
:func:`evaluate_controller` runs SB3 policies and baselines through the same ``env.step``.
Open-loop controllers keep their position in ``state`` (SB3's recurrent-policy convention) and
restart when ``episode_start`` is true.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import gymnasium as gym
import numpy as np

from envs.actions import paper_plan
from envs.records import StepInfo
from kd_backend.errors import ConfigError
from kd_backend.io import atomic_write_json
from kd_backend.plan import EpochPlan


class Controller(Protocol):
    """Anything that picks the next action (or plan) from an observation, as SB3 policies do."""

    def predict(
        self, observation: Any, state: Any = None, episode_start: Any = None, deterministic: bool = True
    ) -> tuple[Any, Any]: ...


class StaticController:
    """The same plan every step: static KD (e.g. plain KD from one teacher on the full data).

    :param plan: the plan to apply.
    :param name: a label for tables and plots.
    """

    def __init__(self, plan: EpochPlan, name: str | None = None) -> None:
        if not isinstance(plan, EpochPlan):
            raise ConfigError(f"StaticController needs an EpochPlan, got {type(plan).__name__}: {plan!r}")
        self.plan = plan
        self.name = name or "static"

    @classmethod
    def plain_kd(cls, teacher: int | None = None, num_teachers: int = 1) -> StaticController:
        """Vanilla KD (CE + KL) on all data from teacher ``teacher`` (0 = smallest), or their mean if None."""
        if teacher is None:
            return cls(EpochPlan(), name="kd-mean")
        if not 0 <= teacher < num_teachers:
            raise ConfigError(f"teacher={teacher} must be in [0, {num_teachers}) (teachers are ordered smallest first)")
        weights = tuple(1.0 if k == teacher else 0.0 for k in range(num_teachers))
        return cls(EpochPlan(teacher_weights=weights), name=f"kd-t{teacher}")

    def predict(
        self, observation: Any, state: Any = None, episode_start: Any = None, deterministic: bool = True
    ) -> tuple[EpochPlan, Any]:
        return self.plan, state


PaperMechanism = Literal["adoption", "selection", "objective", "combined"]


class PaperHeuristic(StaticController):
    """Li et al. (2021)'s hand-designed rules, which adapt inside each batch from the student's uncertainty.

    * ``adoption``: uncertainty-based teacher adoption (``adoption_mode``: hard, soft, soft-instance);
    * ``selection``: KD on the 10% most uncertain instances of each batch by margin (the teachers' mean);
    * ``objective``: uncertainty-weighted KD and hidden alignment (weights 1, 1; the teachers' mean);
    * ``combined``: the three at once (the paper never combined them).

    :param mechanism: which rule.
    :param adoption_mode: the adoption variant for ``adoption`` and ``combined``.
    :param fraction: data fraction of ``selection`` and ``combined``.
    """

    def __init__(self, mechanism: PaperMechanism, adoption_mode: str = "hard", fraction: float = 0.1) -> None:
        super().__init__(EpochPlan(**paper_plan(mechanism, adoption_mode, fraction)), name=f"paper-{mechanism}")
        self.mechanism = mechanism


class RandomController:
    """Uniformly random actions of ``space`` (a sanity floor for learned policies).

    :param space: the env's action space.
    :param seed: seeds the sampling (the space is copied, the env's own is left alone).
    """

    def __init__(self, space: gym.Space, seed: int = 0) -> None:
        self.space = copy.deepcopy(space)
        self.space.seed(seed)
        self.name = "random"

    def predict(
        self, observation: Any, state: Any = None, episode_start: Any = None, deterministic: bool = True
    ) -> tuple[Any, Any]:
        return self.space.sample(), state


class ScheduleController:
    """An open-loop schedule: plan i at step i of every episode (replay of a recorded run).

    :param plans: one plan per step; ``EpochPlan`` or its ``to_dict()`` form.
    :param name: a label for tables and plots.
    :raises ConfigError: an empty schedule or an entry that is not a valid plan (naming its index).
    """

    def __init__(self, plans: Sequence[EpochPlan | Mapping[str, Any]], name: str = "schedule") -> None:
        if isinstance(plans, (str, bytes, Mapping)) or not isinstance(plans, Sequence) or not plans:
            raise ConfigError(f"a schedule must be a non-empty list of plans, got {plans!r}")
        parsed = []
        for i, p in enumerate(plans):
            if isinstance(p, EpochPlan):
                parsed.append(p)
            elif isinstance(p, Mapping):
                try:
                    parsed.append(EpochPlan.from_dict(p))
                except (ConfigError, TypeError) as e:
                    raise ConfigError(f"schedule step {i}: {e}") from e
            else:
                raise ConfigError(f"schedule step {i} is a {type(p).__name__} ({p!r}), not a plan mapping")
        for i, p in enumerate(parsed[:-1]):
            if p.final:
                raise ConfigError(
                    f"schedule step {i} is a final plan (it ends the run) but {len(parsed) - 1 - i} plan(s) follow "
                    "it; end the schedule there, or drop final from that plan"
                )
        self.plans: tuple[EpochPlan, ...] = tuple(parsed)
        self.name = name

    @property
    def num_steps(self) -> int:
        return len(self.plans)

    def fits(self, steps: int) -> bool:
        """Whether the schedule runs a whole episode of ``steps`` decisions: one plan per decision, or
        fewer that end in a final plan (which ends the run early)."""
        return self.num_steps == steps or (self.num_steps < steps and self.plans[-1].final)

    def predict(
        self, observation: Any, state: Any = None, episode_start: Any = None, deterministic: bool = True
    ) -> tuple[EpochPlan, int]:
        i = 0 if state is None or (episode_start is not None and bool(np.any(episode_start))) else int(state)
        if i >= len(self.plans):
            raise ConfigError(f"the schedule has {len(self.plans)} plans but step {i} asked for another")
        return self.plans[i], i + 1

    @classmethod
    def load(cls, path: str | Path, name: str | None = None) -> ScheduleController:
        """Read a schedule: a JSON list of plan dicts, or an object with a ``plans`` list."""
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"schedule file {path} does not exist")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"schedule file {path} is not valid JSON: {e}") from e
        if isinstance(data, Mapping):
            if "plans" not in data:
                raise ConfigError(f"schedule file {path} has no 'plans' key (keys: {sorted(data)})")
            data = data["plans"]
        try:
            return cls(data, name=name or path.stem)
        except ConfigError as e:
            raise ConfigError(f"schedule file {path}: {e}") from e

    def save(self, path: str | Path, **metadata: Any) -> Path:
        """Write ``{"plans": [...], **metadata}`` (readable by :meth:`load`)."""
        return atomic_write_json(path, {"plans": [p.to_dict() for p in self.plans], **metadata})


@dataclass
class StepRecord:
    """One decision of an evaluated episode."""

    step: int
    plan: dict[str, Any]
    stats: dict[str, Any]
    ctrl_score: float
    reward: float
    compute: float
    ctrl: dict[str, Any] | None = None
    """The ctrl evaluation after the step (``EvalStats.to_dict()`` without wall time): the state a
    surrogate of the KD run learns from. None in records written before DynaKD kept it."""
    initial_ctrl: dict[str, Any] | None = None
    """On the first step only: the fresh student's ctrl evaluation (the episode's initial state)."""


@dataclass
class EpisodeRecord:
    """One evaluated episode (a KD run)."""

    controller: str
    seed: int
    steps: list[StepRecord] = field(default_factory=list)
    final_ctrl_score: float = float("nan")
    final_dev_score: float | None = None
    total_compute: float = 0.0
    episode_return: float = 0.0
    wall_time: float = 0.0

    @property
    def schedule(self) -> list[dict[str, Any]]:
        """The plans applied, in order (a :class:`ScheduleController` replays them)."""
        return [s.plan for s in self.steps]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EpisodeRecord:
        """The inverse of :meth:`to_dict` (a line of ``evaluation.jsonl`` / ``selection.jsonl``).

        :raises ConfigError: a missing or unknown field, naming it.
        """
        try:
            steps = [StepRecord(**s) for s in data["steps"]]
            return cls(**{**data, "steps": steps})
        except (KeyError, TypeError) as e:
            raise ConfigError(f"not an episode record ({e}); expected a line written by EpisodeRecord.to_dict") from e


def evaluate_controller(
    env: gym.Env, controller: Controller, seeds: Sequence[int], deterministic: bool = True, name: str | None = None
) -> list[EpisodeRecord]:
    """Run one episode per seed and record what the controller did and what it gave.

    :param env: a (possibly wrapped) :class:`DistillationEnv`.
    :param controller: an SB3 model or a baseline of this module.
    :param seeds: episode seeds (the student's initialisation and data order).
    :param deterministic: passed to ``predict``.
    :param name: the controller's label (default: its ``name`` attribute or class name).
    :raises ConfigError: a schedule whose length differs from the env's episode, before any training.
    """
    length = getattr(env.unwrapped, "steps_per_episode", None)
    if isinstance(controller, ScheduleController) and length is not None and not controller.fits(length):
        raise ConfigError(
            f"the schedule has {controller.num_steps} plans but an episode has {length} decisions "
            "(horizon x decisions_per_epoch); record or write a schedule of that length, or end a "
            "shorter one with a final plan (a name ending in -end)"
        )
    label = name or getattr(controller, "name", None) or type(controller).__name__
    records = []
    for seed in seeds:
        t0 = time.perf_counter()
        obs, info = env.reset(seed=int(seed))
        record = EpisodeRecord(controller=label, seed=int(seed))
        state, start, done = None, True, False
        while not done:
            action, state = controller.predict(
                obs, state=state, episode_start=np.array([start]), deterministic=deterministic
            )
            start = False
            obs, reward, terminated, truncated, info = env.step(action)
            done = terminated or truncated
            step = StepInfo.from_info(info)
            record.steps.append(StepRecord(
                step=step.step, plan=dict(step.plan), stats=dict(step.stats), ctrl_score=step.ctrl_score,
                reward=float(reward), compute=step.step_compute, ctrl=dict(step.ctrl),
                initial_ctrl=None if step.initial_ctrl is None else dict(step.initial_ctrl),
            ))
        record.final_ctrl_score = step.ctrl_score
        record.final_dev_score = step.dev_score
        record.total_compute = step.compute_total
        record.episode_return = sum(s.reward for s in record.steps)
        record.wall_time = time.perf_counter() - t0
        records.append(record)
    return records
