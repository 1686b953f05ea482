"""A surrogate of the KD run, fitted to logged steps, so that a controller pre-trains in seconds.

A real DynaKD episode costs minutes; an RL learner wants thousands of them. The surrogate takes
the place of the :class:`~kd_backend.distiller.Distiller` under the very same
:class:`~envs.distillation_env.DistillationEnv`: the observation, the reward and the action
space are those of the real env, so a policy pre-trained on the surrogate acts in the real env
as it is and goes on learning there (``learn_policy.py --surrogate runs/X/episodes.jsonl``).

**What is modelled.** What the controller sees of a run is the ctrl evaluation after each decision:
its score, loss, mean uncertainty and, per teacher, agreement and KL (the teachers' own scores
are constant within a run). Every logged decision gives one example: (ctrl state before, plan,
decision index t) -> (ctrl state after - before, the step's mean training CE, its compute).
:class:`SurrogateModel` fits one ridge regression for all of these targets on the features
``[1, standardised state, one-hot plan, one-hot (plan, t)]``. The (plan, t) block is a table of
each plan's mean effect at each decision, shrunk towards the plan's overall effect where the pair
was rarely logged; the state block lets the effect depend on where the student stands. Sampling
adds Gaussian noise with each target's residual standard deviation (episodes vary as seeds do);
a reset draws one of the logged fresh-student states.

**What it cannot know.** Plans are known by identity: it predicts only plans its logs applied,
at decisions the logs reached. :func:`make_surrogate_env` therefore serves the discrete menu
(``action_space='discrete'``) and refuses a menu plan the logs never tried, naming it. Dev is
not modelled (``report_dev`` is off). :func:`cross_validate` holds out whole episodes and reports
how well the final ctrl score is predicted against predicting its mean: a surrogate that has
learned nothing says so before anyone trusts a policy trained on it.

Logs come from ``episodes.jsonl`` (:mod:`agents.callbacks`; read with
:func:`agents.learning.read_logs`) of any earlier runs with the same teachers count and the plans
of the menu, on any task. Each episode's first line must carry ``initial_ctrl`` (the reset
evaluation), which DynaKD logs since the surrogate exists.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from envs.actions import MenuCodec
from envs.config import EnvConfig
from envs.distillation_env import DistillationEnv
from envs.observation import LOSS_CAP
from kd_backend.errors import ConfigError
from kd_backend.io import atomic_write_json
from kd_backend.plan import EpochPlan, EpochStats, EvalStats

FORMAT = "dynakd-surrogate-v1"
TARGETS_EXTRA = ("train_ce", "compute")
"""Targets after the state change: the step's mean training CE and its compute (plain epochs)."""


def state_names(num_teachers: int) -> tuple[str, ...]:
    """The components of a ctrl state, in the order of :func:`state_vector`."""
    return ("score", "loss", "mean_uncertainty", *(f"t{k}_agreement" for k in range(num_teachers)),
            *(f"t{k}_kl" for k in range(num_teachers)))


def state_vector(ctrl: Mapping[str, Any]) -> np.ndarray:
    """A ctrl evaluation (``EvalStats.to_dict()``) as the state vector of :func:`state_names`."""
    return np.array([ctrl["score"], ctrl["loss"], ctrl["mean_uncertainty"], *ctrl["teacher_agreement"],
                     *ctrl["teacher_kl"]], dtype=np.float64)


def _state_bounds(num_teachers: int) -> tuple[np.ndarray, np.ndarray]:
    """What a state can be: the observation's bounds of each component."""
    low = np.array([-1.0, 0.0, 0.0] + [0.0] * (2 * num_teachers))
    high = np.array([1.0, LOSS_CAP, 1.0] + [1.0] * num_teachers + [LOSS_CAP] * num_teachers)
    return low, high


@dataclass(frozen=True)
class LoggedStep:
    """One logged decision.

    :param episode: which episode of the logs it belongs to (0-based, over all files read).
    :param t: the decision index (0-based).
    :param plan: the plan applied.
    :param before: the ctrl state before it (:func:`state_vector`).
    :param after: the ctrl state after it.
    :param train_ce: the step's mean gold-label training loss.
    :param compute: the step's compute, in plain epochs.
    """

    episode: int
    t: int
    plan: EpochPlan
    before: np.ndarray
    after: np.ndarray
    train_ce: float
    compute: float


