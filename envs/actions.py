"""Actions → :class:`EpochPlan`: three codecs (discrete menu, multidiscrete, box) over one decoding path.

Every codec decodes the same way (:meth:`ActionCodec.decode`): check the action against the space
(shape, finite, integer where needed, within bounds — else a :class:`ConfigError` naming the
value), map it to plan fields (the only per-codec step, ``_fields``), then build the plan with the
run-wide settings (KD loss, temperature) in :meth:`ActionCodec._plan`. Teachers are ordered smallest
first, as in the backend.

``normalise(action)`` gives the action as a vector in [-1, 1] for the observation's "last action";
``encode(plan)`` is the inverse of ``decode`` where the codec can express the plan.
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from gymnasium import spaces

from envs.config import EnvConfig
from kd_backend.errors import ConfigError
from kd_backend.plan import OBJECTIVE_MODES, UNCERTAINTY_RULES, EpochPlan

ADAPTIVE_MODES = ("hard", "soft", "soft-instance")


def paper_plan(mechanism: str, adoption_mode: str = "hard", fraction: float = 0.1) -> dict[str, Any]:
    """The ``EpochPlan`` fields of one of Li et al. (2021)'s heuristics, the one place they are defined.

    * ``adoption``: uncertainty-based teacher adoption (``adoption_mode``: hard, soft, soft-instance);
    * ``selection``: KD on the ``fraction`` most uncertain instances of each batch by margin;
    * ``objective``: uncertainty-weighted KD and hidden alignment (weights 1, 1);
    * ``combined``: the three at once (the paper never combined them).

    :raises ConfigError: an unknown mechanism.
    """
    parts = {
        "adoption": {"teacher_mode": adoption_mode},
        "selection": {"fraction": fraction, "selection": "margin", "scope": "batch"},
        "objective": {"objective": "uncertainty", "hidden_weight": 1.0},
    }
    if mechanism == "combined":
        return {**parts["adoption"], **parts["selection"], **parts["objective"]}
    if mechanism not in parts:
        raise ConfigError(f"paper mechanism={mechanism!r} is not one of {[*parts, 'combined']}")
    return dict(parts[mechanism])


PAPER_HEURISTICS: dict[str, str] = {
    "paper-adoption": "adopt-hard", "paper-selection": "frac-0.1-margin-batch",
    "paper-objective": "objective-uncertainty", "paper-combined": "paper-combined",
}
"""The paper's heuristics as names, each the named plan (:func:`named_plans`) it applies every epoch."""


