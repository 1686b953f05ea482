"""Population-Based Training (Ray Tune) over the plan knobs: a non-RL baseline for the learned controller.

    python experiments/pbt_schedule.py --population 4 --out runs/pbt            # local Ray, the default env
    python experiments/pbt_schedule.py --config experiments/configs/sst2_cpu.yaml --ray-address auto
    python experiments/replay_schedule.py --schedule runs/pbt/pbt_schedule.json --seed 7
    python experiments/compare.py --controllers kd-t1 runs/pbt/pbt_schedule.json runs/default/policy.zip

Each trial is one KD run (student seed ``--seed``); every ``--perturbation-interval`` decisions
PBT copies the run state of better trials into worse ones and perturbs their knobs (teacher,
data fraction, selection rule, KD and hidden weights). Writes ``OUT/``: ``pbt_schedule.json``
(the best trial's applied plans, by final ctrl score, with PBT's total compute), ``pbt_trials.json``
(every trial), ``config.yaml`` and Tune's folder ``tune/``. Needs ``pip install -e ".[ray]"``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import tyro

import workflow
from agents.pbt import PBTSpace, run_pbt
from agents.ray_vec_env import init_ray
from envs import EnvConfig
from kd_backend.errors import ConfigError


@dataclass(frozen=True)
class PBTConfig:
    """PBT over the plan knobs of one KD run; the best trial's schedule in DynaKD's format."""

    env: Annotated[EnvConfig, tyro.conf.OmitArgPrefixes] = field(default_factory=workflow.default_env)
    """The KD run as an environment (its horizon and decisions per epoch give the schedule's length)."""
    out: str = "runs/pbt"
    """Output folder."""
    population: int = 4
    """Trials running together (at least 2)."""
    perturbation_interval: int = 1
    """Decisions between PBT's exploit/explore rounds."""
    quantile_fraction: float = 0.25
    """Share of trials that copy the best ones (and of the best copied); at least one trial either way."""
    space: PBTSpace = field(default_factory=PBTSpace)
    """The knobs PBT searches (the teacher is always one of the teachers or their mean)."""
    ray_address: str | None = None
    """A running Ray cluster (``auto``, ``host:port``); None = a local Ray on this machine."""
    cpus_per_trial: float = 1.0
    """CPUs each trial reserves."""
    gpus_per_trial: float = 0.0
    """GPUs each trial reserves (a fraction shares a GPU)."""
    pbt_seed: int = 0
    """Seed of the initial knobs and of PBT's perturbations."""
    threads: int | None = None
    """torch CPU threads per trial; None = 1 for a tiny preset student on CPU, else torch's default."""

    def __post_init__(self) -> None:
        if not isinstance(self.population, int) or self.population < 2:
            raise ConfigError(f"PBTConfig.population={self.population!r} must be an integer >= 2")
        if not isinstance(self.perturbation_interval, int) or self.perturbation_interval < 1:
            raise ConfigError(f"PBTConfig.perturbation_interval={self.perturbation_interval!r} must be >= 1")
        if not 0 < self.quantile_fraction <= 0.5:
            raise ConfigError(f"PBTConfig.quantile_fraction={self.quantile_fraction!r} must be in (0, 0.5]")


workflow.REQUIRED_KEYS[PBTConfig] = ("env",)


def main(cfg: PBTConfig) -> dict:
    threads = workflow.configure_threads(cfg.threads, cfg.env.backend)
    spaces = workflow.expected_spaces(cfg.env)  # bad input fails before any work
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    workflow.save_config(out / workflow.CONFIG_FILE, cfg)
    workflow.build_env(cfg.env, spaces)  # teachers fine-tuned and cached once, before the trials start
    ray = init_ray(cfg.ray_address, log_to_driver=False)  # Tune's per-checkpoint chatter stays in Ray's logs
    try:
        result = run_pbt(
            cfg.env, out, population=cfg.population, space=cfg.space, perturbation_interval=cfg.perturbation_interval,
            quantile_fraction=cfg.quantile_fraction, cpus_per_trial=cfg.cpus_per_trial,
            gpus_per_trial=cfg.gpus_per_trial, threads=threads, seed=cfg.pbt_seed,
        )
    finally:
        if cfg.ray_address is None:
            ray.shutdown()
    episodes = result.total_compute / max(result.lineage_compute, 1e-9)
    print(f"\nPBT, {result.trials} trials on {cfg.env.backend.task} (seed {cfg.env.backend.seed}): best final ctrl "
          f"{100 * result.final_ctrl_score:.1f} (all trials: "
          f"{', '.join(f'{100 * s:.1f}' for s in result.trial_scores)})")
    for i, plan in enumerate(result.plans):
        print(f"  step {i + 1}: {workflow.plan_label(plan, cfg.env, spaces)}")
    print(f"compute: the schedule {result.lineage_compute:.2f} plain epochs; all trials {result.total_compute:.2f} "
          f"(~{episodes:.1f} KD runs' worth, {result.decisions_trained} decisions trained, {result.wall_time:.0f} s)")
    print(f"wrote {out}/: pbt_schedule.json pbt_trials.json")
    print(f"replay: python experiments/replay_schedule.py --schedule {out}/pbt_schedule.json")
    return dataclasses.asdict(result)


if __name__ == "__main__":
    workflow.cli(main, PBTConfig, __doc__)
