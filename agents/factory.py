"""SB3 learners built from one function, with defaults for expensive, short episodes.

One KD run is one episode of a handful of steps, each costing a training epoch, so the defaults
favour few, whole-episode rollouts, small batches, small networks and gamma ~ 1:

* PPO: rollouts of 4 whole episodes, minibatches of one episode, gamma 1 (the dense reward then
  sums to the final improvement), entropy bonus 0.01;
* A2C: one whole episode per update, gamma 1, entropy bonus 0.01;
* DQN / SAC: learning starts after 2 episodes, batches of 16, gamma 0.99 (bootstrapped targets
  are steadier below 1).

Policies are 64x64 MLPs on CPU. The algorithm, its hyper-parameters, the seed and the spaces are
saved with the policy as plain JSON (the ``dynakd`` record), so :func:`load_agent` rebuilds it
without being told, and without unpickling anything from the file (see :mod:`agents.storage`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import gymnasium as gym
from gymnasium import spaces
from stable_baselines3 import A2C, DQN, PPO, SAC
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import VecEnv

from agents.storage import (
    META_KEY,
    dynakd_record,
    meaning_mismatch,
    read_policy,
    restore_counters,
    restore_variables,
    space_from_description,
    spaces_equal,
)
from kd_backend.errors import ConfigError

ALGORITHMS: dict[str, type[BaseAlgorithm]] = {"ppo": PPO, "a2c": A2C, "dqn": DQN, "sac": SAC}
SUPPORTED_SPACES: dict[str, tuple[type[spaces.Space], ...]] = {
    "ppo": (spaces.Discrete, spaces.MultiDiscrete, spaces.Box),
    "a2c": (spaces.Discrete, spaces.MultiDiscrete, spaces.Box),
    "dqn": (spaces.Discrete,),
    "sac": (spaces.Box,),
}


def _space_kind(space: spaces.Space) -> str:
    return {spaces.Discrete: "discrete", spaces.MultiDiscrete: "multidiscrete", spaces.Box: "box"}.get(
        type(space), type(space).__name__
    )


def compatible_algorithms(action_space: spaces.Space) -> tuple[str, ...]:
    """Names of the algorithms that can act in ``action_space``."""
    return tuple(name for name, kinds in SUPPORTED_SPACES.items() if isinstance(action_space, kinds))


def _check_algo(algo: str, action_space: spaces.Space) -> str:
    name = algo.lower()
    if name not in ALGORITHMS:
        raise ConfigError(f"unknown algorithm {algo!r}; choose one of {sorted(ALGORITHMS)}")
    if not isinstance(action_space, SUPPORTED_SPACES[name]):
        fits = compatible_algorithms(action_space)
        raise ConfigError(
            f"algorithm {algo!r} cannot act in a {_space_kind(action_space)} action space ({action_space}); "
            f"use one of {list(fits)}, or another EnvConfig.action_space"
        )
    return name


def episode_steps(env: gym.Env | VecEnv) -> int:
    """Decisions per episode of a :class:`DistillationEnv` (plain, wrapped or vectorised)."""
    if isinstance(env, VecEnv):
        return int(env.get_attr("steps_per_episode")[0])
    length = getattr(env.unwrapped, "steps_per_episode", None)
    if length is None:
        raise ConfigError(f"{env} has no steps_per_episode; pass episode_length= to make_agent")
    return int(length)


def default_hyperparameters(algo: str, length: int) -> dict[str, Any]:
    """The defaults of :func:`make_agent` for episodes of ``length`` decisions (see the module docstring)."""
    net = {"net_arch": [64, 64]}
    if algo == "ppo":
        return dict(n_steps=4 * length, batch_size=max(2, length), n_epochs=10, gamma=1.0, gae_lambda=0.95,
                    learning_rate=3e-4, ent_coef=0.01, policy_kwargs=net)
    if algo == "a2c":
        return dict(n_steps=length, gamma=1.0, gae_lambda=0.95, learning_rate=7e-4, ent_coef=0.01, policy_kwargs=net)
    if algo == "dqn":
        return dict(learning_starts=2 * length, buffer_size=10_000, batch_size=16, gamma=0.99, train_freq=1,
                    gradient_steps=1, target_update_interval=4 * length, exploration_fraction=0.5,
                    exploration_final_eps=0.05, learning_rate=1e-3, policy_kwargs=net)
    if algo == "sac":
        return dict(learning_starts=2 * length, buffer_size=10_000, batch_size=16, gamma=0.99, train_freq=1,
                    gradient_steps=1, learning_rate=3e-4, policy_kwargs=net)
    raise ConfigError(f"unknown algorithm {algo!r}; choose one of {sorted(ALGORITHMS)}")


def rollout_episodes(algo: str) -> int:
    """Whole episodes an on-policy learner (PPO, A2C) collects per update by default (its
    ``n_steps`` in :func:`default_hyperparameters` divided by the episode length)."""
    if algo not in ("ppo", "a2c"):
        raise ConfigError(f"algorithm {algo!r} is off-policy: it learns every step, not per rollout of episodes")
    return default_hyperparameters(algo, 1)["n_steps"]


def make_agent(
    algo: str,
    env: gym.Env | VecEnv,
    *,
    tensorboard_log: str | Path | None = None,
    seed: int = 0,
    episode_length: int | None = None,
    device: str = "cpu",
    verbose: int = 0,
    meaning: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> BaseAlgorithm:
    """A PPO, A2C, DQN or SAC learner for ``env`` with DynaKD's defaults.

    :param algo: ``ppo``, ``a2c``, ``dqn`` or ``sac`` (any case).
    :param env: a DynaKD env (plain, wrapped or a VecEnv).
    :param tensorboard_log: folder for SB3's TensorBoard events (None = none).
    :param seed: seed of the learner (network init, exploration).
    :param episode_length: decisions per episode; None = read ``steps_per_episode`` from the env.
    :param device: torch device of the policy (a 64x64 MLP runs best on CPU).
    :param verbose: SB3 verbosity.
    :param meaning: what the env's actions and observations stand for (menu names, feature names:
        ``agents.spaces.Spaces.meaning``), saved with the policy and checked by :func:`load_agent`.
    :param overrides: any constructor argument of the algorithm, replacing the default.
    :raises ConfigError: unknown algorithm, or one that cannot act in the env's action space.
    """
    name = _check_algo(algo, env.action_space)
    length = episode_length if episode_length is not None else episode_steps(env)
    params = default_hyperparameters(name, length)
    params.update(overrides)
    agent = ALGORITHMS[name](
        "MlpPolicy", env, tensorboard_log=None if tensorboard_log is None else str(tensorboard_log),
        seed=seed, device=device, verbose=verbose, **params,
    )
    agent.dynakd_algo = name  # saved with the policy, read back by load_agent
    # Plain JSON in the saved zip's data: what load_agent rebuilds the learner from (no pickle).
    setattr(agent, META_KEY, dynakd_record(name, params, seed, agent.observation_space, agent.action_space, meaning))
    return agent


def load_agent(
    path: str | Path, env: gym.Env | VecEnv, algo: str | None = None, device: str = "cpu",
    meaning: Mapping[str, Any] | None = None,
) -> BaseAlgorithm:
    """Load a learner saved by DynaKD for ``env``, checking first that its spaces match the env's.

    Nothing is unpickled: the learner is rebuilt by :func:`make_agent` from the plain-JSON record
    in the file, and its weights (and optimizer states) are read with ``torch.load(weights_only=True)``;
    see :mod:`agents.storage`.

    :param path: a ``.zip`` written by ``agent.save`` of a learner from :func:`make_agent`.
    :param env: the env to act in.
    :param algo: the algorithm's name; None = the one saved by :func:`make_agent`.
    :param device: torch device of the policy.
    :param meaning: what the env's actions and observations stand for; refused when the policy was
        learned where they stood for something else (a reordered menu, other bins), even with equal spaces.
    :raises ConfigError: missing or foreign file, unknown algorithm, observation/action spaces or
        meanings that differ.
    """
    path = Path(path)
    if not path.exists() and path.with_suffix(".zip").exists():
        path = path.with_suffix(".zip")
    if not path.exists():
        raise ConfigError(f"policy file {path} does not exist")
    data, params, variables = read_policy(path, device=device)
    meta = data[META_KEY]
    saved = {kind: space_from_description(meta.get(f"{kind}_space"), str(path)) for kind in ("action", "observation")}
    mismatches = [
        f"{kind} space {saved[kind]} but the env has {getattr(env, f'{kind}_space')}"
        for kind in ("action", "observation")
        if not spaces_equal(saved[kind], getattr(env, f"{kind}_space"))
    ]
    if mismatches:
        raise ConfigError(
            f"policy {path} was trained with {'; and with '.join(mismatches)}; use the env config the policy "
            "was learned with (teachers, action_space, menu, bins)"
        )
    saved_meaning = meta.get("meaning")
    if meaning is not None and isinstance(saved_meaning, Mapping):
        differs = meaning_mismatch(saved_meaning, meaning)
        if differs:
            raise ConfigError(
                f"policy {path} was learned where its actions and observations meant other things: {differs}; "
                "use the env config it was learned with (its run's config.yaml: menu, action_space, bins, teachers)"
            )
    saved_algo = meta.get("algo")
    if saved_algo and algo and algo.lower() != saved_algo:
        raise ConfigError(f"policy {path} was trained with {saved_algo!r}, not {algo!r}")
    name = _check_algo(algo or saved_algo or "", env.action_space)
    hyperparameters = meta.get("hyperparameters")
    if not isinstance(hyperparameters, dict):
        raise ConfigError(f"policy {path}: its DynaKD record has no hyperparameters mapping")
    if meta.get("unsaved"):
        raise ConfigError(
            f"policy {path} was made with hyper-parameter(s) {meta['unsaved']} that are not plain values and "
            "were not saved (they could only be pickled); pass constants to make_agent"
        )
    try:
        agent = make_agent(name, env, seed=int(meta.get("seed", 0)), episode_length=1, device=device,
                           meaning=meaning if meaning is not None else saved_meaning, **hyperparameters)
        agent.set_parameters(params, exact_match=True, device=device)
    except (TypeError, ValueError, RuntimeError, KeyError) as err:
        raise ConfigError(f"policy {path} does not rebuild as a {name.upper()} learner for this env: {err}") from err
    restore_variables(agent, variables)
    restore_counters(agent, data)
    return agent
