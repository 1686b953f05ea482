"""Several KD environments at once: SB3's ``DummyVecEnv`` / ``SubprocVecEnv`` or Ray actors
(:mod:`agents.ray_vec_env`), all with the same training seeds.

Training episode i uses student seed ``first_seed + i`` whatever the number of envs: env k of n
runs episodes ``k, k + n, k + 2n, ...`` (:class:`SeededEpisodes` with ``stride=n``). DynaKD's
episodes all have the same number of decisions, so the n envs start and end their episodes on
the same vector step and :class:`agents.EpisodeLogger` numbers them ``round * n + k``: episode
i of ``episodes.jsonl`` is the one with seed ``first_seed + i``, as with one env.

An env in another process (a subprocess or a Ray actor) is built there by :class:`EnvFactory`, a
small picklable recipe: its distiller loads the teachers and the teacher-output cache from
``cache_dir``, which the driver filled first (build the driver's env before the vector env), so
no process fine-tunes a teacher again.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import gymnasium as gym
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv

from envs import DistillationEnv, EnvConfig
from kd_backend.errors import ConfigError

logger = logging.getLogger(__name__)

VecEnvKind = Literal["dummy", "subproc", "ray"]
VEC_ENVS: tuple[str, ...] = ("dummy", "subproc", "ray")


class SeededEpisodes(gym.Wrapper):
    """Training episodes with known seeds: the j-th reset uses student seed ``first_seed + j * stride``
    (folded into a pool of ``pool`` seeds from ``base_seed`` when one is given).

    SB3 reseeds or auto-resets the env on its own; this wrapper ignores the seed it is given so
    that the training seeds are reproducible, resumable and disjoint from the evaluation seeds.
    With n envs, env k gets ``first_seed + k`` and ``stride=n``, so together they run episodes
    ``first_seed, first_seed + 1, ...`` in order; with a pool, episode i uses seed
    ``base_seed + (i - base_seed) mod pool``, so episodes repeat seeds (and, with the env's
    ``branch_cache``, replay shared prefixes of plans).

    :param env: the :class:`DistillationEnv`.
    :param first_seed: episode counter of the next episode (its seed without a pool).
    :param stride: counter step between this env's episodes (the number of envs).
    :param pool: number of distinct training seeds; None = every episode a new one.
    :param base_seed: first seed of the pool (the run's ``backend.seed``); None = ``first_seed``.
    """

    def __init__(self, env: gym.Env, first_seed: int, stride: int = 1, pool: int | None = None,
                 base_seed: int | None = None) -> None:
        super().__init__(env)
        if stride < 1:
            raise ConfigError(f"SeededEpisodes stride={stride!r} must be >= 1 (the number of envs)")
        if pool is not None and (not isinstance(pool, int) or pool < 1):
            raise ConfigError(f"SeededEpisodes pool={pool!r} must be None or an integer >= 1")
        self.next_seed = first_seed
        self.stride = stride
        self.pool = pool
        self.base_seed = first_seed if base_seed is None else base_seed

    def seed_of(self, counter: int) -> int:
        """The student seed of episode counter ``counter``."""
        if self.pool is None:
            return counter
        return self.base_seed + (counter - self.base_seed) % self.pool

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        seed, self.next_seed = self.seed_of(self.next_seed), self.next_seed + self.stride
        return self.env.reset(seed=seed, options=options)

    def episode_state(self) -> dict[str, int]:
        """What a restarted copy needs to redo the current episode (see ``RayVecEnv``)."""
        return {"next_seed": self.next_seed}

    def load_episode_state(self, state: dict[str, int]) -> None:
        """Undo :meth:`episode_state`: the next reset uses ``state['next_seed']``."""
        self.next_seed = int(state["next_seed"])


def absolute_paths(config: EnvConfig) -> EnvConfig:
    """``config`` with its local paths (``cache_dir``, ``data_dir``, a task file, checkpoint folders
    of teachers or student) made absolute, so that a process with another working directory (a
    Ray worker, a Tune trial) finds the same files, and the same teacher cache."""
    from pathlib import Path

    def folder(name: str) -> str:  # a local folder wins over a preset of its name, as in kd_backend.pipeline
        return str(Path(name).resolve()) if Path(name).is_dir() else name

    b = config.backend
    backend = dataclasses.replace(
        b, cache_dir=str(Path(b.cache_dir).resolve()),
        data_dir=None if b.data_dir is None else str(Path(b.data_dir).resolve()),
        task=str(Path(b.task).resolve()) if Path(b.task).is_file() else b.task,
        teachers=tuple(folder(t) for t in b.teachers), student=folder(b.student),
    )
    return dataclasses.replace(config, backend=backend)


@dataclass(frozen=True)
class EnvFactory:
    """A picklable recipe for one training env of a vector env: ``factory()`` builds it.

    :param config: the env config (its distiller loads teachers and caches from ``cache_dir``).
    :param first_seed: seed of this env's first episode.
    :param stride: seed step between its episodes (the number of envs).
    :param threads: torch CPU threads in the process that builds it (None = leave torch's setting).
    """

    config: EnvConfig
    first_seed: int = 0
    stride: int = 1
    threads: int | None = 1
    pool: int | None = None
    base_seed: int | None = None

    def __post_init__(self) -> None:
        if self.stride < 1:
            raise ConfigError(f"EnvFactory.stride={self.stride!r} must be >= 1 (the number of envs)")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"EnvFactory.threads={self.threads!r} must be >= 1 or None")

    def __call__(self) -> gym.Env:
        import torch

        from kd_backend.pipeline import build_distiller

        if self.threads is not None:
            torch.set_num_threads(self.threads)
        distiller = build_distiller(self.config.backend, quiet_epochs=True)
        return SeededEpisodes(DistillationEnv(self.config, distiller=distiller), self.first_seed, self.stride,
                              pool=self.pool, base_seed=self.base_seed)


def make_vec_env(
    kind: VecEnvKind,
    config: EnvConfig,
    n_envs: int,
    first_seed: int,
    *,
    local_env: gym.Env | None = None,
    threads: int | None = 1,
    seed_pool: int | None = None,
    base_seed: int | None = None,
    **ray_options: Any,
) -> VecEnv:
    """``n_envs`` training envs of ``config`` in a vector env of ``kind``, episode i seeded ``first_seed + i``.

    :param kind: ``dummy`` (one process), ``subproc`` (one process per env) or ``ray`` (one Ray actor
        per env; ``ray_options`` go to :class:`agents.ray_vec_env.RayVecEnv`).
    :param config: the env config.
    :param n_envs: number of envs.
    :param first_seed: seed of episode 0 of this learn call.
    :param local_env: with ``dummy``, an already built env (the driver's) to use as env 0 instead of
        building another distiller in this process.
    :param threads: torch threads per env process (``subproc``, ``ray``).
    :param seed_pool: fold the episode seeds into this many (see :class:`SeededEpisodes`).
    :param base_seed: first seed of the pool.
    :raises ConfigError: an unknown kind or ``n_envs < 1``.
    """
    if kind not in VEC_ENVS:
        raise ConfigError(f"vec_env={kind!r} is not one of {list(VEC_ENVS)}")
    if not isinstance(n_envs, int) or n_envs < 1:
        raise ConfigError(f"n_envs={n_envs!r} must be an integer >= 1")
    config = absolute_paths(config)  # other processes may run in another directory
    factories = [EnvFactory(config, first_seed + k, n_envs, threads, seed_pool, base_seed) for k in range(n_envs)]
    if kind == "dummy":
        fns: list[Callable[[], gym.Env]] = list(factories)
        if local_env is not None:
            fns[0] = lambda: SeededEpisodes(local_env, first_seed, n_envs, pool=seed_pool, base_seed=base_seed)
        return DummyVecEnv(fns)
    if kind == "subproc":
        return SubprocVecEnv(factories, start_method="spawn")
    from agents.ray_vec_env import RayVecEnv

    return RayVecEnv(factories, **ray_options)

