"""Benchmark 7 — Ray throughput: episodes per hour with 1 and 2 Ray actors against SubprocVecEnv,
and the per-step overhead of a Ray actor over a local step.

    python experiments/benchmarks/ray_throughput.py --episodes 8
    python experiments/benchmarks/ray_throughput.py --quick          # smoke test (the test suite)

Every setting runs the same episodes (env k of n: seeds k, k + n, ...; the same seeded random
actions), so the rows differ only in how the envs run; the settings run ``--repeats`` times,
interleaved, and the best run counts (the machine is shared). The overhead rows step a *null* env that
returns a recorded observation and info of the real env without training: the difference between
a Ray actor and a local step (``DummyVecEnv``) is Ray's cost per step (a remote call, pickling the
action and the step's result, ``ray.wait``).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from _bench import print_table, set_threads, write_json  # noqa: I001

from agents.cli import cli
from agents.configs import default_env
from agents.vec_env import EnvFactory
from envs import EnvConfig


@dataclass(frozen=True)
class Args:
    env: EnvConfig = replace(default_env(), backend=replace(default_env().backend, progress=False))
    """The environment (default: the embedded default of learn_policy.py)."""
    episodes: int = 8
    """Episodes per setting (counted over all its envs; a multiple of 2)."""
    repeats: int = 2
    """Runs of every setting, interleaved (alternating order); the best counts."""
    null_steps: int = 200
    """Steps of the null env per overhead row."""
    threads: int = 1
    """torch intra-op threads per env process."""
    ray_address: str | None = None
    """A Ray cluster to run the actors on; None = a local Ray with this machine's CPUs."""
    out: str = "runs/bench/ray_throughput"
    """Output folder (ray_throughput.json)."""
    quick: bool = False
    """Smoke-test size (for the test suite)."""


class NullEnv(gym.Env):
    """Returns a recorded observation and info at no compute: what remains is the stepping overhead."""

    def __init__(self, observation_space: gym.Space, action_space: gym.Space, obs: np.ndarray, info: dict,
                 length: int) -> None:
        self.observation_space, self.action_space = observation_space, action_space
        self.obs, self.info, self.length, self.t = obs, info, length, 0

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[Any, dict]:
        super().reset(seed=seed)
        self.t = 0
        return self.obs, dict(self.info)

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        self.t += 1
        return self.obs, 0.0, self.t >= self.length, False, dict(self.info)


class _NullFactory:
    def __init__(self, *args: Any) -> None:
        self.args = args

    def __call__(self) -> NullEnv:
        return NullEnv(*self.args)


def _run(vec, episodes: int, seed: int) -> tuple[float, int]:
    """Seconds to finish ``episodes`` episodes (over all envs) with seeded random actions, and steps taken."""
    space = vec.action_space
    space.seed(seed)
    vec.reset()
    done, steps, t0 = 0, 0, time.perf_counter()
    while done < episodes:
        _, _, dones, _ = vec.step(np.array([space.sample() for _ in range(vec.num_envs)]))
        done += int(dones.sum())
        steps += 1
    return time.perf_counter() - t0, steps


def run(args: Args) -> dict:
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

    from agents.ray_vec_env import RayVecEnv, init_ray

    set_threads(args.threads)
    cfg, episodes, null_steps, repeats = args.env, args.episodes, args.null_steps, args.repeats
    if args.quick:
        cfg = replace(cfg, menu=None, backend=replace(cfg.backend, synthetic_train=200, synthetic_dev=50, transfer=100,
                                                      teachers=("tiny-1x64",), teacher_epochs=1, epochs=2, max_seq_length=48))
        episodes, null_steps, repeats = 2, 20, 1
    local = EnvFactory(cfg, 0, 1, args.threads)()  # fills the teacher cache before any other process starts
    local.reset(seed=0)
    obs, _, _, _, info = local.step(local.action_space.sample())
    steps = local.unwrapped.steps_per_episode
    ray = init_ray(args.ray_address, num_cpus=os.cpu_count())

    rows, vecs = [], []
    for kind, n in (("SubprocVecEnv", 1), ("SubprocVecEnv", 2), ("RayVecEnv", 1), ("RayVecEnv", 2)):
        factories = [EnvFactory(cfg, k, n, args.threads) for k in range(n)]
        t0 = time.perf_counter()
        if kind == "SubprocVecEnv":
            vec = SubprocVecEnv(factories, start_method="spawn")
        else:  # both Ray vec envs stay up together: 3 actors must fit the cluster's CPUs
            vec = RayVecEnv(factories, num_cpus=min(1.0, ray.cluster_resources().get("CPU", 1) / 3))
        vec.get_attr("steps_per_episode")  # the envs are built
        vecs.append(vec)
        rows.append({"setting": f"{kind}, {n} env{'s' if n > 1 else ''}", "envs": n,
                     "start s": time.perf_counter() - t0, "runs s": []})
    for rep in range(repeats):  # settings interleaved, best of the repeats: load from elsewhere hits them alike
        for row, vec in (zip(rows, vecs) if rep % 2 == 0 else reversed(list(zip(rows, vecs)))):
            row["runs s"].append(_run(vec, episodes, seed=1)[0])
    for row, vec in zip(rows, vecs):
        vec.close()
        row["episodes/hour"] = episodes / min(row["runs s"]) * 3600
    for r in rows:
        same = next(x for x in rows if x["envs"] == r["envs"] and x["setting"].startswith("SubprocVecEnv"))
        r["vs SubprocVecEnv"] = r["episodes/hour"] / same["episodes/hour"]

    null = _NullFactory(local.observation_space, local.action_space, obs, info, steps)
    overhead = []
    for name, make in (("local step (DummyVecEnv)", lambda: DummyVecEnv([null])), ("Ray actor step", lambda: RayVecEnv([null]))):
        vec = make()
        seconds, taken = _run(vec, max(1, null_steps // steps), seed=2)
        vec.close()
        overhead.append({"setting": name, "ms/step": 1000 * seconds / taken})
    per_step = overhead[1]["ms/step"] - overhead[0]["ms/step"]
    if args.ray_address is None:
        ray.shutdown()
    print_table(rows, ["setting", "episodes/hour", "vs SubprocVecEnv", "start s"],
                title=f"Ray vs SubprocVecEnv ({steps} steps/episode, {episodes} episodes per row)")
    print_table(overhead, ["setting", "ms/step"], title=f"per-step overhead of Ray: {per_step:.3f} ms")
    result = {"config": cfg, "episodes": episodes, "rows": rows, "overhead": overhead, "ray overhead ms/step": per_step}
    write_json(Path(args.out) / "ray_throughput.json", result)
    return result


if __name__ == "__main__":
    cli(run, Args, __doc__)