def named_plans(num_teachers: int, regression: bool = False) -> dict[str, dict[str, Any]]:
    """Every plan the discrete menu can hold, by name, as ``EpochPlan`` fields.

    Names: ``ce-only`` (no KD), ``kd-t{k}`` (teacher k alone, 0 = smallest), ``kd-mean`` (teachers'
    mean), ``adopt-{hard,soft,soft-instance}`` (the paper's teacher adoption), ``frac-{0.3,0.1}``
    (the teachers' mean on the most uncertain 30% / 10% of the epoch, by entropy), ``frac-0.3-random``
    (a random 30% of the epoch: no scoring pass), ``frac-0.3-stale`` (the most uncertain 30% by each
    instance's entropy from its last forward pass, rescoring only stale ones), ``frac-0.1-margin-batch``
    (the paper's selection: KD on each batch's 10% smallest-margin instances), ``pkd`` (KD + hidden
    alignment, static weights), ``objective-uncertainty`` / ``objective-uncertainty-r`` (the paper's
    objective weighting and its reverse) and ``paper-combined`` (hard adoption + margin selection at
    10% + uncertainty objective). Plans that read the student's uncertainty are left out for
    regression tasks (``frac-*`` then select at random) and adoption needs two teachers or more.

    :param num_teachers: teachers of the run (>= 1).
    :param regression: whether the task is a regression (no class probabilities, so no uncertainty).
    """
    if not isinstance(num_teachers, int) or num_teachers < 1:
        raise ConfigError(f"num_teachers={num_teachers!r}: the discrete menu needs at least one teacher")
    plans: dict[str, dict[str, Any]] = {"ce-only": {"kd_weight": 0.0}}
    for k in range(num_teachers):
        plans[f"kd-t{k}"] = {"teacher_weights": _one_hot(k, num_teachers)}
    if num_teachers > 1:
        plans["kd-mean"] = {}
        if not regression:
            for mode in ADAPTIVE_MODES:
                plans[f"adopt-{mode}"] = {"teacher_mode": mode}
    rule = "random" if regression else "entropy"
    for fraction in (0.3, 0.1):
        plans[f"frac-{fraction}"] = {"fraction": fraction, "selection": rule, "scope": "epoch"}
    if not regression:  # (for regression frac-0.3 already selects at random)
        plans["frac-0.3-random"] = {"fraction": 0.3, "selection": "random", "scope": "epoch"}
        plans["frac-0.3-stale"] = {"fraction": 0.3, "selection": "entropy", "scope": "epoch", "scoring": "stale"}
    plans["pkd"] = {"hidden_weight": 1.0}
    if not regression:
        plans["frac-0.1-margin-batch"] = paper_plan("selection")
        for mode in ("uncertainty", "uncertainty-r"):
            plans[f"objective-{mode}"] = {"objective": mode, "hidden_weight": 1.0}
        if num_teachers > 1:
            plans["paper-combined"] = paper_plan("combined")
    return plans


_FRACTION_NAME = re.compile(r"frac-(0?\.\d+|1(?:\.0*)?)(?:-(random|stale|kd|stale-kd))?(?:-t(\d+))?")
_LR_SUFFIX = re.compile(r"(.+)-lr(\d*\.?\d+)")
_END_SUFFIX = re.compile(r"(.+)-end")


