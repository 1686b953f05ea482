"""Several training envs at once without Ray: DummyVecEnv / SubprocVecEnv keep the training seeds
(episode i uses seed + i), LearnConfig refuses budgets the envs cannot split, and the Ray extra is
named when Ray is missing."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from agents.configs import LearnConfig
from agents.learning import agent_overrides
from agents.spaces import build_env
from agents.vec_env import make_vec_env
from envs import tiny_config
from kd_backend.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


STEPS = 3


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    path = tmp_path_factory.getbasetemp() / "dynakd-tiny-cache"
    path.mkdir(exist_ok=True)
    cfg = tiny_config(cache_dir=str(path))
    build_env(cfg)  # teachers cached before other processes start
    return cfg


@pytest.mark.parametrize("kind", ["dummy", "subproc"])
def test_vec_envs_run_episode_i_on_seed_first_plus_i(config, kind):
    vec = make_vec_env(kind, config, 2, first_seed=40)
    try:
        vec.reset()
        seeds = []
        for _ in range(2 * STEPS):
            _, _, dones, infos = vec.step(np.zeros(2, dtype=np.int64))
            seeds.append([info["seed"] for info in infos])
        assert seeds[0] == [40, 41] and seeds[STEPS] == [42, 43]
        assert dones.all()
    finally:
        vec.close()


def test_learn_config_refuses_budgets_the_envs_cannot_split():
    with pytest.raises(ConfigError, match="multiple of n_envs=3.*--total-episodes 6"):
        LearnConfig(total_episodes=4, rollout_episodes=2, n_envs=3)
    with pytest.raises(ConfigError, match="rollout_episodes=2 is not a multiple of n_envs=4.*--rollout-episodes 4"):
        LearnConfig(total_episodes=8, rollout_episodes=2, n_envs=4)
    with pytest.raises(ConfigError, match="vec_env"):
        LearnConfig(vec_env="threads")  # type: ignore[arg-type]
    cfg = LearnConfig(total_episodes=8, rollout_episodes=4, n_envs=2)
    assert agent_overrides(cfg, STEPS)["n_steps"] == 2 * STEPS  # per env: 4 episodes over 2 envs


def test_missing_ray_names_the_extra(monkeypatch):
    from agents.ray_vec_env import require_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    with pytest.raises(ConfigError, match=r'pip install -e "\.\[ray\]"'):
        require_ray()
