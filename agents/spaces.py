"""What a config's env will be, known before it is built, and building it once: the spaces and
their meaning (checked against a policy before any work), the algorithm check, the thread setting."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import torch

from agents.factory import compatible_algorithms
from envs import (
    DistillationEnv,
    EnvConfig,
    make_codec,
    observation_names,
    observation_space,
)
from kd_backend.config import BackendConfig
from kd_backend.distiller import resolve_device
from kd_backend.errors import ConfigError, UnknownTaskError
from kd_backend.models import PRESETS
from kd_backend.pipeline import build_distiller, load_task_data
from kd_backend.tasks import get_task_spec


def configure_threads(threads: int | None, backend: BackendConfig) -> int:
    """Apply the ``threads`` setting (see :class:`LearnConfig`); returns torch's thread count."""
    if threads is None:
        device = resolve_device(backend.device)
        tiny = backend.student_init == "fresh" and backend.student in PRESETS and backend.student.startswith("tiny-")
        if device.type == "cpu" and tiny:
            threads = 1
    if threads is not None:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


@dataclass(frozen=True)
class Spaces:
    """The spaces a :class:`DistillationEnv` of a config will have, known before it is built."""

    observation: gym.spaces.Box
    action: gym.spaces.Space
    num_teachers: int
    regression: bool
    meaning: dict[str, Any] = field(default_factory=dict)
    """What the actions and observations stand for (saved with a learned policy and checked when it
    is loaded): the action labels (menu names, or the components of a multidiscrete/box action),
    the observation features, and the action bins."""


def expected_spaces(config: EnvConfig) -> Spaces:
    """The env's spaces from the config alone: no teacher is trained, no data encoded.

    :raises ConfigError: an unknown task, an empty teacher list or a bad menu.
    """
    backend = config.backend
    if not backend.teachers:
        raise ConfigError("the environment needs at least one teacher (--teachers is empty)")
    try:
        regression = get_task_spec(backend.task).is_regression
    except UnknownTaskError:  # a custom data file: its spec comes from reading it (cheap)
        regression = load_task_data(backend).spec.is_regression
    num_teachers = len(backend.teachers)
    codec = make_codec(config, num_teachers, regression)
    return Spaces(observation_space(num_teachers, codec.dim), codec.space, num_teachers, regression,
                  env_meaning(config, num_teachers, regression, codec))


def env_meaning(config: EnvConfig, num_teachers: int, regression: bool, codec: Any = None) -> dict[str, Any]:
    """What an env's actions and observations stand for (:attr:`Spaces.meaning`); ``codec``: the
    env's action codec when the caller has it (else built from the config)."""
    codec = codec if codec is not None else make_codec(config, num_teachers, regression)
    meaning: dict[str, Any] = {
        "action_space": config.action_space, "actions": list(codec.labels),
        "observations": list(observation_names(num_teachers, codec.dim, codec.labels)),
    }
    if config.action_space != "discrete":
        meaning["bins"] = {"fraction_bins": list(config.fraction_bins), "weight_bins": list(config.weight_bins),
                           "r_min": config.r_min}
    return meaning


def check_algorithm(algo: str, spaces: Spaces) -> None:
    """Refuse an algorithm that cannot act in the action space, before any work."""
    fits = compatible_algorithms(spaces.action)
    if algo not in fits:
        kind = type(spaces.action).__name__
        raise ConfigError(
            f"algorithm {algo!r} cannot act in the {kind} action space {spaces.action}; use --algo one of "
            f"{list(fits)}, or another --action-space (dqn: discrete; sac: box; ppo, a2c: any)"
        )


def build_env(config: EnvConfig, spaces: Spaces | None = None) -> DistillationEnv:
    """The process's one environment: the distiller (data, teachers, caches) is built here, once.

    Teachers train on first use with the backend's progress bars; episodes then run without
    per-epoch bars (the workflows show one bar per episode instead).
    """
    distiller = build_distiller(config.backend, quiet_epochs=True)
    env = DistillationEnv(config, distiller=distiller)
    if spaces is not None and (env.observation_space != spaces.observation or env.action_space != spaces.action):
        raise ConfigError(
            f"the built env has spaces {env.observation_space}, {env.action_space} but the config predicted "
            f"{spaces.observation}, {spaces.action}; this is a bug in agents.spaces.expected_spaces"
        )
    return env


class SpacesOnlyEnv(gym.Env):
    """Stands in for a :class:`DistillationEnv` where only its spaces matter (loading a policy
    before any heavy work); it cannot run episodes."""

    def __init__(self, spaces: Spaces) -> None:
        self.observation_space = spaces.observation
        self.action_space = spaces.action

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        raise RuntimeError("SpacesOnlyEnv only carries spaces; act in a DistillationEnv (agents.spaces.build_env)")

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        raise RuntimeError("SpacesOnlyEnv only carries spaces; act in a DistillationEnv (agents.spaces.build_env)")