def plan_fields(name: str, num_teachers: int, regression: bool = False) -> dict[str, Any]:
    """The ``EpochPlan`` fields of a menu name: a named plan (:func:`named_plans`), or any fraction.

    Besides the named plans, ``frac-R``, ``frac-R-random`` and ``frac-R-stale`` name an epoch-scope
    selection of any fraction ``R`` in (0, 1] (e.g. ``frac-0.45-stale``), built as the named
    ``frac-0.3*`` plans are: by entropy (fresh scoring pass), at random (no scoring pass), or by each
    instance's entropy from its last forward pass. ``frac-R-kd`` and ``frac-R-stale-kd`` keep the
    instances with the largest KD loss to the plan's teachers instead (``selection='kd-loss'``: where
    the student is furthest from them), from a fresh scoring pass or from each instance's last
    forward pass. These distil from the teachers' mean; a suffix ``-tK`` distils from teacher ``K``
    alone, as ``kd-tK`` does, and ranks by that teacher (e.g. ``frac-0.3-stale-kd-t1``).

    Any of these names may end in ``-lrX``: the same plan with the run's learning-rate schedule
    scaled by ``X`` during its epoch (``EpochPlan.lr_scale``; e.g. ``frac-0.3-stale-t1-lr2``), and
    in ``-end``: the same plan as the run's last epoch (``EpochPlan.final``: the rest of the
    learning-rate schedule is compressed into it and the episode ends after it; e.g. ``kd-t1-end``).

    :raises ConfigError: a name that is neither, naming the valid ones.
    """
    ending = _END_SUFFIX.fullmatch(name)
    if ending is not None:
        base = plan_fields(ending.group(1), num_teachers, regression)
        if base.get("final"):
            raise ConfigError(f"plan {name!r} ends the run twice; keep one -end suffix")
        return {**base, "final": True}
    scaled = _LR_SUFFIX.fullmatch(name)
    if scaled is not None:
        scale = float(scaled.group(2))
        if scale <= 0:
            raise ConfigError(f"plan {name!r}: the learning-rate scale -lr{scaled.group(2)} must be > 0")
        base = plan_fields(scaled.group(1), num_teachers, regression)
        if "lr_scale" in base:
            raise ConfigError(f"plan {name!r} scales the learning rate twice; keep one -lrX suffix")
        return {**base, "lr_scale": scale}
    available = named_plans(num_teachers, regression)
    if name in available:
        return dict(available[name])
    match = _FRACTION_NAME.fullmatch(name)
    if match is not None and 0.0 < float(match.group(1)) <= 1.0:
        teacher = match.group(3)
        if teacher is not None and int(teacher) >= num_teachers:
            raise ConfigError(
                f"plan {name!r} names teacher {teacher}, but there are {num_teachers} teacher(s): "
                f"use -t0 … -t{num_teachers - 1} (smallest first)"
            )
        kind = match.group(2)
        if kind in ("random", "stale") and regression:
            raise ConfigError(
                f"plan {name!r} selects by or against the student's uncertainty, which a regression "
                f"task lacks; use frac-{match.group(1)} (random selection for regression)"
            )
        if kind in ("kd", "stale-kd"):
            rule = "kd-loss"
        else:
            rule = "random" if regression or kind == "random" else "entropy"
        fields: dict[str, Any] = {"fraction": float(match.group(1)), "selection": rule, "scope": "epoch"}
        if kind in ("stale", "stale-kd"):
            fields["scoring"] = "stale"
        if teacher is not None:
            fields["teacher_weights"] = _one_hot(int(teacher), num_teachers)
        return fields
    raise ConfigError(
        f"unknown plan name {name!r}; for {num_teachers} teacher(s) on a "
        f"{'regression' if regression else 'classification'} task the names are {list(available)}, "
        "or frac-R / frac-R-random / frac-R-stale / frac-R-kd / frac-R-stale-kd for a fraction R in (0, 1], "
        "each with an optional -tK to distil from teacher K alone; any name may end in -lrX to scale the "
        "learning rate by X, and in -end to make it the run's last epoch"
    )


NOT_IN_DEFAULT_MENU = ("objective-uncertainty-r", "frac-0.3-random", "frac-0.3-stale")
"""Named plans a menu can offer but the default one leaves out (the default menu, hence the
action space of policies learned on it, stays as it was: 13 plans for two teachers)."""


def default_menu(num_teachers: int, regression: bool = False) -> tuple[str, ...]:
    """The default discrete menu: every named plan but :data:`NOT_IN_DEFAULT_MENU` (13 for two teachers)."""
    return tuple(n for n in named_plans(num_teachers, regression) if n not in NOT_IN_DEFAULT_MENU)


def _one_hot(k: int, n: int) -> tuple[float, ...]:
    return tuple(1.0 if i == k else 0.0 for i in range(n))


