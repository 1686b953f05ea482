"""Benchmark 3 — what the Gymnasium layer costs: ``env.step`` against the distiller called directly.

    python experiments/benchmarks/env_overhead.py --episodes 6

Both sides do the same work per decision — train the epoch with the same plan, evaluate the ctrl
split — from the same seeds; the env adds decoding, the observation, the reward and the info
dict. Episodes alternate between the two sides so machine-speed drift hits both. Target: <= 3%.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

from _bench import print_table, set_threads, write_json  # noqa: I001

from agents.cli import cli
from agents.configs import default_env
from envs import DistillationEnv, EnvConfig
from kd_backend.plan import EpochPlan


@dataclass(frozen=True)
class Args:
    env: EnvConfig = replace(default_env(), backend=replace(default_env().backend, progress=False))
    """The environment (default: the embedded default of learn_policy.py)."""
    episodes: int = 6
    """Episodes per side."""
    threads: int = 1
    """torch intra-op threads."""
    out: str = "runs/bench/env_overhead"
    """Output folder (env_overhead.json)."""
    quick: bool = False
    """Smoke-test size (for the test suite)."""


def run(args: Args) -> dict:
    set_threads(args.threads)
    cfg = args.env
    if args.quick:
        cfg = replace(cfg, menu=None, backend=replace(cfg.backend, synthetic_train=200, synthetic_dev=50, transfer=100,
                                                      teachers=("tiny-1x64",), teacher_epochs=1, epochs=2, max_seq_length=48))
    env = DistillationEnv(cfg)
    distiller = env.distiller
    plan = EpochPlan(teacher_mode="soft" if distiller.num_teachers > 1 else "fixed", fraction=0.5)
    env_time = direct_time = 0.0
    for episode in range(args.episodes):
        t0 = time.perf_counter()
        env.reset(seed=episode)
        done = False
        while not done:
            done = env.step(plan)[2]
        env_time += time.perf_counter() - t0
        t0 = time.perf_counter()
        distiller.reset(episode)
        distiller.evaluate("ctrl")
        for t in range(env.steps_per_episode):
            distiller.train_epoch(plan, part=t % env.decisions_per_epoch, parts=env.decisions_per_epoch)
            distiller.evaluate("ctrl")
        direct_time += time.perf_counter() - t0
    if cfg.report_dev:  # the env also evaluates dev once per episode, for reporting: time it apart
        t0 = time.perf_counter()
        distiller.evaluate("dev")
        direct_time += (time.perf_counter() - t0) * args.episodes
    overhead = env_time / direct_time - 1.0
    row = {"episodes": args.episodes, "env s": env_time, "direct s": direct_time, "overhead": overhead,
           "target": 0.03, "met": "yes" if overhead <= 0.03 else "no"}
    print_table([row], list(row), title=f"env.step vs distiller: {env.steps_per_episode} steps/episode")
    write_json(Path(args.out) / "env_overhead.json", {"config": cfg, **row})
    return row


if __name__ == "__main__":
    cli(run, Args, __doc__)
