"""Population-Based Training (Ray Tune) as a baseline controller: a schedule found without RL.

Each Tune trial is one KD run (a :class:`kd_backend.distiller.Distiller`, student seed
``backend.seed``) whose hyperparameters are the plan knobs: the teacher (one of the K teachers, or
their mean), the data fraction, the selection rule, the KD and hidden-loss weights. One Tune
iteration trains one decision (an epoch, or a chunk of it) with the trial's current plan and
reports the ctrl score; PBT (:class:`ray.tune.schedulers.PopulationBasedTraining`) lets the
worse trials copy a better one's run state (``Distiller.save_checkpoint`` / ``load_checkpoint``,
exact on the CPU) and perturb its knobs between decisions. A trial's *applied schedule* is the
plan of each decision of its lineage, the donor's plans before an exploit included, so replaying
it from scratch on the same seed reproduces the trial's run; :func:`run_pbt` writes the best
trial's schedule (by final ctrl score; dev is never read) in DynaKD's schedule format
(:meth:`agents.ScheduleController.save`), for ``replay_schedule.py --schedule`` and ``compare.py``.

Compute is counted like the env counts it, in plain full-data epochs of the student; the total
of all trials (every decision every trial trained, exploits copy states and retrain nothing) is
PBT's learning cost, next to an RL controller's episodes.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from envs import EnvConfig
from kd_backend.errors import ConfigError
from kd_backend.io import atomic_write_json
from kd_backend.plan import SELECTION_RULES, EpochPlan

logger = logging.getLogger(__name__)

HISTORY_FILE = "dynakd_pbt.json"
METRIC = "ctrl_score"


@dataclass(frozen=True)
class PBTSpace:
    """The plan knobs PBT searches (each a list it resamples from or steps along).

    :param fractions: data fractions.
    :param selections: selection rules (used when the fraction is below 1).
    :param kd_weights: KD loss weights.
    :param hidden_weights: hidden-alignment loss weights.
    """

    fractions: tuple[float, ...] = (1.0, 0.5, 0.3)
    selections: tuple[str, ...] = ("entropy", "margin")
    kd_weights: tuple[float, ...] = (0.0, 0.5, 1.0)
    hidden_weights: tuple[float, ...] = (0.0, 0.1, 0.5)

    def __post_init__(self) -> None:
        for name in ("fractions", "selections", "kd_weights", "hidden_weights"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
            if not getattr(self, name):
                raise ConfigError(f"PBTSpace.{name} is empty; give at least one value")
        if any(not 0 < f <= 1 for f in self.fractions):
            raise ConfigError(f"PBTSpace.fractions={self.fractions} must each be in (0, 1]")
        bad = [s for s in self.selections if s not in SELECTION_RULES]
        if bad:
            raise ConfigError(f"PBTSpace.selections {bad} are not among {list(SELECTION_RULES)}")
        if any(not (math.isfinite(w) and w >= 0) for w in (*self.kd_weights, *self.hidden_weights)):
            raise ConfigError("PBTSpace.kd_weights and hidden_weights must be finite and >= 0")

    def mutations(self, num_teachers: int) -> dict[str, list[Any]]:
        """PBT's ``hyperparam_mutations``: ``teacher`` k < K is teacher k alone, K their mean."""
        return {
            "teacher": list(range(num_teachers + 1)), "fraction": list(self.fractions),
            "selection": list(self.selections), "kd_weight": list(self.kd_weights),
            "hidden_weight": list(self.hidden_weights),
        }


def plan_of(knobs: dict[str, Any], env: EnvConfig, num_teachers: int) -> EpochPlan:
    """The :class:`EpochPlan` of a trial's knobs (scope, KD loss and temperature from the env config)."""
    k = int(knobs["teacher"])
    weights = None if k >= num_teachers else tuple(1.0 if j == k else 0.0 for j in range(num_teachers))
    return EpochPlan(
        teacher_weights=weights, fraction=float(knobs["fraction"]), selection=knobs["selection"], scope=env.scope,
        kd_weight=float(knobs["kd_weight"]), hidden_weight=float(knobs["hidden_weight"]),
        kd_loss=env.kd_loss, temperature=env.temperature,
    )