@dataclass(frozen=True)
class Logs:
    """Logged decisions and the fresh-student ctrl evaluations they started from.

    :param steps: every decision, in file order.
    :param initial: one reset ctrl evaluation (``EvalStats.to_dict()``) per episode.
    """

    steps: tuple[LoggedStep, ...]
    initial: tuple[Mapping[str, Any], ...]

    @property
    def num_episodes(self) -> int:
        return len(self.initial)


def logs_from_lines(sources: Mapping[str, Iterable[Mapping[str, Any]]]) -> Logs:
    """The decisions of logged ``episodes.jsonl`` lines (:func:`agents.callbacks.read_episodes`), per source.

    An episode is kept from its first line on: its steps must come in order, the first carrying
    ``initial_ctrl``; an episode cut short keeps the steps it has.

    :param sources: a name (the file) and its lines, for each log.
    :raises ConfigError: a log without ``initial_ctrl`` (written before the surrogate existed), no
        usable step at all, or logs of runs with different numbers of teachers.
    """
    steps: list[LoggedStep] = []
    initial: list[Mapping[str, Any]] = []
    for source, source_lines in sources.items():
        episodes: dict[int, list[Mapping[str, Any]]] = {}
        for line in source_lines:
            episodes.setdefault(int(line["episode"]), []).append(line)
        for lines in episodes.values():
            lines.sort(key=lambda line: line["step"])
            first = lines[0]
            if first["step"] != 1:
                continue  # a resumed run's episode without its start: nothing to anchor it
            if "initial_ctrl" not in first:
                raise ConfigError(
                    f"{source} has no initial_ctrl on its first steps: it was written before DynaKD logged the "
                    "fresh student's ctrl evaluation; learn on logs written by this version (any learn_policy.py "
                    "run writes them)"
                )
            index = len(initial)
            initial.append(dict(first["initial_ctrl"]))
            before = state_vector(first["initial_ctrl"])
            for t, line in enumerate(lines):
                if line["step"] != t + 1:
                    break  # a gap: the rest of the episode is not anchored
                after = state_vector(line["ctrl"])
                steps.append(LoggedStep(index, t, EpochPlan.from_dict(line["plan"]), before, after,
                                        float(line["stats"]["losses"].get("ce", 0.0)), float(line["step_compute"])))
                before = after
    if not steps:
        raise ConfigError(f"the logs {list(sources)} hold no complete first step of any episode")
    sizes = {len(s.before) for s in steps}
    if len(sizes) > 1:
        raise ConfigError(f"the logs mix runs with different numbers of teachers (state sizes {sorted(sizes)}); "
                          "give logs of runs with the same teachers count")
    return Logs(tuple(steps), tuple(initial))


