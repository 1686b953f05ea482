"""``RayVecEnv``: an SB3 ``VecEnv`` whose sub-environments are Ray actors, on one machine or a cluster.

Each actor holds one env (built in the actor by a picklable factory such as
:class:`agents.vec_env.EnvFactory`) and reserves the resources it asks for (``num_cpus``, a
fraction of a GPU with ``num_gpus``). ``step_async`` sends every action at once and ``step_wait``
collects the results as they come (``ray.wait``), so the envs step in parallel; the semantics are
exactly ``DummyVecEnv``'s: ``done = terminated or truncated``, ``info["TimeLimit.truncated"]``, and
a finished env is reset at once, its last observation in ``info["terminal_observation"]``.

**Heavy state once per node.** Teachers are fine-tuned and their outputs cached on disk
(``cache_dir``); a driver that builds its own env first fills the cache for every actor of its
node, and ``warm_up`` runs the factory once on each other node before the actors start there, so
actors only load from the cache instead of each fine-tuning (a shared ``cache_dir`` on a network
file system makes that a no-op).

**Fault tolerance.** The driver keeps, per env, how its current episode started (the seed and
options of the reset, the wrapper state a restarted copy needs, see
:meth:`agents.vec_env.SeededEpisodes.episode_state`) and the actions taken since. When an actor
dies (its process is killed, its node lost) the call fails with ``RayActorError``; the env gets a
new actor, which resets to the same seed and replays the episode's actions (KD runs are
deterministic for a seed and plans, bit for bit on the CPU), and the failed call is sent again.
The learner never sees the replayed steps, so ``episodes.jsonl`` and the rollout stay exactly as
without the failure. Each restart is logged (``logging`` and, with ``restart_log``, a JSON line)
and counted in :attr:`RayVecEnv.restarts`; more than ``max_restarts`` for one env raise
:class:`RayEnvError`. Values set with ``set_attr`` are set again on the new actor; side effects of
``env_method`` calls are not replayed.

Ray is an optional dependency (``pip install -e ".[ray]"``); :func:`require_ray` says so.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env.base_vec_env import (
    VecEnv,
    VecEnvIndices,
    VecEnvObs,
    VecEnvStepReturn,
)

from kd_backend.errors import ConfigError, DynaKDError

logger = logging.getLogger(__name__)

RAY_EXTRA = 'pip install -e ".[ray]"'
START_WARN_S = 60.0  # while actors wait for resources, RayVecEnv warns this often (seconds)


class RayEnvError(DynaKDError):
    """A Ray sub-environment that keeps dying, or Ray that cannot be started."""


def require_ray() -> Any:
    """Import ``ray``, or fail with the install command of DynaKD's ``ray`` extra."""
    try:
        import ray
    except ImportError as e:
        raise ConfigError(
            f"Ray is not installed ({e}); the Ray vector env and the PBT baseline need DynaKD's ray extra: "
            f"{RAY_EXTRA}"
        ) from e
    return ray


def init_ray(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None, **kwargs: Any) -> Any:
    """Connect to a Ray cluster (``address``: ``auto`` or ``host:port``), or start a local Ray when None.

    Does nothing if Ray is already initialised in this process. A local Ray gets ``num_cpus`` /
    ``num_gpus`` (None = all of the machine's) and no dashboard.

    :return: the ``ray`` module.
    """
    ray = require_ray()
    if ray.is_initialized():
        return ray
    if address is None:
        ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, **kwargs)
    else:
        try:
            ray.init(address=address, **kwargs)
        except ConnectionError as e:
            raise RayEnvError(
                f"cannot connect to the Ray cluster at {address!r} ({e}); start one with `ray start --head`, "
                "or drop --ray-address to run a local Ray"
            ) from e
    return ray