def make_trainable() -> type:
    """The Tune trainable class (built lazily so that importing this module needs no Ray)."""
    from agents.ray_vec_env import require_ray

    require_ray()
    from ray import tune

    class KDTrial(tune.Trainable):
        """One KD run of ``env_config`` (given by ``tune.with_parameters``); ``config`` holds the plan knobs."""

        def setup(self, config: dict[str, Any], env_config: EnvConfig | None = None, threads: int = 1) -> None:
            import torch

            from kd_backend.pipeline import build_distiller

            if not isinstance(env_config, EnvConfig):
                raise ConfigError("KDTrial needs env_config=EnvConfig(...) through tune.with_parameters")
            torch.set_num_threads(threads)
            self.env_config = env_config
            self.distiller = build_distiller(self.env_config.backend, quiet_epochs=True)  # teachers come from the cache
            self._start(config)

        def _start(self, config: dict[str, Any]) -> None:
            self.knobs = {k: config[k] for k in ("teacher", "fraction", "selection", "kd_weight", "hidden_weight")}
            self.distiller.reset(self.env_config.backend.seed)
            self.plans: list[dict[str, Any]] = []
            self.compute = 0.0  # of this lineage's decisions (what a replay of its schedule costs)

        def step(self) -> dict[str, Any]:
            env, d = self.env_config, self.distiller
            t = len(self.plans)
            epoch, part = divmod(t, env.decisions_per_epoch)
            plan = plan_of(self.knobs, env, d.num_teachers)
            stats = d.train_epoch(plan, part=part, parts=env.decisions_per_epoch)
            ctrl = d.evaluate("ctrl")
            step_compute = (stats.student_flops + stats.teacher_flops) / d.full_epoch_flops
            self.plans.append(plan.to_dict())
            self.compute += step_compute
            return {METRIC: ctrl.score, "decision": t + 1, "epoch": epoch, "step_compute": step_compute,
                    "lineage_compute": self.compute, "done": t + 1 >= env.steps_per_episode}

        def save_checkpoint(self, checkpoint_dir: str) -> None:
            self.distiller.save_checkpoint(Path(checkpoint_dir) / "run")
            atomic_write_json(Path(checkpoint_dir) / HISTORY_FILE, {"plans": self.plans, "compute": self.compute})

        def load_checkpoint(self, checkpoint: Any) -> None:
            folder = Path(checkpoint if isinstance(checkpoint, (str, Path)) else checkpoint.path)
            self.distiller.load_checkpoint(folder / "run")
            history = json.loads((folder / HISTORY_FILE).read_text())
            self.plans, self.compute = list(history["plans"]), float(history["compute"])

        def reset_config(self, new_config: dict[str, Any]) -> bool:
            self._start(new_config)  # a restore, when PBT exploits, follows and sets the run state
            return True

    return KDTrial


def make_ledger() -> Any:
    """A Tune callback (on the driver) that adds up every reported decision's compute per trial:
    the trials' own result files are rewritten when PBT restores them, so they cannot be summed."""
    from ray import tune

    class ComputeLedger(tune.Callback):
        def __init__(self) -> None:
            self.compute: dict[str, float] = {}
            self.decisions: dict[str, int] = {}

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            key = trial.trial_id
            self.compute[key] = self.compute.get(key, 0.0) + float(result["step_compute"])
            self.decisions[key] = self.decisions.get(key, 0) + 1

    return ComputeLedger()


@dataclass
class PBTResult:
    """What :func:`run_pbt` found and what it cost."""

    plans: list[dict[str, Any]]
    final_ctrl_score: float
    lineage_compute: float
    total_compute: float
    trials: int
    decisions_trained: int
    wall_time: float
    trial_scores: list[float] = field(default_factory=list)


