"""The workflows' configs, one frozen dataclass per job: every field is a flag of its script (its
docstring the help text) and a key of its YAML file (:mod:`agents.cli`).

* :class:`LearnConfig` — ``learn_policy.py``; :class:`ReplayConfig` — ``replay_schedule.py``;
  :class:`CompareConfig` — ``compare.py`` (and ``--protocol``); :class:`SearchConfig` — ``search_schedule.py``;
  :class:`PBTConfig` — ``pbt_schedule.py``;
* :func:`default_env` — the embedded default env every config starts from.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import tyro

from agents.factory import ALGORITHMS, rollout_episodes
from agents.pbt import PBTSpace
from agents.vec_env import VEC_ENVS, VecEnvKind
from envs import EnvConfig
from envs.actions import PAPER_HEURISTICS as PAPER_PLANS
from kd_backend.config import BackendConfig
from kd_backend.errors import ConfigError
from kd_backend.validation import check_float, check_int

T = TypeVar("T")

Algo = Literal["ppo", "a2c", "dqn", "sac"]  # as agents.factory.ALGORITHMS (tyro needs the literal; a test checks)
PAPER_HEURISTICS = tuple(PAPER_PLANS)  # the paper's heuristics by name (envs.actions, the one plan vocabulary)
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


def hide_fields(cls: type[T], names: typing.Iterable[str]) -> type[T]:
    """A subclass of config dataclass ``cls`` whose fields ``names`` keep their defaults but are no flags.

    A script that uses only part of a shared config shows only the flags it reads (``--help`` must
    not list a flag that does nothing).
    """
    names = set(names)
    hints = typing.get_type_hints(cls)
    unknown = names - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ConfigError(f"hide_fields: {cls.__name__} has no field(s) {sorted(unknown)}")
    hidden = [
        (f.name, typing.Annotated[hints[f.name], tyro.conf.Suppress], dataclasses.field(default=f.default))
        for f in dataclasses.fields(cls) if f.name in names
    ]
    return dataclasses.make_dataclass(
        cls.__name__, hidden, bases=(cls,), frozen=True, namespace={"__doc__": cls.__doc__, "__module__": cls.__module__}
    )


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

    REQUIRED_KEYS: ClassVar[tuple[str, ...]] = ("name", "env", "algo", "total_episodes")
    """Top-level keys a ``--config`` file must hold (:func:`agents.cli.load_config_file`)."""


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
    ``envs.actions.named_plans``; or ``frac-R[-random|-stale|-kd|-stale-kd][-tK]``, any of them with ``-lrX`` to scale the learning rate by X, see
    ``envs.plan_fields``) applied
    every step, ``paper-adoption`` / ``paper-selection`` / ``paper-objective`` / ``paper-combined``
    (Li et al.'s heuristics), ``random``, a policy ``.zip``, a schedule ``.json``, or a schedule
    written as plan names joined by ``>``, one per decision (``kd-t1>frac-0.3-stale>frac-0.3-stale``)."""
    seed_pool: int | None = 4
    """Training episode i uses student seed ``backend.seed + (i mod seed_pool)``; None = a new seed
    per episode. With ``env.branch_cache`` on, a pool lets episodes that repeat a seed and a prefix
    of plans continue from the stored state of that prefix instead of retraining it (as a policy
    converges, most episodes share their first epochs)."""
    surrogate: tuple[str, ...] = ()
    """Logs of earlier runs to pre-train on (any task, with as many teachers and this menu): a
    learning run's ``episodes.jsonl``, the episode records of ``compare.py`` (a protocol's
    ``selection.jsonl``, where the grid applies every menu plan at every depth, or
    ``evaluation.jsonl``), or the folders holding them. Before its ``total_episodes`` real episodes, the learner
    learns ``surrogate_episodes`` on a surrogate of the KD run fitted to the logs
    (``envs.surrogate``; seconds, not hours). Empty = no pre-training."""
    surrogate_episodes: int = 2000
    """With ``surrogate``: episodes of pre-training on it."""
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
        if self.algo not in ALGORITHMS:
            raise ConfigError(f"{owner}.algo={self.algo!r} is not one of {list(ALGORITHMS)}")
        if not self.name or "/" in self.name or self.name in (".", ".."):
            raise ConfigError(f"{owner}.name={self.name!r} must be a plain folder name (no '/')")
        _positive(owner, "total_episodes", self.total_episodes)
        _positive(owner, "rollout_episodes", self.rollout_episodes, allow_none=True)
        _positive(owner, "checkpoint_every", self.checkpoint_every, minimum=0)
        _positive(owner, "surrogate_episodes", self.surrogate_episodes)
        _positive(owner, "seed_pool", self.seed_pool, allow_none=True)
        _positive(owner, "threads", self.threads, allow_none=True)
        check_float(owner, "learning_rate", self.learning_rate, 0.0, low_open=True, allow_none=True)
        check_int(owner, "agent_seed", self.agent_seed, minimum=0, maximum=2**32 - 1)
        if self.algo in ("ppo", "a2c"):
            per_update = self.rollout_episodes or rollout_episodes(self.algo)  # agents.factory's default
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

    REQUIRED_KEYS: ClassVar[tuple[str, ...]] = ("env",)
    """Top-level keys a ``--config`` file must hold (:func:`agents.cli.load_config_file`)."""
    READS_LEARN_CONFIG: ClassVar[bool] = True
    """A learn config file works here too: its learning-only keys are ignored."""


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

    REQUIRED_KEYS: ClassVar[tuple[str, ...]] = ("env",)
    """Top-level keys a ``--config`` file must hold (:func:`agents.cli.load_config_file`)."""
    READS_LEARN_CONFIG: ClassVar[bool] = True
    """A learn config file works here too: its learning-only keys are ignored."""


    env: Annotated[EnvConfig, tyro.conf.OmitArgPrefixes] = field(default_factory=default_env)
    """The KD run as an environment (policies must have been learned with matching spaces)."""
    controllers: tuple[str, ...] = DEFAULT_BASELINES
    """Controllers: baseline names (as ``--baselines`` of learn_policy.py), policy ``.zip`` files,
    schedule ``.json`` files and schedules written as plan names joined by ``>``, one per decision
    (``ce-only>kd-t1>kd-t1``)."""
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
    heuristics: bool = True
    """``--protocol``: also evaluate the paper's heuristics and ``random`` on the evaluation seeds;
    ``--no-heuristics`` evaluates only the reference, the best static plan, the oracle (if asked)
    and ``--controllers``: e.g. to pair a schedule with the reference over more seeds cheaply."""
    protocol_branch_cache: int = 64
    """``--protocol``: epoch states kept so schedules sharing a prefix train it once (0 = off)."""
    reuse: str | None = None
    """``--protocol``: an earlier protocol folder of the same env config whose episodes stand in for
    running them again: candidates and schedule files (matched by their plans) on each seed it holds,
    built-in controllers if it holds them on every seed, so adding a policy, the oracle, or seeds to a
    finished protocol runs only what is new. Policy files (.zip) always run again."""

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