class _EnvActor:
    """The body of one Ray actor: one env, DummyVecEnv's step/auto-reset, and episode replay."""

    def __init__(self, env_fn: Callable[[], gym.Env]) -> None:
        from stable_baselines3.common.vec_env.patch_gym import _patch_env

        self.env = _patch_env(env_fn())

    def _episode_state(self) -> Any:
        try:
            return self.env.get_wrapper_attr("episode_state")()
        except AttributeError:
            return None

    def reset(self, seed: int | None, options: dict | None) -> tuple[Any, dict, Any, Any]:
        """Reset; also returns the wrapper state before and after (for a restarted copy)."""
        before = self._episode_state()
        obs, info = self.env.reset(seed=seed, **({"options": options} if options else {}))
        return obs, info, before, self._episode_state()

    def step(self, action: Any) -> tuple[Any, float, bool, dict, dict | None, Any, Any]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        done = bool(terminated or truncated)
        info["TimeLimit.truncated"] = bool(truncated and not terminated)
        reset_info = before = after = None
        if done:
            info["terminal_observation"] = obs
            before = self._episode_state()
            obs, reset_info = self.env.reset()
            after = self._episode_state()
        return obs, float(reward), done, info, reset_info, before, after

    def restore(self, state: Any, seed: int | None, options: dict | None, actions: Sequence[Any],
                attrs: Sequence[tuple[str, Any]], reset: bool) -> int:
        """Bring a fresh copy to where a dead actor was: set attrs, reset as it did, replay actions."""
        for name, value in attrs:
            setattr(self.env, name, value)
        if state is not None:
            self.env.get_wrapper_attr("load_episode_state")(state)
        if reset:
            self.env.reset(seed=seed, **({"options": options} if options else {}))
        for action in actions:
            self.env.step(action)
        return len(actions)

    def set_episode_state(self, state: Any) -> None:
        if state is not None:
            self.env.get_wrapper_attr("load_episode_state")(state)

    def get_attr(self, name: str) -> Any:
        return self.env.get_wrapper_attr(name)

    def set_attr(self, name: str, value: Any) -> None:
        setattr(self.env, name, value)

    def env_method(self, name: str, args: tuple, kwargs: dict) -> Any:
        return self.env.get_wrapper_attr(name)(*args, **kwargs)

    def is_wrapped(self, wrapper_class: type) -> bool:
        from stable_baselines3.common import env_util

        return env_util.is_wrapped(self.env, wrapper_class)

    def render(self) -> Any:
        return self.env.render()

    def spaces(self) -> tuple[gym.Space, gym.Space, dict, str | None]:
        return self.env.observation_space, self.env.action_space, dict(self.env.metadata), self.env.render_mode

    def pid(self) -> int:
        return os.getpid()

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def close(self) -> None:
        self.env.close()


class _Episode:
    """How an env's current episode started, and what it did since (the driver's replay log)."""

    __slots__ = ("state", "seed", "options", "actions", "started")

    def __init__(self, state: Any = None, seed: int | None = None, options: dict | None = None,
                 started: bool = True) -> None:
        self.state, self.seed, self.options, self.started = state, seed, options, started
        self.actions: list[Any] = []


def warm_up(env_fn: Callable[[], gym.Env], skip_nodes: Sequence[str] = (), num_cpus: float = 1,
            num_gpus: float = 0) -> list[str]:
    """Build one env on every alive Ray node (except ``skip_nodes``; the nodes in parallel), so that
    each node fine-tunes its teachers and fills its ``cache_dir`` once before its actors start.

    :return: the node ids warmed up.
    """
    ray = require_ray()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(max_calls=1)  # the worker exits after it: its teachers' memory and its CPU lease go at once
    def _build(fn: Callable[[], gym.Env]) -> str:
        fn().close()
        return ray.get_runtime_context().get_node_id()

    nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive") and n["NodeID"] not in set(skip_nodes)
             and n.get("Resources", {}).get("CPU", 0) >= num_cpus and n.get("Resources", {}).get("GPU", 0) >= num_gpus]
    refs = [_build.options(num_cpus=num_cpus, num_gpus=num_gpus,
                           scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False)).remote(env_fn)
            for n in nodes]
    return list(ray.get(refs))