@dataclass(frozen=True, eq=False)
class SurrogateModel:
    """A fitted ridge regression from (ctrl state, plan, decision) to the step's outcome.

    :param plans: the plans the logs applied (the one-hot order).
    :param horizon: decisions the logs reached (t < horizon).
    :param num_teachers: teachers of the logged runs.
    :param mean: per state component, its mean over the logged states (standardisation).
    :param scale: per state component, its standard deviation (1 where constant).
    :param weights: ``(features, targets)`` regression weights.
    :param noise: per target, the residual standard deviation (sampling noise).
    :param initial: the logged fresh-student ctrl evaluations (a reset draws one).
    :param episodes: episodes it was fitted to.
    :param ridge: the L2 penalty of the fit (the intercept is not penalised).
    """

    plans: tuple[EpochPlan, ...]
    horizon: int
    num_teachers: int
    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    noise: np.ndarray
    initial: tuple[Mapping[str, Any], ...]
    episodes: int
    ridge: float = 1.0

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(cls, logs: Logs, ridge: float = 1.0) -> SurrogateModel:
        """Fit to ``logs`` (closed-form ridge regression; the intercept is not penalised).

        :param logs: from :func:`read_logs`.
        :param ridge: L2 penalty on every weight but the intercept, in units of standardised features.
        """
        if ridge < 0:
            raise ConfigError(f"ridge={ridge} must be >= 0")
        plans: list[EpochPlan] = []
        for s in logs.steps:
            if s.plan not in plans:
                plans.append(s.plan)
        before = np.stack([s.before for s in logs.steps])
        mean, scale = before.mean(axis=0), before.std(axis=0)
        scale = np.where(scale > 1e-8, scale, 1.0)
        num_teachers = (before.shape[1] - 3) // 2
        horizon = 1 + max(s.t for s in logs.steps)
        model = cls(tuple(plans), horizon, num_teachers, mean, scale, np.zeros(0), np.zeros(0), logs.initial,
                    logs.num_episodes, ridge)
        x = np.stack([model._features(s.before, plans.index(s.plan), s.t) for s in logs.steps])
        y = np.stack([model._target(s) for s in logs.steps])
        penalty = np.full(x.shape[1], ridge)
        penalty[0] = 0.0
        weights = np.linalg.solve(x.T @ x + np.diag(penalty) + 1e-9 * np.eye(x.shape[1]), x.T @ y)
        noise = (y - x @ weights).std(axis=0)
        return dataclasses.replace(model, weights=weights, noise=noise)

    @staticmethod
    def _target(step: LoggedStep) -> np.ndarray:
        return np.concatenate([step.after - step.before, [step.train_ce, step.compute]])

    def _features(self, state: np.ndarray, plan_index: int, t: int) -> np.ndarray:
        p = len(self.plans)
        plan = np.zeros(p)
        plan[plan_index] = 1.0
        pair = np.zeros(p * self.horizon)
        pair[plan_index * self.horizon + t] = 1.0
        return np.concatenate([[1.0], (state - self.mean) / self.scale, plan, pair])

    # ------------------------------------------------------------------ prediction
    def plan_index(self, plan: EpochPlan) -> int:
        """The one-hot index of a logged plan.

        :raises ConfigError: a plan the logs never applied.
        """
        try:
            return self.plans.index(plan)
        except ValueError:
            raise ConfigError(
                f"the surrogate cannot predict plan {plan.to_dict()}: its logs never applied it"
            ) from None

    def predict(self, state: np.ndarray, plan: EpochPlan, t: int) -> tuple[np.ndarray, float, float]:
        """The expected outcome of applying ``plan`` at decision ``t`` from ``state``.

        :return: (the state after, clipped to its bounds; the step's training CE; its compute).
        """
        return self._outcome(state, self._mean_target(state, plan, t))

    def sample(self, state: np.ndarray, plan: EpochPlan, t: int, rng: np.random.Generator) -> tuple[np.ndarray, float, float]:
        """An outcome drawn around :meth:`predict` with each target's residual noise."""
        target = self._mean_target(state, plan, t) + rng.normal(size=self.noise.shape) * self.noise
        return self._outcome(state, target)

    def _mean_target(self, state: np.ndarray, plan: EpochPlan, t: int) -> np.ndarray:
        if not 0 <= t < self.horizon:
            raise ConfigError(f"decision {t} is beyond the {self.horizon} decisions the surrogate's logs reached")
        return self._features(np.asarray(state, dtype=np.float64), self.plan_index(plan), t) @ self.weights

    def _outcome(self, state: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, float, float]:
        low, high = _state_bounds(self.num_teachers)
        d = len(self.mean)
        after = np.clip(np.asarray(state, dtype=np.float64) + target[:d], low, high)
        return after, float(max(target[d], 0.0)), float(max(target[d + 1], 1e-6))

    # ------------------------------------------------------------------ files (JSON: no pickle)
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "plans": [p.to_dict() for p in self.plans], "horizon": self.horizon,
            "num_teachers": self.num_teachers, "mean": self.mean.tolist(), "scale": self.scale.tolist(),
            "weights": self.weights.tolist(), "noise": self.noise.tolist(), "initial": [dict(i) for i in self.initial],
            "episodes": self.episodes, "ridge": self.ridge,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SurrogateModel:
        if data.get("format") != FORMAT:
            raise ConfigError(f"not a DynaKD surrogate (format {data.get('format')!r}, expected {FORMAT!r})")
        return cls(
            tuple(EpochPlan.from_dict(p) for p in data["plans"]), int(data["horizon"]), int(data["num_teachers"]),
            np.asarray(data["mean"]), np.asarray(data["scale"]), np.asarray(data["weights"]),
            np.asarray(data["noise"]), tuple(data["initial"]), int(data["episodes"]), float(data["ridge"]),
        )

    def save(self, path: str | Path) -> Path:
        """Write the model as JSON, atomically."""
        return atomic_write_json(Path(path), self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> SurrogateModel:
        return cls.from_dict(json.loads(Path(path).read_text()))


@dataclass(frozen=True)
class CrossValidation:
    """How well held-out episodes' final ctrl scores are predicted (points, i.e. 100 x score).

    :param folds: folds of whole episodes.
    :param episodes: complete episodes held out in all.
    :param mae: mean absolute error of the surrogate's expected final score, replaying each
        held-out episode's plans from its initial state.
    :param mae_mean: the same for predicting the training folds' mean final score.
    """

    folds: int
    episodes: int
    mae: float
    mae_mean: float

    def summary(self) -> str:
        verdict = "better than" if self.mae < self.mae_mean else "NO better than"
        return (f"surrogate: held-out final ctrl score predicted to ±{self.mae:.2f} points ({self.folds}-fold over "
                f"{self.episodes} episodes), {verdict} its mean (±{self.mae_mean:.2f})")


def _rollout(model: SurrogateModel, initial: Mapping[str, Any], plans: Iterable[EpochPlan]) -> float:
    state = state_vector(initial)
    for t, plan in enumerate(plans):
        state, _, _ = model.predict(state, plan, t)
    return float(state[0])


def cross_validate(logs: Logs, folds: int = 5, ridge: float = 1.0) -> CrossValidation:
    """Hold out whole episodes in turn: replay each held-out episode's plans on a surrogate fitted
    to the others (expected outcomes, no noise) and compare its final ctrl score with the logged one.

    Only complete episodes (every decision up to the logs' horizon) are scored; a held-out plan the
    training folds never applied is skipped. :raises ConfigError: fewer than two complete episodes.
    """
    by_episode: dict[int, list[LoggedStep]] = {}
    for s in logs.steps:
        by_episode.setdefault(s.episode, []).append(s)
    horizon = 1 + max(s.t for s in logs.steps)
    complete = [e for e, steps in by_episode.items() if len(steps) == horizon]
    folds = min(folds, len(complete))
    if folds < 2:
        raise ConfigError(f"cross-validation needs two complete episodes or more; the logs hold {len(complete)}")
    errors, errors_mean = [], []
    for k in range(folds):
        held = set(complete[k::folds])
        train = Logs(tuple(s for s in logs.steps if s.episode not in held), logs.initial)
        model = SurrogateModel.fit(train, ridge)
        finals = [by_episode[e][-1].after[0] for e in complete if e not in held]
        for e in held:
            steps = by_episode[e]
            if any(s.plan not in model.plans for s in steps):
                continue
            truth = steps[-1].after[0]
            errors.append(abs(_rollout(model, logs.initial[e], [s.plan for s in steps]) - truth))
            errors_mean.append(abs(float(np.mean(finals)) - truth))
    if not errors:
        raise ConfigError("no held-out episode could be replayed: each applied a plan its training folds never did")
    return CrossValidation(folds, len(errors), 100 * float(np.mean(errors)), 100 * float(np.mean(errors_mean)))


class SurrogateDistiller:
    """Stands in for :class:`~kd_backend.distiller.Distiller` under :class:`DistillationEnv`.

    It implements what the env calls: ``reset``, ``evaluate('ctrl')`` and ``train_epoch``, the
    teachers' count and names, and compute in plain epochs (``full_epoch_flops`` is 1).

    :param model: the fitted surrogate.
    :param teacher_names: names of the teachers, smallest first (as the real run's; their count is
        checked by :func:`check_surrogate_fits`, which :func:`make_surrogate_env` runs first).
    :param regression: whether the real task is a regression (the env's codec needs it).
    """

    def __init__(self, model: SurrogateModel, teacher_names: Sequence[str], regression: bool = False) -> None:
        self.model = model
        self.teacher_names = tuple(teacher_names)
        self.num_teachers = model.num_teachers
        self.spec = SimpleNamespace(name="surrogate", is_regression=regression)
        self.config = SimpleNamespace(epochs=model.horizon)
        self.full_epoch_flops = 1.0
        self.epoch = 0

    def reset(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        start = self.model.initial[int(self.rng.integers(len(self.model.initial)))]
        self._state = state_vector(start)
        self._teacher_scores = tuple(float(x) for x in start["teacher_scores"])
        self._num_examples = int(start.get("num_examples", 0))
        self.epoch = 0

    def evaluate(self, split: str) -> EvalStats:
        if split != "ctrl":
            raise ConfigError(f"the surrogate models the ctrl split only, not {split!r}; run it with report_dev=False")
        k, s = self.num_teachers, self._state
        return EvalStats(
            split="ctrl", num_examples=self._num_examples, metrics={"score": float(s[0])}, score=float(s[0]),
            loss=float(s[1]), mean_uncertainty=float(s[2]), teacher_agreement=tuple(float(x) for x in s[3:3 + k]),
            teacher_kl=tuple(float(x) for x in s[3 + k:3 + 2 * k]), teacher_scores=self._teacher_scores,
        )

    def train_epoch(self, plan: EpochPlan, part: int = 0, parts: int = 1) -> EpochStats:
        t = self.epoch * parts + part
        self._state, ce, compute = self.model.sample(self._state, plan, t, self.rng)
        if part == parts - 1:
            self.epoch += 1
        weights = plan.teacher_weights or (1.0 / self.num_teachers,) * self.num_teachers
        return EpochStats(
            epoch=self.epoch - 1 if part == parts - 1 else self.epoch, part=part, steps=0, examples_trained=0,
            examples_scored=0, teacher_forwards=0, losses={"ce": ce}, student_flops=compute, teacher_flops=0.0,
            wall_time=0.0, teacher_weights=tuple(float(w) for w in weights), kd_instance_weight=1.0,
            hidden_instance_weight=0.0, lr=0.0, epoch_finished=True,
        )


def check_surrogate_fits(model: SurrogateModel, config: EnvConfig, num_teachers: int, regression: bool = False) -> None:
    """Refuse an env the surrogate cannot stand in for, before anything is built.

    :raises ConfigError: a non-discrete action space, another number of teachers, episodes longer
        than the logged ones, or a menu plan the logs never applied (each named, with the fix).
    """
    if config.action_space != "discrete":
        raise ConfigError(f"the surrogate predicts the plans its logs applied, so it serves the discrete menu only; "
                          f"action_space={config.action_space!r}: use --action-space discrete or drop --surrogate")
    if num_teachers != model.num_teachers:
        raise ConfigError(f"the surrogate was fitted to runs with {model.num_teachers} teacher(s), this run has "
                          f"{num_teachers}; fit it to logs of runs with as many teachers")
    steps = (config.horizon or config.backend.epochs) * config.decisions_per_epoch
    if steps > model.horizon:
        raise ConfigError(f"an episode here takes {steps} decisions, the surrogate's logs reached "
                          f"{model.horizon}; fit it to logs of episodes as long")
    codec = MenuCodec(config, num_teachers, regression)
    missing = [name for name, plan in zip(codec.names, codec.plans, strict=True) if plan not in model.plans]
    if missing:
        raise ConfigError(f"the surrogate's logs never applied the menu plan(s) {missing}, so it cannot predict them; "
                          "add logs of runs that tried them, or drop them from --menu")


def make_surrogate_env(config: EnvConfig, model: SurrogateModel, teacher_names: Sequence[str],
                       regression: bool = False) -> DistillationEnv:
    """The env of ``config`` with the surrogate in place of the KD run (same spaces; no dev, no branch cache).

    :raises ConfigError: what :func:`check_surrogate_fits` refuses.
    """
    check_surrogate_fits(model, config, len(teacher_names), regression)
    return DistillationEnv(dataclasses.replace(config, branch_cache=0, report_dev=False),
                           distiller=SurrogateDistiller(model, teacher_names, regression))