class ActionCodec(ABC):
    """Maps actions of :attr:`space` to plans. Subclasses only say how action values become plan fields.

    :param config: the environment's settings (bins, fixed scope, KD loss, temperature).
    :param num_teachers: teachers of the run, smallest first.
    :param regression: whether the task is a regression (no uncertainty-based choices).
    """

    space: spaces.Space

    def __init__(self, config: EnvConfig, num_teachers: int, regression: bool = False) -> None:
        self.config = config
        self.num_teachers = num_teachers
        self.regression = regression

    @property
    @abstractmethod
    def labels(self) -> tuple[str, ...]:
        """One name per component of :meth:`normalise`'s vector."""

    @property
    def dim(self) -> int:
        """Length of :meth:`normalise`'s vector."""
        return len(self.labels)

    def decode(self, action: Any) -> EpochPlan:
        """The plan an action stands for.

        :param action: an element of :attr:`space` (numpy array, or int for the discrete menu).
        :raises ConfigError: wrong shape or type, NaN, non-integer or out-of-bounds values.
        """
        return self._plan(self._fields(self._check(action)))

    @abstractmethod
    def _fields(self, action: np.ndarray) -> dict[str, Any]:
        """EpochPlan fields of a checked action."""

    @abstractmethod
    def encode(self, plan: EpochPlan) -> Any:
        """An action that decodes to ``plan``; :class:`ConfigError` if this codec cannot express it."""

    @abstractmethod
    def normalise(self, action: Any) -> np.ndarray:
        """The action as a float32 vector of length :attr:`dim` in [-1, 1] (for the observation)."""

    def _plan(self, fields: Mapping[str, Any]) -> EpochPlan:
        return EpochPlan(**{"kd_loss": self.config.kd_loss, "temperature": self.config.temperature, **fields})

    def _bounds(self) -> tuple[np.ndarray, np.ndarray]:
        space = self.space
        if isinstance(space, spaces.Discrete):
            return np.asarray(space.start), np.asarray(space.start + space.n - 1)
        if isinstance(space, spaces.MultiDiscrete):
            return np.zeros_like(space.nvec), space.nvec - 1
        assert isinstance(space, spaces.Box)
        return space.low, space.high

    def _check(self, action: Any) -> np.ndarray:
        """The action as an array of the space's shape, or a ConfigError naming what is wrong."""
        kind = type(self).__name__
        try:
            arr = np.asarray(action)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{kind}: action {action!r} is not a numeric array ({e})") from e
        if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number):
            raise ConfigError(f"{kind}: action {action!r} has dtype {arr.dtype}; expected numbers in {self.space}")
        shape = self.space.shape or ()
        if arr.shape != shape:
            if arr.size == max(1, math.prod(shape)) and arr.ndim <= 1 + len(shape):
                arr = arr.reshape(shape)  # (1,) for a scalar space, or a leading batch of one
            else:
                raise ConfigError(f"{kind}: action {action!r} has shape {arr.shape}; {self.space} expects {shape}")
        if not np.all(np.isfinite(arr)):
            raise ConfigError(f"{kind}: action {action!r} holds NaN or infinite values")
        low, high = self._bounds()
        if isinstance(self.space, (spaces.Discrete, spaces.MultiDiscrete)):
            if not np.all(arr == np.round(arr)):
                raise ConfigError(f"{kind}: action {action!r} must hold integers for {self.space}")
            arr = arr.astype(np.int64)
            if np.any(arr < low) or np.any(arr > high):
                raise ConfigError(f"{kind}: action {action!r} is outside [{low}, {high}] of {self.space}")
            return arr
        tol = 1e-5  # float noise from a squashed policy output
        if np.any(arr < low - tol) or np.any(arr > high + tol):
            raise ConfigError(f"{kind}: action {action!r} is outside [{low.min()}, {high.max()}] of {self.space}")
        return np.clip(arr.astype(np.float32), low, high)


class MenuCodec(ActionCodec):
    """``Discrete(n)``: action i applies the i-th named plan of the menu."""

    def __init__(self, config: EnvConfig, num_teachers: int, regression: bool = False) -> None:
        super().__init__(config, num_teachers, regression)
        names = config.menu if config.menu is not None else default_menu(num_teachers, regression)
        entries = []
        for n in names:
            try:
                entries.append(plan_fields(n, num_teachers, regression))
            except ConfigError as err:
                raise ConfigError(f"EnvConfig.menu: {err}") from None
        self.names: tuple[str, ...] = tuple(names)
        self._entries = tuple(entries)
        self.plans: tuple[EpochPlan, ...] = tuple(self._plan(fields) for fields in self._entries)
        for i, plan in enumerate(self.plans):
            if plan in self.plans[:i]:
                first = self.names[self.plans.index(plan)]
                raise ConfigError(
                    f"EnvConfig.menu lists the same plan twice: {first!r} and {self.names[i]!r}; drop one"
                )
        self.space = spaces.Discrete(len(self.names))

    @property
    def labels(self) -> tuple[str, ...]:
        return self.names

    def _fields(self, action: np.ndarray) -> dict[str, Any]:
        return dict(self._entries[int(action)])

    def encode(self, plan: EpochPlan) -> np.int64:
        for i, p in enumerate(self.plans):
            if p == plan:
                return np.int64(i)
        raise ConfigError(f"plan {plan.to_dict()} is not on the menu {list(self.names)}")

    def normalise(self, action: Any) -> np.ndarray:
        out = np.zeros(self.dim, dtype=np.float32)
        out[int(self._check(action))] = 1.0
        return out


