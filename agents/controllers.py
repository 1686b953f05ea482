"""Controllers by name: menu plans, the paper's heuristics, random, learned policies (``.zip``) and
schedules (``.json``), each checked against the env before any work; and plans' short labels."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from stable_baselines3.common.base_class import BaseAlgorithm

from agents.baselines import (
    EpisodeRecord,
    PaperHeuristic,
    RandomController,
    ScheduleController,
    StaticController,
)
from agents.configs import PAPER_HEURISTICS
from agents.factory import load_agent
from agents.spaces import Spaces, SpacesOnlyEnv
from envs import EnvConfig, named_plans, plan_fields
from kd_backend.errors import ConfigError
from kd_backend.plan import EpochPlan


def controller_names(spaces: Spaces) -> tuple[str, ...]:
    """Every baseline name :func:`build_controllers` accepts for these spaces."""
    return (*named_plans(spaces.num_teachers, spaces.regression), *PAPER_HEURISTICS, "random")


def _label(path: Path) -> str:
    return f"{path.parent.name}/{path.stem}" if path.parent.name else path.stem


def load_schedule(path: str | Path, config: EnvConfig, spaces: Spaces, name: str | None = None) -> ScheduleController:
    """A schedule file, checked against the env (length, teachers) before any work."""
    schedule = ScheduleController.load(path, name=name or _label(Path(path)))
    if not schedule.fits(config.steps_per_episode):
        raise ConfigError(
            f"schedule {path} has {schedule.num_steps} plans but an episode of this env has "
            f"{config.steps_per_episode} decisions (horizon {config.epochs} x decisions_per_epoch "
            f"{config.decisions_per_epoch}); pass a matching --horizon / --decisions-per-epoch "
            "(a shorter schedule must end in a final plan)"
        )
    for i, plan in enumerate(schedule.plans):
        if plan.teacher_weights is not None and len(plan.teacher_weights) != spaces.num_teachers:
            raise ConfigError(
                f"schedule {path} step {i} weights {len(plan.teacher_weights)} teachers but the env has "
                f"{spaces.num_teachers} ({list(config.backend.teachers)})"
            )
        if spaces.regression and plan.needs_uncertainty:
            raise ConfigError(
                f"schedule {path} step {i} needs the student's uncertainty, which a regression task lacks"
            )
    return schedule


def load_policy(path: str | Path, spaces: Spaces, name: str | None = None) -> BaseAlgorithm:
    """A learned policy, checked against the env's spaces before any work (see ``agents.load_agent``)."""
    agent = load_agent(path, SpacesOnlyEnv(spaces), meaning=spaces.meaning)
    agent.name = name or _label(Path(path))
    return agent


def _plan(fields: Mapping[str, Any], config: EnvConfig) -> EpochPlan:
    """A baseline's plan with the run-wide KD loss and temperature, as the env's codecs decode them."""
    return EpochPlan(**{"kd_loss": config.kd_loss, "temperature": config.temperature, **fields})


def build_controllers(specs: Sequence[str], config: EnvConfig, spaces: Spaces, seed: int = 0) -> dict[str, Any]:
    """Controllers by name, in order: baselines, policies (``*.zip``), schedules (``*.json``, or plan
    names joined by ``>``, one per decision: ``kd-t1>frac-0.3-stale>frac-0.3-stale``).

    :param specs: see :attr:`LearnConfig.baselines`.
    :param seed: seed of the ``random`` controller.
    :raises ConfigError: an unknown name, or a file that is missing or does not fit the env.
    """
    out: dict[str, Any] = {}
    for spec in specs:
        if spec.endswith(".zip"):
            controller: Any = load_policy(spec, spaces)
        elif spec.endswith(".json"):
            controller = load_schedule(spec, config, spaces)
        elif spec == "random":
            controller = RandomController(spaces.action, seed=seed)
        elif ">" in spec:
            controller = _named_schedule(spec, config, spaces)
        elif spec in PAPER_HEURISTICS:
            controller = PaperHeuristic(spec.removeprefix("paper-"))  # type: ignore[arg-type]
            controller.plan = _plan(controller.plan.to_dict(), config)
            if spaces.regression and controller.plan.needs_uncertainty:
                raise ConfigError(f"baseline {spec!r} needs the student's uncertainty, which a regression task lacks")
        else:  # a plan name: a named plan or any frac-R[-random|-stale|-kd|-stale-kd]
            try:
                fields = plan_fields(spec, spaces.num_teachers, spaces.regression)
            except ConfigError as err:
                raise ConfigError(
                    f"unknown controller {spec!r} ({err}); use a policy .zip, a schedule .json, a plan name "
                    f"or one of {list(controller_names(spaces))}"
                ) from None
            controller = StaticController(_plan(fields, config), name=spec)
        name = controller.name
        if name in out:
            raise ConfigError(f"controller {name!r} is listed twice")
        out[name] = controller
    return out


def _named_schedule(spec: str, config: EnvConfig, spaces: Spaces) -> ScheduleController:
    """``A>B>C``: plan names, one per decision (as the search and the protocol label schedules)."""
    names = spec.split(">")
    steps = config.steps_per_episode
    plans = []
    for i, name in enumerate(names):
        try:
            plans.append(_plan(plan_fields(name, spaces.num_teachers, spaces.regression), config))
        except ConfigError as err:
            raise ConfigError(f"schedule {spec!r} step {i}: {err}") from None
    try:
        schedule = ScheduleController(plans, name=spec)
    except ConfigError as err:
        raise ConfigError(f"schedule {spec!r}: {err}") from None
    if not schedule.fits(steps):
        example = ">".join(names[:steps] + names[-1:] * (steps - len(names)))  # cut, or the last repeated
        raise ConfigError(
            f"schedule {spec!r} names {len(names)} plan(s) but an episode has {steps} decisions; "
            f"write one plan name per decision, e.g. {example}, or end a shorter schedule with a "
            "final plan (a name ending in -end)"
        )
    return schedule


def plan_label(plan: Mapping[str, Any], config: EnvConfig, spaces: Spaces) -> str:
    """A short name for a plan: its discrete-menu name when it is one, else its non-default fields."""
    parsed = EpochPlan.from_dict(plan)
    menu = {n: plan_fields(n, spaces.num_teachers, spaces.regression) for n in config.menu or ()}
    for name, fields in {**named_plans(spaces.num_teachers, spaces.regression), **menu}.items():
        if _plan(fields, config) == parsed:
            return name
    default = _plan({}, config)
    parts = []
    for f in dataclasses.fields(EpochPlan):
        value = getattr(parsed, f.name)
        if value != getattr(default, f.name):
            if isinstance(value, tuple):
                value = "(" + ",".join(f"{v:.2f}" for v in value) + ")"
            elif isinstance(value, float):
                value = f"{value:.2f}"
            parts.append(f"{f.name}={value}")
    return " ".join(parts) or "kd-mean"


def describe_schedule(record: EpisodeRecord, config: EnvConfig, spaces: Spaces) -> str:
    """One line per decision: the plan applied and the ctrl score after it."""
    return "\n".join(
        f"  step {s.step}: {plan_label(s.plan, config, spaces):<24} "
        f"ctrl {100 * s.ctrl_score:5.1f}  compute {s.compute:.2f}"
        for s in record.steps
    )