def run_pbt(
    env: EnvConfig,
    out_dir: str | Path,
    *,
    population: int = 4,
    space: PBTSpace | None = None,
    perturbation_interval: int = 1,
    quantile_fraction: float = 0.25,
    resample_probability: float = 0.25,
    cpus_per_trial: float = 1,
    gpus_per_trial: float = 0,
    threads: int = 1,
    seed: int = 0,
    num_teachers: int | None = None,
) -> PBTResult:
    """Run PBT over the plan knobs on ``env``'s KD run and write the best trial's schedule.

    Ray must already be initialised (``agents.ray_vec_env.init_ray``). Writes
    ``<out_dir>/pbt_schedule.json`` (DynaKD's schedule format, with the costs as metadata) and
    ``<out_dir>/pbt_trials.json`` (every trial's final ctrl score, applied plans and compute).

    :param env: the env config (task, teachers, student, horizon, decisions per epoch, seed).
    :param population: trials at once (at least 2).
    :param space: the knobs searched (default :class:`PBTSpace`).
    :param perturbation_interval: decisions between exploit/explore rounds.
    :param quantile_fraction: PBT's share of trials that copy / are copied (0.5 with 2 trials).
    :param seed: seeds the initial knobs and PBT's perturbations (Python's ``random``).
    :param num_teachers: K; None = ``len(env.backend.teachers)``.
    """
    import random

    import numpy as np

    from agents.ray_vec_env import require_ray

    require_ray()
    from ray import tune
    from ray.tune.schedulers import PopulationBasedTraining

    if population < 2:
        raise ConfigError(f"population={population} must be >= 2: PBT exploits between trials")
    from agents.vec_env import absolute_paths

    env = absolute_paths(env)  # Tune runs each trial in its own folder
    space = space or PBTSpace()
    k = num_teachers if num_teachers is not None else len(env.backend.teachers)
    mutations = space.mutations(k)
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    random.seed(seed)  # PBT's explore draws from Python's random, the initial samples from numpy's
    np.random.seed(seed)
    scheduler = PopulationBasedTraining(
        time_attr="training_iteration", perturbation_interval=perturbation_interval,
        hyperparam_mutations=mutations, quantile_fraction=quantile_fraction,
        resample_probability=resample_probability, synch=True,
    )
    param_space = {name: tune.choice(values) for name, values in mutations.items()}
    ledger = make_ledger()
    trainable = tune.with_resources(tune.with_parameters(make_trainable(), env_config=env, threads=threads),
                                    {"cpu": cpus_per_trial, "gpu": gpus_per_trial})
    tuner = tune.Tuner(
        trainable, param_space=param_space,
        tune_config=tune.TuneConfig(scheduler=scheduler, num_samples=population, metric=METRIC, mode="max",
                                    reuse_actors=True),
        run_config=tune.RunConfig(
            name="pbt", storage_path=str(out_dir / "tune"), verbose=0, callbacks=[ledger],
            stop={"training_iteration": env.steps_per_episode},
            checkpoint_config=tune.CheckpointConfig(num_to_keep=4, checkpoint_at_end=True),
        ),
    )
    start = time.perf_counter()
    grid = tuner.fit()
    wall = time.perf_counter() - start
    errors = [str(r.error) for r in grid if r.error is not None]
    if errors:
        raise ConfigError(f"{len(errors)} PBT trial(s) failed; first error: {errors[0][:2000]}")
    trials = []
    for r in grid:
        history = json.loads((Path(r.checkpoint.path) / HISTORY_FILE).read_text())
        trial_id = r.metrics["trial_id"]
        trials.append({
            "trial": trial_id, "final_ctrl_score": float(r.metrics[METRIC]),
            "plans": history["plans"], "lineage_compute": float(history["compute"]),
            "trial_compute": ledger.compute.get(trial_id, 0.0), "decisions_trained": ledger.decisions.get(trial_id, 0),
            "config": {name: r.config[name] for name in mutations},
        })
    best = max(trials, key=lambda t: t["final_ctrl_score"])
    total = sum(t["trial_compute"] for t in trials)
    result = PBTResult(
        plans=best["plans"], final_ctrl_score=best["final_ctrl_score"], lineage_compute=best["lineage_compute"],
        total_compute=total, trials=len(trials), decisions_trained=sum(t["decisions_trained"] for t in trials),
        wall_time=wall, trial_scores=[t["final_ctrl_score"] for t in trials],
    )
    from agents.baselines import ScheduleController

    ScheduleController(best["plans"]).save(
        out_dir / "pbt_schedule.json", controller="pbt", seed=env.backend.seed, chosen_by="final_ctrl_score",
        final_ctrl_score=best["final_ctrl_score"], total_compute=best["lineage_compute"],
        pbt_total_compute=total, pbt_population=population, pbt_decisions_trained=result.decisions_trained,
        pbt_wall_time=wall,
    )
    atomic_write_json(out_dir / "pbt_trials.json", {"trials": trials, "total_compute": total, "wall_time": wall})
    return result