SearchEnvConfig = hide_fields(EnvConfig, ["report_dev"])
"""``EnvConfig`` without the ``--report-dev`` flag: the search seals dev whatever the setting."""


def _search_env(env: EnvConfig) -> EnvConfig:
    return SearchEnvConfig(**{f.name: getattr(env, f.name) for f in dataclasses.fields(EnvConfig)})


@dataclass(frozen=True)
class SearchConfig:
    """Learn a KD schedule by beam search over branching episodes (``agents.search``), on the
    training seeds and the ctrl split only; the objective is ``100 x ctrl - cost_weight x compute``."""

    REQUIRED_KEYS: ClassVar[tuple[str, ...]] = ("env",)
    """Top-level keys a ``--config`` file must hold (:func:`agents.cli.load_config_file`)."""
    READS_LEARN_CONFIG: ClassVar[bool] = True
    """A learn config file works here too: its learning-only keys are ignored."""


    env: Annotated[SearchEnvConfig, tyro.conf.OmitArgPrefixes] = field(default_factory=lambda: _search_env(default_env()))
    """The KD run as an environment: its menu is what the search chooses from, its ``cost_weight``
    the points charged per plain epoch (``report_dev`` is no flag here: the search never reads dev)."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """Student seeds the search scores every prefix on (training seeds: keep them disjoint from the
    evaluation seeds)."""
    beam: int = 1
    """Prefixes kept per depth (1 = greedy: H x menu x seeds one-epoch trials)."""
    max_compute: float | None = None
    """A compute budget (plain epochs) the schedule must fit, e.g. 1.89 for 60% of three full KD
    epochs at 1.05; prefixes that cannot end within it are not kept. None = no budget (the
    objective's cost_weight alone trades score for compute)."""
    out: str = "runs/search"
    """Output folder (schedule.json, search.csv, search.json, config.yaml)."""
    overwrite: bool = False
    """Replace the results an existing output folder holds instead of refusing to start."""
    threads: int | None = None
    """torch CPU threads; None = 1 for a tiny preset student on CPU, else torch's default."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "seeds", _seeds("SearchConfig", "seeds", self.seeds))
        _positive("SearchConfig", "beam", self.beam)
        if self.max_compute is not None and not (isinstance(self.max_compute, (int, float)) and self.max_compute > 0):
            raise ConfigError(f"SearchConfig.max_compute={self.max_compute!r} must be a positive number of plain epochs, or None")
        _positive("SearchConfig", "threads", self.threads, allow_none=True)


@dataclass(frozen=True)
class PBTConfig:
    """PBT over the plan knobs of one KD run; the best trial's schedule in DynaKD's format."""

    REQUIRED_KEYS: ClassVar[tuple[str, ...]] = ("env",)
    """Top-level keys a ``--config`` file must hold (:func:`agents.cli.load_config_file`)."""
    READS_LEARN_CONFIG: ClassVar[bool] = True
    """A learn config file works here too: its learning-only keys are ignored."""

    env: Annotated[EnvConfig, tyro.conf.OmitArgPrefixes] = field(default_factory=default_env)
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
