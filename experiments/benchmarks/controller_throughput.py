"""Benchmark 4 — controller throughput: episodes per hour with 1 and 2 environments, and where time goes.

    python experiments/benchmarks/controller_throughput.py --episodes 4

Runs a random controller through SB3 vector envs: one env (``DummyVecEnv``), two envs stepped in
one process (``DummyVecEnv``) and two envs in two processes (``SubprocVecEnv``). The breakdown
times one env's parts: building the heavy state once (data, teacher training/caching), training per
epoch, and the ctrl evaluation per step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from _bench import print_table, set_threads, write_json  # noqa: I001

from agents.cli import cli
from agents.configs import default_env
from envs import DistillationEnv, EnvConfig


@dataclass(frozen=True)
class Args:
    env: EnvConfig = replace(default_env(), backend=replace(default_env().backend, progress=False))
    """The environment (default: the embedded default of learn_policy.py)."""
    episodes: int = 4
    """Episodes per vector-env setting (counted over all its envs)."""
    threads: int = 1
    """torch intra-op threads per process."""
    out: str = "runs/bench/controller_throughput"
    """Output folder (controller_throughput.json)."""
    quick: bool = False
    """Smoke-test size (for the test suite)."""


class _EnvFactory:
    """Picklable env constructor for SubprocVecEnv (each process sets its threads and builds its env)."""

    def __init__(self, cfg: EnvConfig, threads: int) -> None:
        self.cfg, self.threads = cfg, threads

    def __call__(self) -> DistillationEnv:
        set_threads(self.threads)
        return DistillationEnv(self.cfg)


def _episodes_per_hour(vec, episodes: int, seed: int) -> float:
    from stable_baselines3.common.vec_env import VecEnv

    assert isinstance(vec, VecEnv)
    vec.seed(seed)
    vec.reset()
    done_count, t0 = 0, time.perf_counter()
    while done_count < episodes:
        actions = np.array([vec.action_space.sample() for _ in range(vec.num_envs)])
        _, _, dones, _ = vec.step(actions)
        done_count += int(dones.sum())
    return done_count / (time.perf_counter() - t0) * 3600


def run(args: Args) -> dict:
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

    set_threads(args.threads)
    cfg = args.env
    if args.quick:
        cfg = replace(cfg, menu=None, backend=replace(cfg.backend, synthetic_train=200, synthetic_dev=50, transfer=100,
                                                      teachers=("tiny-1x64",), teacher_epochs=1, epochs=2, max_seq_length=48))
    factory = _EnvFactory(cfg, args.threads)
    t0 = time.perf_counter()
    env = factory()  # first build: trains and caches the teachers if the cache is cold
    build_first = time.perf_counter() - t0
    t0 = time.perf_counter()
    env2 = factory()  # a second build reads everything from the cache
    build_cached = time.perf_counter() - t0
    env2.close()
    env.reset(seed=0)
    train_s = eval_s = 0.0
    for _ in range(env.steps_per_episode):
        t0 = time.perf_counter()
        env.distiller.train_epoch(env.codec.decode(env.action_space.sample()), part=0, parts=1)
        train_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        env.distiller.evaluate("ctrl")
        eval_s += time.perf_counter() - t0
    steps = env.steps_per_episode
    rows = []
    for name, make in [
        ("1 env (DummyVecEnv)", lambda: DummyVecEnv([lambda: env])),
        ("2 envs, 1 process (DummyVecEnv)", lambda: DummyVecEnv([factory, factory])),
        ("2 envs, 2 processes (SubprocVecEnv)", lambda: SubprocVecEnv([factory, factory], start_method="spawn")),
    ]:
        vec = make()
        rows.append({"setting": name, "episodes/hour": _episodes_per_hour(vec, args.episodes, seed=1)})
        vec.close()
    base = rows[0]["episodes/hour"]
    for r in rows:
        r["vs 1 env"] = r["episodes/hour"] / base
    breakdown = {"env build, first in this process s": build_first, "env build, second (all cached) s": build_cached,
                 "training per epoch s": train_s / steps, "ctrl evaluation per step s": eval_s / steps}
    print_table(rows, ["setting", "episodes/hour", "vs 1 env"], title=f"controller throughput ({steps} steps/episode)")
    print_table([{"part": k, "seconds": v} for k, v in breakdown.items()], ["part", "seconds"], title="where time goes")
    write_json(Path(args.out) / "controller_throughput.json", {"config": cfg, "rows": rows, "breakdown": breakdown})
    return {"rows": rows, "breakdown": breakdown}


if __name__ == "__main__":
    cli(run, Args, __doc__)
