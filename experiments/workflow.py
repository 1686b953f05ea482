"""The one pipeline behind ``learn_policy.py``, ``replay_schedule.py`` and ``compare.py``.

The three scripts parse a config dataclass of this module (:class:`LearnConfig`,
:class:`ReplayConfig`, :class:`CompareConfig`; every field is a flag, its docstring the help
text) and then build everything here, so learning, replaying and comparing run the very same
code:

* :func:`expected_spaces` — the env's observation and action spaces from the config alone, so a
  bad algorithm, policy or schedule is refused before teachers are trained or data is encoded;
* :func:`build_env` — the one :class:`DistillationEnv` (and so the one distiller: data, teachers
  and caches built once) of a process;
* :func:`build_controllers` — baselines by name, learned policies (``.zip``) and schedules (``.json``);
* :func:`evaluate` — every controller over the same seeds through :func:`agents.evaluate_controller`;
* :func:`write_comparison` — ``comparison.csv``, ``comparison.png`` (dev score vs compute) and
  ``evaluation.jsonl``; :func:`format_table` prints the table; :func:`save_best_schedule` extracts
  a learned policy's schedule (its best evaluation episode *by ctrl score*; dev is never used to choose).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import logging
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import gymnasium as gym
import numpy as np
import torch
import tyro
import yaml
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback

from common import overlay_config  # common puts the repo root on sys.path for the imports below
from common import run_main, save_yaml, setup_logging

from agents import (
    EpisodeLogger, EpisodeRecord, PaperHeuristic, RandomController, ScheduleController, StaticController,
    compatible_algorithms, evaluate_controller, load_agent, make_agent, truncate_episodes,
)
from agents.callbacks import EPISODES_FILE, read_episodes
from agents.storage import load_replay_buffer, load_rng_state
from agents.vec_env import VEC_ENVS, SeededEpisodes, VecEnvKind, make_vec_env  # noqa: F401 (SeededEpisodes: re-exported)
from envs import DistillationEnv, EnvConfig, make_codec, named_plans, observation_names, observation_space
from kd_backend.distiller import resolve_device
from kd_backend.errors import ConfigError, DynaKDError, UnknownTaskError
from kd_backend.locking import LOCK_FILE, check_folder, claim_folder
from kd_backend.io import save_figure
from kd_backend.models import PRESETS
from kd_backend.pipeline import BackendConfig, build_distiller, config_dict, load_task_data
from kd_backend.plan import EpochPlan
from kd_backend.tasks import get_task_spec
from kd_backend.validation import check_float, check_int

logger = logging.getLogger(__name__)

Algo = Literal["ppo", "a2c", "dqn", "sac"]
PAPER_HEURISTICS = ("paper-adoption", "paper-selection", "paper-objective", "paper-combined")
DEFAULT_BASELINES = ("ce-only", "kd-t0", "kd-t1", "kd-mean", "pkd", "frac-0.3-random", "paper-adoption",
                     "paper-combined", "random")
DEFAULT_MENU = ("ce-only", "kd-t0", "kd-t1", "kd-mean", "adopt-soft", "frac-0.3", "frac-0.3-random", "pkd")
"""The default env's menu: no KD, each teacher, their mean, soft adoption, 30% of the pool by
entropy or at random, KD + hidden alignment."""
DEFAULT_EVAL_SEEDS = (10_000, 10_001, 10_002)
PROTOCOL_EVAL_SEEDS = (10_000, 10_001, 10_002, 10_003, 10_004)
PROTOCOL_SELECTION_SEEDS = (20_000, 20_001, 20_002)
PROTOCOL_CONTROLLERS = (*PAPER_HEURISTICS, "random")
CONFIG_FILE = "config.yaml"
T = TypeVar("T")


# ---------------------------------------------------------------------------------------------- configs
def default_env() -> EnvConfig:
    """The embedded default, sized for a 2-core CPU and built so that distillation matters.

    The built-in synthetic task with few labels and much unlabelled text (1,000 labelled training
    sentences, 600 ctrl, a transfer set of 9,000 unlabelled ones, 1,000 dev); teachers: a
    ``tiny-2x128`` from scratch (a poor teacher: ~54% dev) and pretrained MiniLM-L6 (~79% dev, both
    fine-tuned 4 epochs on the labelled rows and cached on first use, ~2 minutes); a ``tiny-1x64``
    student from scratch (~52% without KD: it learns the rule only from the teachers' targets on the
    transfer set). 3 epochs per episode, one decision per epoch over an 8-plan menu; the reward charges
    1 point per full epoch over the 10,000 training rows, so a good schedule both learns (ctrl score,
    in points) and saves compute. Prefixes of plans are replayed from stored states (``branch_cache``)
    when a training seed repeats (``LearnConfig.seed_pool``). ``experiments/configs/default.yaml`` is the same.
    """
    backend = BackendConfig(
        task="synthetic", synthetic_train=1600, synthetic_dev=1000, ctrl_fraction=0.375, transfer=9000,
        teachers=("tiny-2x128", "minilm-l6"), teacher_epochs=4,
        student="tiny-1x64", epochs=3, batch_size=32, lr=1e-3, max_seq_length=64,
    )
    return EnvConfig(backend=backend, action_space="discrete", menu=DEFAULT_MENU, reward="dense", cost_weight=1.0,
                     branch_cache=64)


def _positive(owner: str, name: str, value: Any, allow_none: bool = False, minimum: int = 1) -> None:
    check_int(owner, name, value, minimum=minimum, allow_none=allow_none)


def _seeds(owner: str, name: str, value: Any) -> tuple[int, ...]:
    seeds = (value,) if isinstance(value, int) else tuple(value)
    if not seeds or any(not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in seeds):
        raise ConfigError(f"{owner}.{name}={value!r} must be one or more integers >= 0")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{owner}.{name}={value!r} repeats a seed; each seed is one episode")
    return seeds


@dataclass(frozen=True)
class LearnConfig:
    """Learn a KD schedule with an SB3 agent, then compare it with baselines on fresh seeds.

    Training episode i uses student seed ``seed + i`` (``--seed``, default 0); evaluation uses
    ``eval_seeds``, which must not overlap them.
    """

    env: Annotated[EnvConfig, tyro.conf.OmitArgPrefixes] = field(default_factory=default_env)
    """The KD run as an environment (task, models, optimisation, actions, reward)."""
    name: str = "default"
    """Run name: outputs go to ``<runs_dir>/<name>/``."""
    runs_dir: str = "runs"
    """Folder holding the runs."""
    algo: Algo = "ppo"
    """Learner: ``ppo`` or ``a2c`` (any action space), ``dqn`` (discrete), ``sac`` (box)."""
    total_episodes: int = 48
    """Episodes (KD runs) to learn from."""
    rollout_episodes: int | None = 2
    """PPO/A2C: whole episodes per policy update; DQN/SAC: episodes of exploration before the first
    update. None = the defaults of ``agents.factory`` (PPO 4, A2C 1, DQN/SAC 2)."""
    learning_rate: float | None = 1e-3
    """The learner's learning rate; None = the default of ``agents.factory`` (3e-4 for PPO). Few,
    expensive episodes favour a larger one."""
    agent_seed: int = 0
    """Seed of the learner (network initialisation, exploration)."""
    eval_seeds: tuple[int, ...] = DEFAULT_EVAL_SEEDS
    """Student seeds of the evaluation episodes (one episode per seed and controller); fresh seeds,
    disjoint from the training seeds."""
    baselines: tuple[str, ...] = DEFAULT_BASELINES
    """Controllers to compare the learned policy with: a plan name of the discrete menu (``kd-t0``
    = smallest teacher alone, ``kd-t1``, ``kd-mean``, ``ce-only``, ``frac-0.3``, ``pkd``, ...; see
    ``envs.actions.named_plans``) applied every step, ``paper-adoption`` / ``paper-selection`` /
    ``paper-objective`` / ``paper-combined`` (Li et al.'s heuristics), ``random``, a policy ``.zip``
    or a schedule ``.json``."""
    seed_pool: int | None = 4
    """Training episode i uses student seed ``backend.seed + (i mod seed_pool)``; None = a new seed
    per episode. With ``env.branch_cache`` on, a pool lets episodes that repeat a seed and a prefix
    of plans continue from the stored state of that prefix instead of retraining it (as a policy
    converges, most episodes share their first epochs)."""
    checkpoint_every: int = 4
    """Save a checkpoint every this many finished episodes (what ``--resume`` continues from); PPO and
    A2C save after the policy update that learns from them."""
    resume: str | None = None
    """A run folder to continue from its last checkpoint; its ``config.yaml`` is the base config
    (flags still override it, e.g. a larger ``--total-episodes``)."""
    overwrite: bool = False
    """Delete an existing run of the same name instead of refusing to start."""
    threads: int | None = None
    """torch CPU threads; None = 1 for a tiny preset student on CPU (several times faster on
    small machines, where OpenMP threads spin-wait), else torch's default."""
    vec_env: VecEnvKind = "dummy"
    """How the ``n_envs`` training envs run: ``dummy`` (one after the other in this process),
    ``subproc`` (one process each) or ``ray`` (one Ray actor each, on this machine or a cluster)."""
    n_envs: int = 1
    """Training envs stepping together; episode i still uses seed ``seed + i``. PPO/A2C need
    ``rollout_episodes`` (and every run ``total_episodes``) to be a multiple of it."""
    ray_address: str | None = None
    """``--vec-env ray``: a running Ray cluster (``auto``, or ``host:port`` of ``ray start --head``);
    None = start a local Ray on this machine."""
    ray_cpus_per_env: float = 1.0
    """``--vec-env ray``: CPUs each env's actor reserves."""
    ray_gpus_per_env: float = 0.0
    """``--vec-env ray``: GPUs each env's actor reserves; a fraction shares a GPU (0.25 = 4 envs per GPU)."""
    ray_max_restarts: int = 3
    """``--vec-env ray``: restarts of a dead actor allowed per env (its episode is redone from the
    start, same seed and actions); one more ends learning with an error."""

    def __post_init__(self) -> None:
        owner = "LearnConfig"
        if self.vec_env not in VEC_ENVS:
            raise ConfigError(f"{owner}.vec_env={self.vec_env!r} is not one of {list(VEC_ENVS)}")
        _positive(owner, "n_envs", self.n_envs)
        _positive(owner, "ray_max_restarts", self.ray_max_restarts, minimum=0)
        if self.ray_cpus_per_env < 0 or self.ray_gpus_per_env < 0:
            raise ConfigError(f"{owner}: --ray-cpus-per-env {self.ray_cpus_per_env} and --ray-gpus-per-env "
                              f"{self.ray_gpus_per_env} must be >= 0")
        if self.total_episodes % self.n_envs:
            raise ConfigError(
                f"{owner}.total_episodes={self.total_episodes} is not a multiple of n_envs={self.n_envs}: the "
                f"{self.n_envs} envs start and end their episodes together; use --total-episodes "
                f"{-(-self.total_episodes // self.n_envs) * self.n_envs}"
            )
        if self.algo not in ("ppo", "a2c", "dqn", "sac"):
            raise ConfigError(f"{owner}.algo={self.algo!r} is not one of ['ppo', 'a2c', 'dqn', 'sac']")
        if not self.name or "/" in self.name or self.name in (".", ".."):
            raise ConfigError(f"{owner}.name={self.name!r} must be a plain folder name (no '/')")
        _positive(owner, "total_episodes", self.total_episodes)
        _positive(owner, "rollout_episodes", self.rollout_episodes, allow_none=True)
        _positive(owner, "checkpoint_every", self.checkpoint_every, minimum=0)
        _positive(owner, "seed_pool", self.seed_pool, allow_none=True)
        _positive(owner, "threads", self.threads, allow_none=True)
        check_float(owner, "learning_rate", self.learning_rate, 0.0, low_open=True, allow_none=True)
        check_int(owner, "agent_seed", self.agent_seed, minimum=0, maximum=2**32 - 1)
        if self.algo in ("ppo", "a2c"):
            per_update = self.rollout_episodes or {"ppo": 4, "a2c": 1}[self.algo]  # agents.factory's defaults
            if per_update % self.n_envs:
                raise ConfigError(
                    f"{owner}.rollout_episodes={per_update} is not a multiple of n_envs={self.n_envs}: each "
                    f"update learns from whole rounds of the {self.n_envs} envs' episodes; use --rollout-episodes "
                    f"{-(-per_update // self.n_envs) * self.n_envs}"
                )
            if self.total_episodes % per_update:
                lower, upper = self.total_episodes - self.total_episodes % per_update, -(-self.total_episodes // per_update) * per_update
                hint = f"{lower} or {upper}" if lower else str(upper)
                raise ConfigError(
                    f"{owner}.total_episodes={self.total_episodes} is not a multiple of the {per_update} episodes "
                    f"{self.algo.upper()} learns from per update (rollout_episodes): the last "
                    f"{self.total_episodes % per_update} would run without being learned from; use --total-episodes {hint}"
                )
        object.__setattr__(self, "eval_seeds", _seeds(owner, "eval_seeds", self.eval_seeds))
        object.__setattr__(self, "baselines", tuple(self.baselines))
        first = self.env.backend.seed
        overlap = sorted(s for s in self.eval_seeds if first <= s < first + self.total_episodes)
        if overlap:
            raise ConfigError(
                f"{owner}.eval_seeds {overlap} are also training seeds (training episode i uses seed "
                f"{first} + i, i < {self.total_episodes}); evaluate on fresh seeds, e.g. {list(DEFAULT_EVAL_SEEDS)}"
            )

    @property
    def run_dir(self) -> Path:
        """Where this run's outputs go."""
        return Path(self.resume) if self.resume else Path(self.runs_dir) / self.name


@dataclass(frozen=True)
class ReplayConfig:
    """Replay a learned policy (closed loop) or a recorded schedule (open loop) as one KD run.

    ``--seed`` is the student's seed; any backend flag (``--task``, ``--student``, ...) changes
    the run, as long as the spaces still fit the policy.
    """

    env: Annotated[EnvConfig, tyro.conf.OmitArgPrefixes] = field(default_factory=default_env)
    """The KD run as an environment; a learned policy needs the env config it was learned with
    (pass its run's ``--config runs/<name>/config.yaml``)."""
    policy: str | None = None
    """A learned policy (``runs/<name>/policy.zip``) to run closed loop."""
    schedule: str | None = None
    """A schedule JSON (``runs/<name>/best_schedule.json``, or a replay's ``schedule.json``) to run open loop."""
    out: str | None = None
    """Output folder; None = ``replay-<policy or schedule name>-seed<seed>`` next to the policy or schedule."""
    overwrite: bool = False
    """Replace the results an existing output folder holds instead of refusing to start."""
    threads: int | None = None
    """torch CPU threads; None = 1 for a tiny preset student on CPU, else torch's default."""

    def __post_init__(self) -> None:
        _positive("ReplayConfig", "threads", self.threads, allow_none=True)

    @property
    def source(self) -> str:
        """The policy or schedule being replayed (a :class:`ConfigError` unless exactly one is given)."""
        if (self.policy is None) == (self.schedule is None):
            raise ConfigError(
                "give exactly one of --policy runs/<name>/policy.zip (closed loop) or "
                "--schedule runs/<name>/best_schedule.json (open loop)"
            )
        return self.policy if self.policy is not None else str(self.schedule)

    @property
    def out_dir(self) -> Path:
        """Where the replay's outputs go."""
        if self.out is not None:
            return Path(self.out)
        source = Path(self.source)
        return source.parent / f"replay-{source.stem}-seed{self.env.backend.seed}"


@dataclass(frozen=True)
class CompareConfig:
    """Run controllers (baselines, learned policies, schedules) over the same seeds; table and plot."""

    env: Annotated[EnvConfig, tyro.conf.OmitArgPrefixes] = field(default_factory=default_env)
    """The KD run as an environment (policies must have been learned with matching spaces)."""
    controllers: tuple[str, ...] = DEFAULT_BASELINES
    """Controllers: baseline names (as ``--baselines`` of learn_policy.py), policy ``.zip`` files
    and schedule ``.json`` files."""
    seeds: tuple[int, ...] | None = None
    """Student seeds (the evaluation seeds): one episode per seed and controller; None =
    10000-10002, or 10000-10004 with ``--protocol`` (which needs at least 5)."""
    out: str = "runs/compare"
    """Output folder (comparison.csv, comparison.png, evaluation.jsonl, config.yaml; with
    ``--protocol``: protocol.csv/json/png, selection.csv, selection.jsonl, evaluation.jsonl)."""
    overwrite: bool = False
    """Replace the results an existing output folder holds instead of refusing to start."""
    threads: int | None = None
    """torch CPU threads; None = 1 for a tiny preset student on CPU, else torch's default."""
    protocol: bool = False
    """The fair protocol (agents.protocol): choose the reference on ctrl over ``selection_seeds``
    among every menu plan applied to every epoch and the "A first, then B" grid, then evaluate it,
    the best static plan, the oracle and the controllers (plus the paper heuristics and random)
    on ``seeds``, with paired differences to the reference."""
    selection_seeds: tuple[int, ...] = PROTOCOL_SELECTION_SEEDS
    """``--protocol``: seeds of the selection episodes (disjoint from ``seeds``; dev is never read on them)."""
    first_plans: tuple[str, ...] | None = None
    """``--protocol``: menu plans the grid's first epoch may use; None = the menu's full-data plans."""
    rest_plans: tuple[str, ...] | None = None
    """``--protocol``: menu plans the grid's later epochs may use; None = the whole menu. Pass
    ``--first-plans`` and ``--rest-plans`` with no names for static plans only."""
    oracle: bool = True
    """``--protocol``: also run every candidate on the evaluation seeds and report the dev-best
    (an upper bound, not a fair reference); ``--no-oracle`` runs only the reference and best static."""
    protocol_branch_cache: int = 64
    """``--protocol``: epoch states kept so schedules sharing a prefix train it once (0 = off)."""
    reuse: str | None = None
    """``--protocol``: an earlier protocol folder of the same env config whose episodes stand in for
    running them again: candidates (matched by their plans) and built-in controllers it holds on every
    seed are read from it, so adding a policy, or the oracle, to a finished protocol runs only what is
    new. Policy and schedule files always run again."""

    @property
    def eval_seeds(self) -> tuple[int, ...]:
        """The evaluation seeds: ``seeds``, or the default for the mode."""
        if self.seeds is not None:
            return self.seeds
        return PROTOCOL_EVAL_SEEDS if self.protocol else DEFAULT_EVAL_SEEDS

    def __post_init__(self) -> None:
        owner = "CompareConfig"
        # None stays None (resolved by eval_seeds): tyro builds the default before --protocol is applied.
        if self.seeds is not None:
            object.__setattr__(self, "seeds", _seeds(owner, "seeds", self.seeds))
        seeds = self.eval_seeds
        object.__setattr__(self, "controllers", tuple(self.controllers))
        if not self.controllers and not self.protocol:
            raise ConfigError("CompareConfig.controllers is empty; name at least one controller")
        _positive(owner, "threads", self.threads, allow_none=True)
        _positive(owner, "protocol_branch_cache", self.protocol_branch_cache, minimum=0)
        if self.reuse is not None and not self.protocol:
            raise ConfigError(f"{owner}.reuse={self.reuse!r} reuses an earlier protocol's episodes; add --protocol")
        if self.protocol:
            object.__setattr__(self, "selection_seeds", _seeds(owner, "selection_seeds", self.selection_seeds))
            if len(seeds) < 5:
                raise ConfigError(
                    f"{owner}.seeds={list(seeds)}: the protocol evaluates on at least 5 fresh seeds; pass "
                    f"--seeds {' '.join(map(str, PROTOCOL_EVAL_SEEDS))}"
                )
            overlap = sorted(set(seeds) & set(self.selection_seeds))
            if overlap:
                raise ConfigError(
                    f"{owner}: seeds {overlap} are both --seeds and --selection-seeds; the reference must be "
                    "chosen on seeds it is not evaluated on"
                )
        for name in ("first_plans", "rest_plans"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, tuple(getattr(self, name)))


@dataclass(frozen=True)
class SearchConfig:
    """Learn a KD schedule by beam search over branching episodes (``agents.search``), on the
    training seeds and the ctrl split only; the objective is ``100 x ctrl - cost_weight x compute``."""

    env: Annotated[EnvConfig, tyro.conf.OmitArgPrefixes] = field(default_factory=default_env)
    """The KD run as an environment: its menu is what the search chooses from, its ``cost_weight``
    the points charged per plain epoch."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """Student seeds the search scores every prefix on (training seeds: keep them disjoint from the
    evaluation seeds)."""
    beam: int = 1
    """Prefixes kept per depth (1 = greedy: H x menu x seeds one-epoch trials)."""
    out: str = "runs/search"
    """Output folder (schedule.json, search.csv, search.json, config.yaml)."""
    overwrite: bool = False
    """Replace the results an existing output folder holds instead of refusing to start."""
    threads: int | None = None
    """torch CPU threads; None = 1 for a tiny preset student on CPU, else torch's default."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "seeds", _seeds("SearchConfig", "seeds", self.seeds))
        _positive("SearchConfig", "beam", self.beam)
        _positive("SearchConfig", "threads", self.threads, allow_none=True)


REQUIRED_KEYS: dict[type, tuple[str, ...]] = {
    LearnConfig: ("name", "env", "algo", "total_episodes"),
    ReplayConfig: ("env",),
    CompareConfig: ("env",),
    SearchConfig: ("env",),
}
"""Top-level keys a ``--config`` file must contain, per script."""


def _field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def load_config_file(cls: type[T], path: str | Path) -> T:
    """Read a YAML config file into ``cls``, checking required and unknown keys.

    A learn config (a shipped one, or a run's ``config.yaml``) also works for replay and compare:
    the keys only learning uses (``algo``, ``total_episodes``, ...) are ignored there, so one file
    describes a setting for all three scripts.

    :raises ConfigError: a missing file, invalid YAML, a missing required key or an unknown key.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; see experiments/configs/ for examples")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of config keys, not {type(data).__name__}")
    missing = [k for k in REQUIRED_KEYS[cls] if k not in data]
    if missing:
        raise ConfigError(
            f"config file {path} is missing required key(s) {missing} (required: {list(REQUIRED_KEYS[cls])}); "
            "see experiments/configs/default.yaml"
        )
    if cls is not LearnConfig:
        learn_only = (_field_names(LearnConfig) - _field_names(cls)) & set(data)
        data = {k: v for k, v in data.items() if k not in learn_only}
    return overlay_config(cls, data, str(path))


def _flag_value(argv: list[str], flag: str) -> str | None:
    """The value of ``--flag VALUE`` / ``--flag=VALUE`` in ``argv`` (tyro accepts - or _), or None."""
    names = {flag, flag.replace("-", "_")}
    for i, arg in enumerate(argv):
        key, eq, value = arg.partition("=")
        if key in names:
            if eq:
                return value
            if i + 1 < len(argv):
                return argv[i + 1]
            raise ConfigError(f"{flag} needs a value")
    return None


def parse_config(cls: type[T], description: str | None, argv: Sequence[str] | None = None) -> T:
    """Flags (and an optional ``--config FILE.yaml``) → a ``cls`` config; flags override the file.

    For :class:`LearnConfig`, ``--resume RUN_DIR`` makes ``RUN_DIR/config.yaml`` the base config.
    Like ``common.parse_args``, with the learn-config sharing of :func:`load_config_file`; booleans
    are switches there as here (``--overwrite``, ``--no-report-dev``, ``--no-progress``).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    path = _flag_value(argv, "--config")
    if path is not None:
        i = next(i for i, a in enumerate(argv) if a.partition("=")[0] == "--config")
        del argv[i : i + (1 if "=" in argv[i] else 2)]
    if cls is LearnConfig:
        resume = _flag_value(argv, "--resume")
        if resume is not None:
            if path is not None:
                raise ConfigError("--resume RUN_DIR reads RUN_DIR/config.yaml; do not pass --config with it")
            if not (Path(resume) / CONFIG_FILE).is_file():
                raise ConfigError(f"--resume {resume}: no {CONFIG_FILE} there; is it a run folder of learn_policy.py?")
            path = str(Path(resume) / CONFIG_FILE)
    default = load_config_file(cls, path) if path is not None else cls()
    return tyro.cli(cls, args=argv, default=default, description=description)


def cli(main: Callable[[T], Any], cls: type[T], description: str | None) -> None:
    """Run a workflow script: logging, flags → config, ``main(config)``, with the exit statuses of
    :func:`common.run_main` (1 and a message for a DynaKD or OS error, 2 for a bad flag, 130 for Ctrl-C)."""
    setup_logging()
    quiet_libraries()
    run_main(main, lambda: parse_config(cls, description), interrupted="; nothing after this point was written")


REUSE_IGNORED = ("backend.progress", "backend.cache_dir", "cost_weight", "reward")
"""Env settings that do not change what the protocol reads from an episode (its ctrl and dev scores
and compute; the reward is not used to rank anything): ``--reuse`` ignores them, so a policy learned
with another ``cost_weight`` joins an earlier protocol."""


def read_protocol_run(folder: str | Path, cfg: CompareConfig) -> tuple[list[Any], dict[str, Any]]:
    """The episodes and phase costs of an earlier ``compare.py --protocol`` folder, for ``--reuse``.

    :raises ConfigError: a folder that is not a protocol run, or one run with other env settings
        (naming each setting that differs), whose episodes would mean something else.
    """
    from agents.protocol import read_records

    folder = Path(folder)
    if not (folder / "protocol.json").is_file():
        raise ConfigError(f"--reuse {folder}: no protocol.json there; name a folder written by compare.py --protocol")
    before = load_config_file(CompareConfig, folder / CONFIG_FILE)
    old, new = _flatten(config_dict(before.env)), _flatten(config_dict(cfg.env))
    differ = sorted(k for k in set(old) | set(new) if k not in REUSE_IGNORED and old.get(k) != new.get(k))
    if differ:
        shown = "; ".join(f"{k}: {old.get(k)!r} there, {new.get(k)!r} here" for k in differ[:6])
        raise ConfigError(
            f"--reuse {folder}: its episodes were run with other env settings ({shown}); pass --config "
            f"{folder / CONFIG_FILE} to run with its settings, or drop --reuse"
        )
    try:
        costs = json.loads((folder / "protocol.json").read_text())["costs"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ConfigError(f"--reuse {folder}: protocol.json is unreadable ({e}); drop --reuse") from e
    records = read_records(folder / "selection.jsonl") + read_records(folder / "evaluation.jsonl")
    return records, costs


def save_config(path: str | Path, config: Any) -> None:
    """Write the resolved config (``--config`` of any script reads it back)."""
    save_yaml(path, config_dict(config))


# ---------------------------------------------------------------------------------------------- set-up
def configure_threads(threads: int | None, backend: BackendConfig) -> int:
    """Apply the ``threads`` setting (see :class:`LearnConfig`); returns torch's thread count."""
    if threads is None:
        device = resolve_device(backend.device)
        tiny = backend.student_init == "fresh" and backend.student in PRESETS and backend.student.startswith("tiny-")
        if device.type == "cpu" and tiny:
            threads = 1
    if threads is not None:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def quiet_libraries() -> None:
    """Hide the per-file progress bars of transformers (model loading and saving) in script output."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


@dataclass(frozen=True)
class Spaces:
    """The spaces a :class:`DistillationEnv` of a config will have, known before it is built."""

    observation: gym.spaces.Box
    action: gym.spaces.Space
    num_teachers: int
    regression: bool
    meaning: dict[str, Any] = field(default_factory=dict)
    """What the actions and observations stand for (saved with a learned policy and checked when it
    is loaded): the action labels (menu names, or the components of a multidiscrete/box action),
    the observation features, and the action bins."""


def expected_spaces(config: EnvConfig) -> Spaces:
    """The env's spaces from the config alone: no teacher is trained, no data encoded.

    :raises ConfigError: an unknown task, an empty teacher list or a bad menu.
    """
    backend = config.backend
    if not backend.teachers:
        raise ConfigError("the environment needs at least one teacher (--teachers is empty)")
    try:
        regression = get_task_spec(backend.task).is_regression
    except UnknownTaskError:  # a custom data file: its spec comes from reading it (cheap)
        regression = load_task_data(backend).spec.is_regression
    num_teachers = len(backend.teachers)
    codec = make_codec(config, num_teachers, regression)
    return Spaces(observation_space(num_teachers, codec.dim), codec.space, num_teachers, regression,
                  env_meaning(config, num_teachers, regression, codec))


def env_meaning(config: EnvConfig, num_teachers: int, regression: bool, codec: Any = None) -> dict[str, Any]:
    """What an env's actions and observations stand for (:attr:`Spaces.meaning`); ``codec``: the
    env's action codec when the caller has it (else built from the config)."""
    codec = codec if codec is not None else make_codec(config, num_teachers, regression)
    meaning: dict[str, Any] = {
        "action_space": config.action_space, "actions": list(codec.labels),
        "observations": list(observation_names(num_teachers, codec.dim, codec.labels)),
    }
    if config.action_space != "discrete":
        meaning["bins"] = {"fraction_bins": list(config.fraction_bins), "weight_bins": list(config.weight_bins),
                           "r_min": config.r_min}
    return meaning


def check_algorithm(algo: str, spaces: Spaces) -> None:
    """Refuse an algorithm that cannot act in the action space, before any work."""
    fits = compatible_algorithms(spaces.action)
    if algo not in fits:
        kind = type(spaces.action).__name__
        raise ConfigError(
            f"algorithm {algo!r} cannot act in the {kind} action space {spaces.action}; use --algo one of "
            f"{list(fits)}, or another --action-space (dqn: discrete; sac: box; ppo, a2c: any)"
        )


def build_env(config: EnvConfig, spaces: Spaces | None = None) -> DistillationEnv:
    """The process's one environment: the distiller (data, teachers, caches) is built here, once.

    Teachers train on first use with the backend's progress bars; episodes then run without
    per-epoch bars (the workflows show one bar per episode instead).
    """
    distiller = build_distiller(config.backend)
    distiller.config = dataclasses.replace(distiller.config, progress=False)
    env = DistillationEnv(config, distiller=distiller)
    if spaces is not None and (env.observation_space != spaces.observation or env.action_space != spaces.action):
        raise ConfigError(
            f"the built env has spaces {env.observation_space}, {env.action_space} but the config predicted "
            f"{spaces.observation}, {spaces.action}; this is a bug in workflow.expected_spaces"
        )
    return env


class SpacesOnlyEnv(gym.Env):
    """Stands in for a :class:`DistillationEnv` where only its spaces matter (loading a policy
    before any heavy work); it cannot run episodes."""

    def __init__(self, spaces: Spaces) -> None:
        self.observation_space = spaces.observation
        self.action_space = spaces.action

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        raise RuntimeError("SpacesOnlyEnv only carries spaces; act in a DistillationEnv (workflow.build_env)")

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        raise RuntimeError("SpacesOnlyEnv only carries spaces; act in a DistillationEnv (workflow.build_env)")


# ---------------------------------------------------------------------------------------------- controllers
def controller_names(spaces: Spaces) -> tuple[str, ...]:
    """Every baseline name :func:`build_controllers` accepts for these spaces."""
    return (*named_plans(spaces.num_teachers, spaces.regression), *PAPER_HEURISTICS, "random")


def _label(path: Path) -> str:
    return f"{path.parent.name}/{path.stem}" if path.parent.name else path.stem


def load_schedule(path: str | Path, config: EnvConfig, spaces: Spaces, name: str | None = None) -> ScheduleController:
    """A schedule file, checked against the env (length, teachers) before any work."""
    schedule = ScheduleController.load(path, name=name or _label(Path(path)))
    if schedule.num_steps != config.steps_per_episode:
        raise ConfigError(
            f"schedule {path} has {schedule.num_steps} plans but an episode of this env has "
            f"{config.steps_per_episode} decisions (horizon {config.epochs} x decisions_per_epoch "
            f"{config.decisions_per_epoch}); pass a matching --horizon / --decisions-per-epoch"
        )
    for i, plan in enumerate(schedule.plans):
        if plan.teacher_weights is not None and len(plan.teacher_weights) != spaces.num_teachers:
            raise ConfigError(
                f"schedule {path} step {i} weights {len(plan.teacher_weights)} teachers but the env has "
                f"{spaces.num_teachers} ({list(config.backend.teachers)})"
            )
        if spaces.regression and plan.needs_uncertainty:
            raise ConfigError(
                f"schedule {path} step {i} needs the student's uncertainty, which a regression task lacks"
            )
    return schedule


def load_policy(path: str | Path, spaces: Spaces, name: str | None = None) -> BaseAlgorithm:
    """A learned policy, checked against the env's spaces before any work (see ``agents.load_agent``)."""
    agent = load_agent(path, SpacesOnlyEnv(spaces), meaning=spaces.meaning)
    agent.name = name or _label(Path(path))
    return agent


def _plan(fields: Mapping[str, Any], config: EnvConfig) -> EpochPlan:
    """A baseline's plan with the run-wide KD loss and temperature, as the env's codecs decode them."""
    return EpochPlan(**{"kd_loss": config.kd_loss, "temperature": config.temperature, **fields})


def build_controllers(specs: Sequence[str], config: EnvConfig, spaces: Spaces, seed: int = 0) -> dict[str, Any]:
    """Controllers by name, in order: baselines, policies (``*.zip``) and schedules (``*.json``).

    :param specs: see :attr:`LearnConfig.baselines`.
    :param seed: seed of the ``random`` controller.
    :raises ConfigError: an unknown name, or a file that is missing or does not fit the env.
    """
    plans = named_plans(spaces.num_teachers, spaces.regression)
    out: dict[str, Any] = {}
    for spec in specs:
        if spec.endswith(".zip"):
            controller: Any = load_policy(spec, spaces)
        elif spec.endswith(".json"):
            controller = load_schedule(spec, config, spaces)
        elif spec == "random":
            controller = RandomController(spaces.action, seed=seed)
        elif spec in PAPER_HEURISTICS:
            controller = PaperHeuristic(spec.removeprefix("paper-"))  # type: ignore[arg-type]
            controller.plan = _plan(controller.plan.to_dict(), config)
            if spaces.regression and controller.plan.needs_uncertainty:
                raise ConfigError(f"baseline {spec!r} needs the student's uncertainty, which a regression task lacks")
        elif spec in plans:
            controller = StaticController(_plan(plans[spec], config), name=spec)
        else:
            raise ConfigError(
                f"unknown controller {spec!r}; use a policy .zip, a schedule .json or one of "
                f"{list(controller_names(spaces))}"
            )
        name = controller.name
        if name in out:
            raise ConfigError(f"controller {name!r} is listed twice")
        out[name] = controller
    return out


# ---------------------------------------------------------------------------------------------- learning
RESUME_MAY_CHANGE = frozenset({
    "total_episodes", "eval_seeds", "baselines", "checkpoint_every", "threads", "env.report_dev", "env.backend.progress",
})
"""Settings a ``--resume`` may change: what is learned next is the same run either way."""


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: data}


def check_resume(config: LearnConfig, run_dir: Path) -> None:
    """Refuse a ``--resume`` whose flags contradict the run: another env, learner or seed (the
    checkpoint was learned with the saved ones), fewer episodes than are finished, or ``--overwrite``.

    :raises ConfigError: naming each contradicting setting, its saved and its new value.
    """
    if config.overwrite:
        raise ConfigError(f"--resume {run_dir} continues the run and --overwrite deletes it; pass only one of them")
    saved = load_config_file(LearnConfig, run_dir / CONFIG_FILE)
    old = _flatten(config_dict(dataclasses.replace(saved, resume=None, overwrite=False)))
    new = _flatten(config_dict(dataclasses.replace(config, resume=None, overwrite=False)))
    changed = [k for k in new if k not in RESUME_MAY_CHANGE and old.get(k) != new[k]]
    if changed:
        details = ", ".join(f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in changed)
        raise ConfigError(
            f"--resume {run_dir} would change what the run learns with ({details}); its checkpoint was learned "
            f"with the saved settings. Resume without these flags, or start a new run (--name). "
            f"A resume may change only {sorted(RESUME_MAY_CHANGE)}"
        )
    checkpoint = latest_checkpoint(run_dir)
    done = int(checkpoint["episodes"]) if checkpoint else 0
    if config.total_episodes < done:
        raise ConfigError(
            f"--resume {run_dir} --total-episodes {config.total_episodes}: the run has already finished {done} "
            f"episodes; pass --total-episodes {done} or more (or leave it out: {saved.total_episodes})"
        )


def prepare_run_dir(config: LearnConfig) -> Path:
    """Check the run folder before any work: refuse to clobber a finished or interrupted run unless
    asked to, and a ``--resume`` whose flags contradict the run (:func:`check_resume`). A resumed
    run's folder is locked here already; a new one by :func:`claim_run_dir`, once everything is built.
    """
    run_dir = config.run_dir
    if config.resume:
        claim_folder(run_dir, resume=True, flag="--resume")
        check_resume(config, run_dir)
        return run_dir
    if run_dir.is_dir() and any(p.name != LOCK_FILE for p in run_dir.iterdir()) and not config.overwrite:
        raise ConfigError(
            f"{run_dir} already holds a run; continue it with --resume {run_dir}, start over with "
            "--overwrite, or pick another --name"
        )
    return run_dir


def claim_run_dir(config: LearnConfig) -> Path:
    """Own the run folder until the process exits (an OS lock: a second process that tries to
    write the same run is refused, naming this one's pid); ``--overwrite`` empties it here."""
    return claim_folder(config.run_dir, overwrite=config.overwrite and not config.resume,
                        resume=bool(config.resume), flag="--name")


def agent_overrides(config: LearnConfig, episode_length: int) -> dict[str, Any]:
    """Constructor arguments of the learner that the config changes from ``agents.factory``'s defaults.

    With ``n_envs`` envs, SB3's ``n_steps`` counts steps per env: a rollout of R episodes is
    ``R / n_envs`` episodes of each env.
    """
    overrides: dict[str, Any] = {}
    if config.learning_rate is not None:
        overrides["learning_rate"] = config.learning_rate
    n = config.n_envs
    if config.rollout_episodes is not None:
        steps = config.rollout_episodes * episode_length
        if config.algo == "ppo":
            overrides.update(n_steps=steps // n, batch_size=max(2, min(steps, episode_length)))
        elif config.algo == "a2c":
            overrides["n_steps"] = steps // n
        else:
            overrides["learning_starts"] = steps
    elif n > 1 and config.algo in ("ppo", "a2c"):
        per_update = {"ppo": 4, "a2c": 1}[config.algo] * episode_length
        overrides["n_steps"] = per_update // n
    return overrides


RESTARTS_FILE = "ray_restarts.jsonl"
"""One line per restarted Ray actor of a learning run (``--vec-env ray``)."""


def make_train_env(config: LearnConfig, env: DistillationEnv, first_seed: int, run_dir: Path) -> Any:
    """The learner's env: ``env`` itself (one env, ``dummy``) or a vector env of ``n_envs`` copies.

    ``env`` was built first (:func:`build_env`), so its teachers and caches are on disk and the
    other envs' processes only load them. Episode i uses seed ``first_seed + i`` either way.
    """
    pool = dict(seed_pool=config.seed_pool, base_seed=config.env.backend.seed)
    if config.vec_env == "dummy" and config.n_envs == 1:
        return SeededEpisodes(env, first_seed=first_seed, pool=config.seed_pool, base_seed=config.env.backend.seed)
    ray_options: dict[str, Any] = {}
    if config.vec_env == "ray":
        ray_options = dict(num_cpus=config.ray_cpus_per_env, num_gpus=config.ray_gpus_per_env,
                           max_restarts=config.ray_max_restarts, address=config.ray_address,
                           restart_log=run_dir / RESTARTS_FILE)
    return make_vec_env(config.vec_env, config.env, config.n_envs, first_seed, local_env=env,
                        threads=torch.get_num_threads(), **pool, **ray_options)


def latest_checkpoint(run_dir: Path) -> dict[str, Any] | None:
    """The ``checkpoints/latest.json`` written by :class:`agents.EpisodeLogger`, or None."""
    path = run_dir / "checkpoints" / "latest.json"
    return json.loads(path.read_text()) if path.is_file() else None


def make_learner(config: LearnConfig, env: DistillationEnv, run_dir: Path) -> tuple[BaseAlgorithm, int]:
    """A fresh learner, or the one of the run's last checkpoint when resuming.

    Resuming drops the ``episodes.jsonl`` lines of episodes the checkpoint does not cover (they
    are redone, with the same seeds), so no episode is lost or repeated.

    :return: the learner (acting in :func:`make_train_env`'s env: a :class:`SeededEpisodes` wrapper
        of ``env``, or a vector env of ``n_envs``) and the number
        of episodes already finished.
    """
    checkpoint = latest_checkpoint(run_dir) if config.resume else None
    done = int(checkpoint["episodes"]) if checkpoint else 0
    if config.resume:
        kept = truncate_episodes(run_dir / EPISODES_FILE, done)
        logger.info("resuming %s after %d finished episodes (%d lines of episodes.jsonl kept)", run_dir, done, kept)
    train_env = make_train_env(config, env, config.env.backend.seed + done, run_dir)
    meaning = env_meaning(config.env, env.distiller.num_teachers, env.distiller.spec.is_regression)
    if checkpoint is None:
        overrides = agent_overrides(config, env.steps_per_episode)
        agent = make_agent(config.algo, train_env, tensorboard_log=run_dir / "tensorboard", seed=config.agent_seed,
                           meaning=meaning, **overrides)
        return agent, 0
    folder = run_dir / "checkpoints"
    agent = load_agent(folder / checkpoint["model"], train_env, algo=config.algo, meaning=meaning)
    agent.tensorboard_log = str(run_dir / "tensorboard")
    if checkpoint.get("replay_buffer") and getattr(agent, "replay_buffer", None) is not None:
        load_replay_buffer(agent.replay_buffer, folder / checkpoint["replay_buffer"])
    return agent, done


def checkpoint_rng(run_dir: Path) -> dict[str, Any] | None:
    """The random-number states saved with the run's last checkpoint (None: none saved)."""
    checkpoint = latest_checkpoint(run_dir)
    if not checkpoint or not checkpoint.get("rng"):
        return None
    return load_rng_state(run_dir / "checkpoints" / checkpoint["rng"])


@contextlib.contextmanager
def resumable(config: LearnConfig, run_dir: Path) -> Iterator[None]:
    """Turn a Ctrl-C (SIGINT) during learning or evaluation into a short report of where the run
    stands and the exact command that continues it, and exit status 130, instead of a traceback."""
    try:
        yield
    except KeyboardInterrupt:
        checkpoint = latest_checkpoint(run_dir)
        covered = int(checkpoint["episodes"]) if checkpoint else 0
        finished = sum(1 for line in read_episodes(run_dir / EPISODES_FILE) if line.get("done"))
        script = Path(sys.argv[0]).name if sys.argv and sys.argv[0].endswith(".py") else "learn_policy.py"
        print(
            f"\ninterrupted: {finished} of {config.total_episodes} learning episodes finished in {run_dir}; the last "
            f"checkpoint covers {covered} (the episodes after it are redone, on the same seeds, when resuming).\n"
            f"continue with: python experiments/{script} --resume {run_dir}",
            file=sys.stderr,
        )
        raise SystemExit(130) from None


class EpisodeProgress(BaseCallback):
    """A progress bar over learning episodes that also ends learning after ``total`` episodes.

    SB3 learns in whole rollouts and would run past the episode budget when it is not a multiple
    of the rollout; :class:`LearnConfig` refuses such a budget for PPO/A2C, so the cut only stops
    off-policy learners. A rollout that ends exactly at the budget still gets its update.

    :param total: episodes to learn in all.
    :param done: episodes already finished (a resumed run).
    :param show: draw the bar.
    """

    def __init__(self, total: int, done: int = 0, show: bool = True) -> None:
        super().__init__()
        self.total, self.done, self.show = total, done, show
        self.bar: Any = None

    def _on_training_start(self) -> None:
        if self.show:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, initial=self.done, desc="learning", unit="episode", dynamic_ncols=True)

    def _on_step(self) -> bool:
        for info, done in zip(self.locals["infos"], self.locals["dones"], strict=True):
            if done and "final_ctrl_score" in info:
                self.done += 1
                if self.bar is not None:
                    dev = info.get("dev_score")
                    self.bar.set_postfix_str(
                        f"ctrl {info['final_ctrl_score']:.3f}" + ("" if dev is None else f" dev {dev:.3f}")
                        + f" compute {info['compute_total']:.2f}"
                    )
                    self.bar.update(1)
        if self.done < self.total:
            return True
        # On-policy: let the rollout that ends on this very step finish, so that it is learned from.
        n, length = self.locals.get("n_steps"), self.locals.get("n_rollout_steps")
        return n is not None and length is not None and n + 1 >= length

    def _on_training_end(self) -> None:
        if self.bar is not None:
            self.bar.close()


def learn(agent: BaseAlgorithm, config: LearnConfig, run_dir: Path, done: int, show_progress: bool) -> int:
    """Learn until ``config.total_episodes`` episodes are finished, logging every step to
    ``episodes.jsonl`` and TensorBoard, checkpointing as configured and once more at the end (so
    that a crash during evaluation resumes without relearning); :class:`agents.EpisodeLogger`
    does both.

    :return: episodes finished.
    """
    remaining = config.total_episodes - done
    if remaining <= 0:
        return done
    episodes = EpisodeLogger(run_dir, checkpoint_every=config.checkpoint_every, start_episode=done,
                             checkpoint_at_end=True, rng_state=checkpoint_rng(run_dir) if done else None)
    progress = EpisodeProgress(config.total_episodes, done, show=show_progress)
    agent.learn(total_timesteps=remaining * config.env.steps_per_episode, callback=[episodes, progress],
                tb_log_name="sb3", reset_num_timesteps=done == 0)
    return episodes.episodes


# ---------------------------------------------------------------------------------------------- evaluation
def evaluate(
    env: DistillationEnv, controllers: Mapping[str, Any], seeds: Sequence[int], show_progress: bool = True
) -> list[EpisodeRecord]:
    """One episode per controller and seed, all through :func:`agents.evaluate_controller`."""
    from tqdm.auto import tqdm

    records: list[EpisodeRecord] = []
    with tqdm(total=len(controllers) * len(seeds), desc="evaluating", unit="episode", disable=not show_progress,
              dynamic_ncols=True) as bar:
        for name, controller in controllers.items():
            for seed in seeds:
                bar.set_postfix_str(f"{name} seed {seed}")
                records.extend(evaluate_controller(env, controller, [seed], deterministic=True, name=name))
                bar.update(1)
    return records


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    arr = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if arr.size == 0:
        return float("nan"), float("nan")
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def summarize(records: Sequence[EpisodeRecord]) -> list[dict[str, Any]]:
    """One row per controller (in first-seen order): means and standard deviations over its seeds."""
    groups: dict[str, list[EpisodeRecord]] = {}
    for r in records:
        groups.setdefault(r.controller, []).append(r)
    rows = []
    for name, group in groups.items():
        dev, dev_sd = _mean_std([r.final_dev_score for r in group])
        ctrl, ctrl_sd = _mean_std([r.final_ctrl_score for r in group])
        compute, compute_sd = _mean_std([r.total_compute for r in group])
        rows.append({
            "controller": name, "episodes": len(group), "seeds": " ".join(str(r.seed) for r in group),
            "dev_score": dev, "dev_score_std": dev_sd, "ctrl_score": ctrl, "ctrl_score_std": ctrl_sd,
            "compute": compute, "compute_std": compute_sd,
            "return": _mean_std([r.episode_return for r in group])[0],
            "seconds_per_episode": _mean_std([r.wall_time for r in group])[0],
        })
    return rows


def format_table(rows: Sequence[Mapping[str, Any]], title: str = "") -> str:
    """The comparison as an aligned text table (scores in metric points, compute in plain epochs)."""
    header = ("controller", "dev score", "ctrl score", "compute", "return", "s/episode")
    lines = [
        (
            str(r["controller"]),
            f"{100 * r['dev_score']:.1f} ± {100 * r['dev_score_std']:.1f}",
            f"{100 * r['ctrl_score']:.1f} ± {100 * r['ctrl_score_std']:.1f}",
            f"{r['compute']:.2f}",
            f"{r['return']:+.1f}",
            f"{r['seconds_per_episode']:.1f}",
        )
        for r in rows
    ]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:{'<' if i == 0 else '>'}{w}}}" for i, w in enumerate(widths))
    out = [title] if title else []
    out += [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*line) for line in lines]
    out.append("scores in points (mean ± sd over seeds); compute in plain full-data epochs of the student")
    return "\n".join(out)


