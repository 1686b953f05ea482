"""``DistillationEnv``: one episode is one KD run; each step picks the plan of one epoch (or chunk).

The env is a thin layer over :class:`kd_backend.distiller.Distiller`: it decodes the action into an
:class:`EpochPlan`, trains, evaluates the ctrl split, and turns the stats into an observation
(:mod:`envs.observation`) and a reward (:mod:`envs.reward`). The dev split is evaluated only after
the episode's last step, for the ``info`` of that step (``report_dev``); it never reaches the
observation or the reward.

``step`` also accepts an :class:`EpochPlan` instead of an action, so open-loop schedules and
heuristics run through the very same loop as learned policies (the plan is applied as given;
``last_action`` shows its encoding when the codec can express it, else zeros).

A plan with ``final=True`` (a menu name ending in ``-end``) is the run's last: the rest of the
learning-rate schedule is compressed into its epoch and the episode terminates after it, so a
controller also chooses how long the run is (and what it costs).

With ``EnvConfig.branch_cache > 0`` the env keeps the run state after each decision, keyed by
(episode seed, plans so far), and a step whose key is stored is not retrained: the stored stats and
ctrl evaluation are replayed and the state is restored when the next step needs it
(:mod:`envs.branching`, where the seed semantics are documented).

A step's ``info`` is :meth:`envs.records.StepInfo.to_info` (readers parse it back with
``StepInfo.from_info``); it holds only deterministic values (no wall-clock times), so the same seed
and actions give identical infos, as Gymnasium's checker requires.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from envs.actions import ActionCodec, make_codec
from envs.branching import Branch, BranchCache
from envs.config import EnvConfig
from envs.observation import build_observation, observation_names, observation_space
from envs.records import StepInfo
from envs.reward import step_reward
from kd_backend.errors import ConfigError
from kd_backend.pipeline import build_distiller
from kd_backend.plan import EpochPlan, EvalStats


def _public(stats_dict: dict[str, Any]) -> dict[str, Any]:
    """A stats dict without wall-clock fields (they differ between identical runs)."""
    stats_dict.pop("wall_time", None)
    return stats_dict


class DistillationEnv(gym.Env[np.ndarray, Any]):
    """A KD run as a Gymnasium environment.

    :param config: episode, action and reward settings plus the backend (default: ``EnvConfig()``).
    :param distiller: a prebuilt :class:`Distiller` to use instead of building one from
        ``config.backend`` (to share the heavy state, or in tests); its task and teachers win.
    :param render_mode: None or ``ansi`` (a one-line summary of the last step).
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 1}

    def __init__(self, config: EnvConfig | None = None, distiller: Any = None, render_mode: str | None = None) -> None:
        self.config = config if config is not None else EnvConfig()
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ConfigError(f"render_mode={render_mode!r} is not one of {self.metadata['render_modes']} or None")
        self.render_mode = render_mode
        self.distiller = distiller if distiller is not None else build_distiller(self.config.backend)
        if self.distiller.num_teachers < 1:
            raise ConfigError("DistillationEnv needs at least one teacher (BackendConfig.teachers is empty)")
        self.epochs = self.config.horizon or self.distiller.config.epochs
        self.decisions_per_epoch = self.config.decisions_per_epoch
        self.steps_per_episode = self.epochs * self.decisions_per_epoch
        self.teacher_names: tuple[str, ...] = tuple(self.distiller.teacher_names)
        num_teachers, regression = self.distiller.num_teachers, self.distiller.spec.is_regression
        self.codec: ActionCodec = make_codec(self.config, num_teachers, regression)
        self.action_space = self.codec.space
        self.observation_space = observation_space(self.distiller.num_teachers, self.codec.dim)
        self.observation_names = observation_names(self.distiller.num_teachers, self.codec.dim, self.codec.labels)
        self.branches: BranchCache | None = BranchCache(self.config.branch_cache) if self.config.branch_cache else None
        self.compute_trained = 0.0
        """Compute (plain epochs) of every decision this env trained, over all its episodes; decisions
        replayed from a stored branch add nothing. What learning or a search actually spent."""
        self._t: int | None = None  # decisions taken; None before the first reset

    # ------------------------------------------------------------------ gymnasium API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        """Start a KD run with a fresh student seeded by ``seed`` (or one drawn from ``np_random``)."""
        super().reset(seed=seed)
        self.episode_seed = int(seed) if seed is not None else int(self.np_random.integers(2**31 - 1))
        self.distiller.reset(self.episode_seed)
        self._ctrl = self.distiller.evaluate("ctrl")
        self._initial_ctrl = _public(self._ctrl.to_dict())
        self._t = 0
        self._ended = False
        self._best = self._ctrl.score
        self._change = 0.0
        self._train_loss = 0.0
        self._compute = 0.0
        self._last_action = np.zeros(self.codec.dim, dtype=np.float32)
        self._last: StepInfo | None = None  # the last step's report (render)
        self._plans: tuple[EpochPlan, ...] = ()  # applied so far (the branch key)
        self._pending: Branch | None = None  # a stored state the distiller must restore before training on
        return self._get_obs(), self._get_info()

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        """Train one epoch (or chunk) with the plan of ``action`` (or with an :class:`EpochPlan`)."""
        if self._t is None or self._ended:
            raise gym.error.ResetNeeded("call reset() before step(), and again after the episode terminated")
        if isinstance(action, EpochPlan):
            plan = action
            try:
                self._last_action = self.codec.normalise(self.codec.encode(plan))
            except ConfigError:
                self._last_action = np.zeros(self.codec.dim, dtype=np.float32)
        else:
            plan = self.codec.decode(action)
            self._last_action = self.codec.normalise(action)
        epoch, part = divmod(self._t, self.decisions_per_epoch)
        prev = self._ctrl.score
        key = (self.episode_seed, (*self._plans, plan))
        last = self._t + 1 >= self.steps_per_episode or plan.final  # a final plan ends the run early
        branch = self.branches.get(key) if self.branches is not None else None
        if branch is not None:  # this prefix was trained before with this seed: replay it
            stats, self._ctrl, self._pending = branch.stats, branch.ctrl, branch
        else:
            self._materialise()
            stats = self.distiller.train_epoch(plan, part=part, parts=self.decisions_per_epoch)
            self._ctrl = self.distiller.evaluate("ctrl")
            if self.branches is not None and not last:
                self.branches.put(key, Branch(self.distiller.snapshot(), stats, self._ctrl))
        self._plans = key[1]
        if last:
            self._materialise()  # the distiller ends the episode in its final state (dev, export)
        step_compute = (stats.student_flops + stats.teacher_flops) / self.distiller.full_epoch_flops
        self._compute += step_compute
        if branch is None:
            self.compute_trained += step_compute
        self._t += 1
        terminated = self._ended = last
        reward = step_reward(
            self.config.reward, score=self._ctrl.score, prev_score=prev, step_compute=step_compute,
            episode_compute=self._compute, cost_weight=self.config.cost_weight, last=terminated,
        )
        self._change = self._ctrl.score - prev
        self._best = max(self._best, self._ctrl.score)
        self._train_loss = float(stats.losses.get("ce", 0.0))
        obs = self._get_obs()  # before any dev evaluation: dev never reaches the observation
        dev = None
        if terminated and self.config.report_dev:
            dev = _public(self.distiller.evaluate("dev").to_dict())
        self._last = StepInfo(
            step=self._t, seed=self.episode_seed, ctrl=_public(self._ctrl.to_dict()), compute_total=self._compute,
            teacher_names=self.teacher_names, epoch=epoch, part=part, plan=plan.to_dict(),
            stats=_public(stats.to_dict()), step_compute=step_compute, reward=float(reward),
            final_ctrl_score=self._ctrl.score if terminated else None, dev=dev,
            initial_ctrl=self._initial_ctrl if self._t == 1 else None,
        )
        return obs, float(reward), terminated, False, self._last.to_info()

    def render(self) -> str | None:
        """With ``render_mode='ansi'``: one line with the step, the last plan and the ctrl score."""
        if self.render_mode != "ansi" or self._t is None:
            return None
        plan = self._last.plan if self._last is not None else {}
        keys = ("teacher_mode", "teacher_weights", "fraction", "objective", "kd_weight", "hidden_weight")
        short = {k: plan[k] for k in keys if k in plan}
        return (
            f"step {self._t}/{self.steps_per_episode} ctrl={self._ctrl.score:.4f} best={self._best:.4f} "
            f"compute={self._compute:.2f} plan={short}"
        )

    # ------------------------------------------------------------------ helpers
    def _materialise(self) -> None:
        """Restore a replayed branch's state into the distiller (deferred until training needs it)."""
        if self._pending is not None:
            self.distiller.restore(self._pending.state)
            self._pending = None

    def _get_obs(self) -> np.ndarray:
        assert self._t is not None
        return build_observation(
            self.observation_space,
            progress=self._t / self.steps_per_episode,
            ctrl=self._ctrl,
            best_score=self._best,
            last_change=self._change,
            train_loss=self._train_loss,
            compute_used=self._compute / self.epochs,
            last_action=self._last_action,
        )

    def _get_info(self) -> dict[str, Any]:
        """The reset info: the fresh student's ctrl evaluation (a step's info is :meth:`StepInfo.to_info`)."""
        assert self._t is not None
        return {
            "step": self._t, "seed": self.episode_seed, "ctrl": _public(self._ctrl.to_dict()),
            "compute_total": self._compute, "teacher_names": list(self.teacher_names),
        }

    @property
    def ctrl(self) -> EvalStats:
        """The latest ctrl evaluation."""
        return self._ctrl