class MultiDiscreteCodec(ActionCodec):
    """``MultiDiscrete``: (teacher choice, fraction bin, selection rule, KD-weight bin, hidden-weight bin,
    objective mode). Teacher choices: each teacher alone, their mean, then the adaptive modes."""

    def __init__(self, config: EnvConfig, num_teachers: int, regression: bool = False) -> None:
        super().__init__(config, num_teachers, regression)
        teachers: list[tuple[str, dict[str, Any]]] = [
            (f"t{k}", {"teacher_weights": _one_hot(k, num_teachers)}) for k in range(num_teachers)
        ]
        if num_teachers > 1:
            teachers.append(("mean", {"teacher_weights": None}))
            if not regression:
                teachers += [(m, {"teacher_mode": m}) for m in ADAPTIVE_MODES]
        self.teachers = tuple(teachers)
        # The student's own rules (kd-loss, which ranks by the teachers, is a menu plan: frac-R-kd):
        # the action space of policies learned on this codec stays as it was.
        self.selections = ("random",) if regression else (*UNCERTAINTY_RULES, "random")
        self.objectives = ("static",) if regression else OBJECTIVE_MODES
        self.axes: tuple[tuple[str, tuple[Any, ...]], ...] = (
            ("teacher", tuple(name for name, _ in self.teachers)),
            ("fraction", config.fraction_bins),
            ("selection", self.selections),
            ("kd_weight", config.weight_bins),
            ("hidden_weight", config.weight_bins),
            ("objective", self.objectives),
        )
        self.space = spaces.MultiDiscrete([len(values) for _, values in self.axes])

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.axes)

    def _fields(self, action: np.ndarray) -> dict[str, Any]:
        t, f, s, kd, hid, obj = (int(a) for a in action)
        return {
            **self.teachers[t][1], "fraction": self.config.fraction_bins[f], "selection": self.selections[s],
            "scope": self.config.scope, "kd_weight": self.config.weight_bins[kd],
            "hidden_weight": self.config.weight_bins[hid], "objective": self.objectives[obj],
        }

    def encode(self, plan: EpochPlan) -> np.ndarray:
        teacher = plan.teacher_mode
        if teacher == "fixed":
            w = plan.teacher_weights
            hot = [k for k, x in enumerate(w or ()) if x > 0]
            if w is None or (self.num_teachers > 1 and len(w) == self.num_teachers and len(set(w)) == 1):
                teacher = "mean" if self.num_teachers > 1 else "t0"
            elif len(hot) == 1 and len(w) == self.num_teachers:
                teacher = f"t{hot[0]}"
            else:
                raise ConfigError(
                    f"teacher_weights={w} cannot be a multidiscrete action: it offers one teacher alone or their mean"
                )
        values = (teacher, plan.fraction, plan.selection, plan.kd_weight, plan.hidden_weight, plan.objective)
        action = np.array([_index(name, v, choices) for (name, choices), v in zip(self.axes, values)], dtype=np.int64)
        decoded = self.decode(action)
        if decoded != plan:
            raise ConfigError(
                f"plan {plan.to_dict()} cannot be expressed by {self.space} (the nearest is {decoded.to_dict()})"
            )
        return action

    def normalise(self, action: Any) -> np.ndarray:
        arr = self._check(action).astype(np.float32)
        span = np.maximum(self.space.nvec - 1, 1).astype(np.float32)
        return np.where(self.space.nvec > 1, 2.0 * arr / span - 1.0, 0.0).astype(np.float32)