def plot_comparison(records: Sequence[EpisodeRecord], path: str | Path, title: str = "") -> Path:
    """Dev score against compute: each episode as a faint dot, each controller's mean ± sd as a marker."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    use_dev = all(r.final_dev_score is not None for r in records)
    fig = Figure(figsize=(8, 4.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colors = [f"C{i % 10}" for i in range(64)]
    markers = "osD^v<>phX*"
    groups: dict[str, list[EpisodeRecord]] = {}
    for r in records:
        groups.setdefault(r.controller, []).append(r)
    for i, (name, group) in enumerate(groups.items()):
        x = np.array([r.total_compute for r in group])
        y = 100 * np.array([r.final_dev_score if use_dev else r.final_ctrl_score for r in group], dtype=np.float64)
        ax.scatter(x, y, color=colors[i], alpha=0.3, s=18, linewidths=0)
        ddof = 1 if len(group) > 1 else 0  # the table's sample standard deviation
        ax.errorbar(  # hollow markers, so that controllers on the same spot stay visible
            x.mean(), y.mean(), xerr=x.std(ddof=ddof), yerr=y.std(ddof=ddof), color=colors[i],
            marker=markers[i % len(markers)], markersize=11 - min(i, 5), markerfacecolor="none",
            markeredgewidth=2, capsize=3, linestyle="none", label=f"{name} (n={len(group)})", zorder=3,
        )
    ax.set_xlabel("compute per KD run (plain full-data epochs of the student)")
    ax.set_ylabel(f"final {'dev' if use_dev else 'ctrl'} score (points)")
    ax.set_title(title or "KD schedules: score vs compute")
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8, frameon=False)
    return save_figure(fig, path)


def write_comparison(out_dir: str | Path, records: Sequence[EpisodeRecord], title: str = "") -> list[dict[str, Any]]:
    """Write ``comparison.csv`` (one row per controller), ``comparison.png`` and ``evaluation.jsonl``
    (every evaluated episode with its plans and stats); returns the rows."""
    from kd_backend.io import atomic_write_text

    out_dir = Path(out_dir)
    rows = summarize(records)
    tmp = out_dir / "comparison.csv.tmp"
    out_dir.mkdir(parents=True, exist_ok=True)
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(out_dir / "comparison.csv")
    atomic_write_text(out_dir / "evaluation.jsonl", "".join(json.dumps(r.to_dict()) + "\n" for r in records))
    plot_comparison(records, out_dir / "comparison.png", title)
    return rows


def save_best_schedule(
    path: str | Path, records: Sequence[EpisodeRecord], controller: str, **metadata: Any
) -> EpisodeRecord:
    """Save the applied plans of ``controller``'s evaluation episode with the best *ctrl* score.

    The dev split is for reporting only, so it never chooses the schedule.
    """
    own = [r for r in records if r.controller == controller]
    if not own:
        raise ConfigError(f"no evaluation episode of controller {controller!r} to take a schedule from")
    best = max(own, key=lambda r: r.final_ctrl_score)
    ScheduleController(best.schedule).save(
        path, controller=controller, seed=best.seed, chosen_by="final_ctrl_score",
        final_ctrl_score=best.final_ctrl_score, final_dev_score=best.final_dev_score,
        total_compute=best.total_compute, **metadata,
    )
    return best


def log_episode_scalars(writer: Any, record: EpisodeRecord, teacher_names: Sequence[str]) -> None:
    """An evaluated episode as TensorBoard scalars (x = decision): the plan applied, its training
    stats, the ctrl score and reward after it; ``final/*`` at the last decision."""
    for s in record.steps:
        plan, stats, t = s.plan, s.stats, s.step
        scalars = {
            "step/ctrl_score": s.ctrl_score, "step/reward": s.reward, "step/compute": s.compute,
            "plan/fraction": plan["fraction"], "plan/ce_weight": plan["ce_weight"], "plan/kd_weight": plan["kd_weight"],
            "plan/hidden_weight": plan["hidden_weight"], "plan/kd_instance_weight": stats["kd_instance_weight"],
            "plan/hidden_instance_weight": stats["hidden_instance_weight"], "train/lr": stats["lr"],
            "train/examples_trained": stats["examples_trained"],
            **{f"train/loss_{k}": v for k, v in stats["losses"].items()},
            **{
                f"plan/teacher_weight/t{k}_{name}": w
                for k, (name, w) in enumerate(zip(teacher_names, stats["teacher_weights"], strict=True))
            },
        }
        for tag, value in scalars.items():
            writer.add_scalar(tag, value, t)
    last = record.steps[-1].step if record.steps else 0
    writer.add_scalar("final/ctrl_score", record.final_ctrl_score, last)
    writer.add_scalar("final/compute", record.total_compute, last)
    writer.add_scalar("final/return", record.episode_return, last)
    if record.final_dev_score is not None:
        writer.add_scalar("final/dev_score", record.final_dev_score, last)


def plan_label(plan: Mapping[str, Any], config: EnvConfig, spaces: Spaces) -> str:
    """A short name for a plan: its discrete-menu name when it is one, else its non-default fields."""
    parsed = EpochPlan.from_dict(plan)
    for name, fields in named_plans(spaces.num_teachers, spaces.regression).items():
        if _plan(fields, config) == parsed:
            return name
    default = _plan({}, config)
    parts = []
    for f in dataclasses.fields(EpochPlan):
        value = getattr(parsed, f.name)
        if value != getattr(default, f.name):
            if isinstance(value, tuple):
                value = "(" + ",".join(f"{v:.2f}" for v in value) + ")"
            elif isinstance(value, float):
                value = f"{value:.2f}"
            parts.append(f"{f.name}={value}")
    return " ".join(parts) or "kd-mean"


def describe_schedule(record: EpisodeRecord, config: EnvConfig, spaces: Spaces) -> str:
    """One line per decision: the plan applied and the ctrl score after it."""
    return "\n".join(
        f"  step {s.step}: {plan_label(s.plan, config, spaces):<24} "
        f"ctrl {100 * s.ctrl_score:5.1f}  compute {s.compute:.2f}"
        for s in record.steps
    )