class RayVecEnv(VecEnv):
    """A vector env of Ray actors, each holding one sub-environment (see the module docstring).

    :param env_fns: one picklable factory per env (e.g. :class:`agents.vec_env.EnvFactory`).
    :param num_cpus: CPUs each actor reserves.
    :param num_gpus: GPUs each actor reserves (a fraction shares one GPU: 0.25 = 4 envs per GPU).
    :param max_restarts: restarts allowed per env before :class:`RayEnvError` is raised.
    :param address: a Ray cluster (``auto``, ``host:port``) to connect to if Ray is not initialised
        yet; None starts a local Ray with ``local_cpus`` CPUs.
    :param local_cpus: CPUs of a local Ray (None = the machine's).
    :param warm_up_nodes: run each factory's first copy once on every node other than the driver's
        before starting actors there (:func:`warm_up`), so a node fine-tunes its teachers once.
    :param restart_log: a JSONL file to append one line per restart to (None = logging only).
    :param actor_options: more ``ray.remote`` options of the actors (``resources``, ``runtime_env``, ...).
    :param start_timeout_s: give up, with :class:`RayEnvError`, if the actors are not all placed and
        built within this many seconds; ``None`` waits as long as it takes (an autoscaler may be adding
        nodes), warning every minute with what the cluster has free.
    """

    def __init__(
        self,
        env_fns: Sequence[Callable[[], gym.Env]],
        *,
        num_cpus: float = 1,
        num_gpus: float = 0,
        max_restarts: int = 3,
        address: str | None = None,
        local_cpus: int | None = None,
        warm_up_nodes: bool = True,
        restart_log: str | Path | None = None,
        actor_options: dict[str, Any] | None = None,
        start_timeout_s: float | None = None,
    ) -> None:
        if not env_fns:
            raise ConfigError("RayVecEnv needs at least one env factory (env_fns is empty)")
        if num_cpus < 0 or num_gpus < 0:
            raise ConfigError(f"RayVecEnv num_cpus={num_cpus!r}, num_gpus={num_gpus!r} must be >= 0")
        if not isinstance(max_restarts, int) or max_restarts < 0:
            raise ConfigError(f"RayVecEnv max_restarts={max_restarts!r} must be an integer >= 0")
        self._ray = init_ray(address, num_cpus=local_cpus)
        self.env_fns = list(env_fns)
        self.max_restarts = max_restarts
        self.restart_log = None if restart_log is None else Path(restart_log)
        self._options_ray = {"num_cpus": num_cpus, "num_gpus": num_gpus, "max_restarts": 0, **(actor_options or {})}
        self._remote = self._ray.remote(_EnvActor)
        if warm_up_nodes and len(self._ray.nodes()) > 1:
            here = self._ray.get_runtime_context().get_node_id()
            warmed = warm_up(self.env_fns[0], skip_nodes=[here], num_cpus=num_cpus, num_gpus=num_gpus)
            logger.info("warmed up teacher caches on %d other node(s)", len(warmed))
        total = self._ray.cluster_resources()
        for name, per_env in (("CPU", num_cpus), ("GPU", num_gpus)):
            if per_env and len(self.env_fns) * per_env > total.get(name, 0):
                logger.warning(
                    "%d Ray envs x %g %s each exceed the cluster's %g %s: the rest wait until resources free up "
                    "(or an autoscaler adds nodes); lower --n-envs or the resources per env",
                    len(self.env_fns), per_env, name, total.get(name, 0), name)
        self.actors = [self._new_actor(fn) for fn in self.env_fns]
        n = len(self.env_fns)
        self.restarts = [0] * n
        self._episodes = [_Episode(started=False) for _ in range(n)]
        self._state_now: list[Any] = [None] * n  # wrapper state after the latest reset
        self._attrs: list[list[tuple[str, Any]]] = [[] for _ in range(n)]
        self._pending: list[Any] = []
        self._actions: Any = None
        self.closed = False
        obs_space, act_space, metadata, _ = self._ray.get(self._started(start_timeout_s))
        super().__init__(n, obs_space, act_space)
        self.metadata = metadata

    def _started(self, limit: float | None) -> Any:
        """Wait until every actor has been placed and built its env; return actor 0's ``spaces`` call.

        Ray queues an actor it cannot place, silently and without limit. While any is pending, this
        warns every :data:`START_WARN_S` seconds with what the cluster has free, so a job waiting on a
        busy cluster says so instead of hanging without a word; after ``limit`` seconds (None: never)
        it gives up with :class:`RayEnvError`.
        """
        refs = [actor.spaces.remote() for actor in self.actors]
        start = time.perf_counter()
        while True:
            step = START_WARN_S if limit is None else max(0.0, min(START_WARN_S, start + limit - time.perf_counter()))
            _, pending = self._ray.wait(refs, num_returns=len(refs), timeout=step)
            if not pending:
                return refs[0]
            waited = time.perf_counter() - start
            free, total = self._ray.available_resources(), self._ray.cluster_resources()
            why = (f"{len(pending)} of {len(refs)} Ray envs not started after {waited:.0f} s (each needs "
                   f"{self._options_ray['num_cpus']:g} CPU, {self._options_ray['num_gpus']:g} GPU; the cluster has "
                   f"{free.get('CPU', 0):g} of {total.get('CPU', 0):g} CPU and {free.get('GPU', 0):g} of "
                   f"{total.get('GPU', 0):g} GPU free)")
            if limit is not None and waited >= limit:
                for actor in self.actors:  # pending or idle: nothing to close gracefully
                    self._ray.kill(actor, no_restart=True)
                self.closed = True
                raise RayEnvError(f"{why}: another job holds the resources, or the cluster is too small. Free "
                                  "them, lower --n-envs or the resources per env, or wait longer")
            logger.warning("%s: another job may hold them, or an autoscaler is adding nodes; lower --n-envs or "
                           "the resources per env if this does not end", why)

    def _new_actor(self, env_fn: Callable[[], gym.Env]) -> Any:
        return self._remote.options(**self._options_ray).remote(env_fn)

    # ------------------------------------------------------------------ fault tolerance
    def _restart(self, i: int, error: BaseException, during: str) -> None:
        """Replace env ``i``'s dead actor and bring the new one to the start of the failed call."""
        self.restarts[i] += 1
        if self.restarts[i] > self.max_restarts:
            raise RayEnvError(
                f"Ray env {i} died {self.restarts[i]} times (last during {during}: {error}); max_restarts="
                f"{self.max_restarts} reached. Check the actors' logs (out of memory? a lost node?) or allow "
                "more with --ray-max-restarts"
            ) from error
        episode = self._episodes[i]
        logger.warning("Ray env %d died during %s (%s); restart %d/%d, replaying %d step(s) of its episode",
                       i, during, type(error).__name__, self.restarts[i], self.max_restarts, len(episode.actions))
        try:
            self._ray.kill(self.actors[i], no_restart=True)
        except Exception as e:  # noqa: BLE001 - the actor is already gone; nothing to clean up
            logger.debug("killing the dead actor of env %d: %s", i, e)
        start = time.perf_counter()
        self.actors[i] = self._new_actor(self.env_fns[i])
        try:
            if during == "reset":  # the failed call is a reset: go back to just before it
                self._ray.get(self.actors[i].restore.remote(None, None, None, [], self._attrs[i], False))
                self._ray.get(self.actors[i].set_episode_state.remote(self._state_now[i]))
            else:
                self._ray.get(self.actors[i].restore.remote(
                    episode.state, episode.seed, episode.options, list(episode.actions), self._attrs[i],
                    episode.started))
        except self._ray.exceptions.RayActorError as e:  # the new actor died too: count it, try again
            self._restart(i, e, during)
            return
        if self.restart_log is not None:
            self.restart_log.parent.mkdir(parents=True, exist_ok=True)
            with self.restart_log.open("a") as f:
                f.write(json.dumps({
                    "env": i, "restart": self.restarts[i], "during": during, "error": type(error).__name__,
                    "replayed_steps": len(episode.actions), "seconds": round(time.perf_counter() - start, 3),
                    "time": time.time(),
                }) + "\n")

    def _call(self, i: int, method: str, *args: Any) -> Any:
        """``actor.method(*args)`` for env ``i``, restarting the actor while it keeps dying."""
        while True:
            try:
                return self._ray.get(getattr(self.actors[i], method).remote(*args))
            except self._ray.exceptions.RayActorError as e:
                self._restart(i, e, method)

    # ------------------------------------------------------------------ VecEnv API
    def reset(self) -> VecEnvObs:
        seeds, options = list(self._seeds), [dict(o) if o else None for o in self._options]
        refs = [a.reset.remote(seeds[i], options[i]) for i, a in enumerate(self.actors)]
        results = self._gather(refs, lambda i: self.actors[i].reset.remote(seeds[i], options[i]), "reset")
        obs = []
        for i, (o, info, before, after) in enumerate(results):
            self.reset_infos[i] = info
            self._episodes[i] = _Episode(before, seeds[i], options[i])
            self._state_now[i] = after
            obs.append(o)
        self._reset_seeds()
        self._reset_options()
        return self._stack(obs)

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions
        self._pending = [a.step.remote(actions[i]) for i, a in enumerate(self.actors)]

    def step_wait(self) -> VecEnvStepReturn:
        actions = self._actions
        results = self._gather(self._pending, lambda i: self.actors[i].step.remote(actions[i]), "step")
        self._pending = []
        obs, rewards, dones, infos = [], np.zeros(self.num_envs, np.float32), np.zeros(self.num_envs, bool), []
        for i, (o, reward, done, info, reset_info, before, after) in enumerate(results):
            rewards[i], dones[i] = reward, done
            if done:
                self.reset_infos[i] = reset_info
                self._episodes[i] = _Episode(before)  # auto-reset: no seed, no options (as DummyVecEnv)
                self._state_now[i] = after
            else:
                self._episodes[i].actions.append(actions[i])
            obs.append(o)
            infos.append(info)
        return self._stack(obs), rewards, dones, infos

    def _gather(self, refs: list[Any], resend: Callable[[int], Any], during: str) -> list[Any]:
        """Results of one call per env, in env order, waiting on whichever finishes first
        (``ray.wait``) and restarting an env whose actor died, then resending its call."""
        refs = list(refs)
        results: list[Any] = [None] * len(refs)
        index = {ref: i for i, ref in enumerate(refs)}
        waiting = list(refs)
        while waiting:
            ready, waiting = self._ray.wait(waiting, num_returns=1)
            ref = ready[0]
            i = index.pop(ref)
            try:
                results[i] = self._ray.get(ref)
            except self._ray.exceptions.RayActorError as e:
                self._restart(i, e, during)
                new = resend(i)
                index[new] = i
                waiting.append(new)
        return results

    def _stack(self, obs: list[Any]) -> VecEnvObs:
        from stable_baselines3.common.vec_env.util import dict_to_obs, obs_space_info

        keys, shapes, dtypes = obs_space_info(self.observation_space)
        buf = {k: np.stack([o if k is None else o[k] for o in obs]).astype(dtypes[k], copy=False) for k in keys}
        return dict_to_obs(self.observation_space, buf)

    def close(self) -> None:
        if self.closed:
            return
        for i, actor in enumerate(self.actors):
            try:
                self._ray.get(actor.close.remote(), timeout=30)
            except Exception as e:  # noqa: BLE001 - closing a dead or hung actor: kill it below
                logger.debug("closing Ray env %d: %s", i, e)
            self._ray.kill(actor, no_restart=True)
        self.closed = True

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        return [self._call(i, "get_attr", attr_name) for i in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        for i in self._get_indices(indices):
            self._call(i, "set_attr", attr_name, value)
            self._attrs[i] = [(n, v) for n, v in self._attrs[i] if n != attr_name] + [(attr_name, value)]

    def env_method(self, method_name: str, *method_args: Any, indices: VecEnvIndices = None,
                   **method_kwargs: Any) -> list[Any]:
        return [self._call(i, "env_method", method_name, method_args, method_kwargs) for i in self._get_indices(indices)]

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        return [self._call(i, "is_wrapped", wrapper_class) for i in self._get_indices(indices)]

    def get_images(self) -> Sequence[np.ndarray | None]:
        if self.render_mode != "rgb_array":
            return [None for _ in self.actors]
        return [self._call(i, "render") for i in range(self.num_envs)]

    def actor_pids(self) -> list[int]:
        """The process id of each env's actor (to inspect, or to kill one in a test)."""
        return [self._call(i, "pid") for i in range(self.num_envs)]