def _index(axis: str, value: Any, choices: Sequence[Any]) -> int:
    for i, c in enumerate(choices):
        if c == value or (isinstance(c, float) and isinstance(value, (int, float)) and math.isclose(c, value)):
            return i
    raise ConfigError(f"{axis}={value!r} is not one of the multidiscrete choices {list(choices)}")


class BoxCodec(ActionCodec):
    """``Box([-1, 1]^d)``: K teacher logits (only when K > 1) → softmax(scale x logits) weights;
    fraction → [r_min, 1]; KD and hidden weights → [0, max(weight_bins)]. Static objective, and the
    config's selection rule and scope."""

    def __init__(self, config: EnvConfig, num_teachers: int, regression: bool = False) -> None:
        super().__init__(config, num_teachers, regression)
        self.selection = "random" if regression else config.selection
        self.num_logits = num_teachers if num_teachers > 1 else 0
        self.max_weight = max(config.weight_bins)
        self.space = spaces.Box(-1.0, 1.0, shape=(self.num_logits + 3,), dtype=np.float32)

    @property
    def labels(self) -> tuple[str, ...]:
        return (*(f"teacher_logit_t{k}" for k in range(self.num_logits)), "fraction", "kd_weight", "hidden_weight")

    def _fields(self, action: np.ndarray) -> dict[str, Any]:
        a = action.astype(np.float64)
        fields: dict[str, Any] = {"selection": self.selection, "scope": self.config.scope}
        if self.num_logits:
            z = self.config.teacher_logit_scale * a[: self.num_logits]
            w = np.exp(z - z.max())
            fields["teacher_weights"] = tuple(float(x) for x in w / w.sum())
        f, kd, hid = a[self.num_logits :]
        r_min = self.config.r_min
        fields["fraction"] = float(min(1.0, r_min + (f + 1.0) / 2.0 * (1.0 - r_min)))
        fields["kd_weight"] = float((kd + 1.0) / 2.0 * self.max_weight)
        fields["hidden_weight"] = float((hid + 1.0) / 2.0 * self.max_weight)
        return fields

    def encode(self, plan: EpochPlan) -> np.ndarray:
        if plan.teacher_mode != "fixed" or plan.objective != "static" or plan.ce_weight != 1.0:
            raise ConfigError(
                f"plan {plan.to_dict()} cannot be a box action: box actions give fixed teacher mixtures, the "
                "static objective and ce_weight 1"
            )
        logits: list[float] = []
        if self.num_logits:
            w = np.asarray(plan.teacher_weights or (1.0,) * self.num_teachers, dtype=np.float64)
            logw = np.log(np.maximum(w / w.sum(), 1e-12))
            logits = list((logw - logw.max()) / self.config.teacher_logit_scale + 1.0)
        r_min = self.config.r_min
        frac = 1.0 if r_min >= 1.0 else 2.0 * (plan.fraction - r_min) / (1.0 - r_min) - 1.0
        kd = 2.0 * plan.kd_weight / self.max_weight - 1.0
        hid = 2.0 * plan.hidden_weight / self.max_weight - 1.0
        return np.clip(np.array([*logits, frac, kd, hid], dtype=np.float32), -1.0, 1.0)

    def normalise(self, action: Any) -> np.ndarray:
        return self._check(action).astype(np.float32)


CODECS: dict[str, type[ActionCodec]] = {"discrete": MenuCodec, "multidiscrete": MultiDiscreteCodec, "box": BoxCodec}


def make_codec(config: EnvConfig, num_teachers: int, regression: bool = False) -> ActionCodec:
    """The codec of ``config.action_space`` for a run with ``num_teachers`` teachers."""
    return CODECS[config.action_space](config, num_teachers, regression)
