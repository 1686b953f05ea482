"""Gymnasium environments of DynaKD: the KD run as an environment (``DynamicKD-v0``).

``import envs`` registers:

* ``DynamicKD-v0`` — ``gymnasium.make("DynamicKD-v0", config=EnvConfig(...))``; without a config,
  the default synthetic task with tiny preset teachers (trained on first use);
* ``DynamicKD-tiny-v0`` — a tiny run for tests and demos (see :func:`envs.config.tiny_config`),
  a few seconds per episode on CPU; pass ``config=tiny_config(cache_dir=...)`` to move its cache.
"""

from __future__ import annotations

import gymnasium

from envs.actions import (
    ActionCodec,
    BoxCodec,
    MenuCodec,
    MultiDiscreteCodec,
    default_menu,
    make_codec,
    named_plans,
    plan_fields,
)
from envs.config import EnvConfig, tiny_backend, tiny_config
from envs.distillation_env import DistillationEnv
from envs.observation import observation_names, observation_space
from envs.records import StepInfo, is_step_info
from envs.reward import step_reward
from envs.surrogate import SurrogateModel, make_surrogate_env

ENTRY_POINT = "envs.distillation_env:DistillationEnv"

if "DynamicKD-v0" not in gymnasium.registry:
    gymnasium.register(id="DynamicKD-v0", entry_point=ENTRY_POINT)
if "DynamicKD-tiny-v0" not in gymnasium.registry:
    gymnasium.register(id="DynamicKD-tiny-v0", entry_point=ENTRY_POINT, kwargs={"config": tiny_config()})

__all__ = [
    "ActionCodec", "BoxCodec", "DistillationEnv", "EnvConfig", "MenuCodec", "MultiDiscreteCodec", "StepInfo", "default_menu",
    "make_codec", "named_plans", "plan_fields", "observation_names", "observation_space", "is_step_info", "step_reward", "SurrogateModel", "make_surrogate_env", "tiny_backend",
    "tiny_config",
]
