"""What an env step reports beside its observation and reward, typed.

Gymnasium's ``info`` is a plain dict, and DynaKD's must stay one: it crosses process boundaries
(``SubprocVecEnv``, Ray actors), lands in ``episodes.jsonl`` and must be identical for identical
seeds and actions (no wall-clock times). :class:`StepInfo` is the one definition of that dict: the
env builds a :class:`StepInfo` and returns :meth:`StepInfo.to_info`; every reader (the evaluation
loop, the logging callback, the progress bar, the tree search) parses it back with
:meth:`StepInfo.from_info` instead of indexing string keys of its own.

The reset info (:meth:`DistillationEnv.reset`) holds only the first five fields (the fresh
student's ctrl evaluation); :func:`is_step_info` tells the two apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields
from typing import Any

from kd_backend.errors import ConfigError


@dataclass(frozen=True)
class StepInfo:
    """One decision's report.

    :param step: decisions taken so far, this one included.
    :param seed: the episode's student seed.
    :param ctrl: the ctrl evaluation after the step (``EvalStats.to_dict()`` without wall time).
    :param compute_total: the episode's compute so far, in plain epochs.
    :param teacher_names: the run's teachers, smallest first.
    :param epoch: the epoch the decision trained (0-based).
    :param part: the part of that epoch (0-based, of ``decisions_per_epoch``).
    :param plan: the plan applied (``EpochPlan.to_dict()``).
    :param stats: its training stats (``EpochStats.to_dict()`` without wall time).
    :param step_compute: this step's compute, in plain epochs.
    :param reward: the step's reward.
    :param final_ctrl_score: on the episode's last step, its final ctrl score; else None.
    :param dev: on the last step with ``report_dev``, the dev evaluation (reporting only); else None.
    :param initial_ctrl: on the episode's first step, the fresh student's ctrl evaluation (the
        reset's), so that a log of steps holds every state of the episode (:mod:`envs.surrogate`
        fits to it); else None.
    """

    step: int
    seed: int
    ctrl: Mapping[str, Any]
    compute_total: float
    teacher_names: tuple[str, ...]
    epoch: int
    part: int
    plan: Mapping[str, Any]
    stats: Mapping[str, Any]
    step_compute: float
    reward: float
    final_ctrl_score: float | None = None
    dev: Mapping[str, Any] | None = None
    initial_ctrl: Mapping[str, Any] | None = None

    @property
    def ctrl_score(self) -> float:
        """The ctrl score after the step."""
        return float(self.ctrl["score"])

    @property
    def dev_score(self) -> float | None:
        """The dev score after the episode's last step (None elsewhere, or without ``report_dev``)."""
        return None if self.dev is None else float(self.dev["score"])

    @property
    def done(self) -> bool:
        """Whether this was the episode's last step."""
        return self.final_ctrl_score is not None

    @property
    def teacher_weights(self) -> dict[str, float]:
        """The weight each teacher actually received, as ``{"t<k>_<name>": weight}``."""
        return {f"t{k}_{name}": w for k, (name, w) in enumerate(zip(self.teacher_names, self.stats["teacher_weights"]))}

    def to_info(self) -> dict[str, Any]:
        """The Gymnasium ``info`` dict (plain, JSON-able values; the last-step fields only on the last step)."""
        info: dict[str, Any] = {
            "step": self.step, "seed": self.seed, "ctrl": dict(self.ctrl), "compute_total": self.compute_total,
            "teacher_names": list(self.teacher_names), "epoch": self.epoch, "part": self.part,
            "plan": dict(self.plan), "stats": dict(self.stats), "step_compute": self.step_compute,
            "reward": self.reward, "teacher_weights": self.teacher_weights,
        }
        if self.final_ctrl_score is not None:
            info["final_ctrl_score"] = self.final_ctrl_score
        if self.dev is not None:
            info["dev"] = dict(self.dev)
            info["dev_score"] = self.dev_score
        if self.initial_ctrl is not None:
            info["initial_ctrl"] = dict(self.initial_ctrl)
        return info

    @classmethod
    def from_info(cls, info: Mapping[str, Any]) -> StepInfo:
        """Parse a step's ``info`` (as :meth:`to_info` wrote it; extra keys, e.g. a vector env's, are ignored).

        :raises ConfigError: a reset info or a dict missing a field, naming what is missing.
        """
        required = [f.name for f in fields(cls) if f.default is MISSING]
        missing = [k for k in required if k not in info]
        if missing:
            raise ConfigError(
                f"not a DynaKD step info (missing {missing}); reset infos carry no step: check is_step_info(info) first"
            )
        values = {f.name: info.get(f.name) for f in fields(cls)}
        values["teacher_names"] = tuple(values["teacher_names"])
        return cls(**values)


def is_step_info(info: Mapping[str, Any]) -> bool:
    """Whether ``info`` reports a step (not a reset)."""
    return "plan" in info
