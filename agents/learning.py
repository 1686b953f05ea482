"""Learning a schedule with an SB3 agent: the run folder (refuse to clobber, lock, resume checks),
the learner (fresh or from the last checkpoint), its training env, the episode budget and Ctrl-C."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import DummyVecEnv

from agents.baselines import EpisodeRecord
from agents.callbacks import (
    EPISODES_FILE,
    Checkpoint,
    EpisodeLogger,
    read_episodes,
    truncate_episodes,
)
from agents.cli import flatten, load_config_file
from agents.configs import CONFIG_FILE, LearnConfig
from agents.factory import load_agent, make_agent, rollout_episodes
from agents.spaces import Spaces, env_meaning
from agents.storage import load_replay_buffer, load_rng_state
from agents.vec_env import SeededEpisodes, make_vec_env
from envs import DistillationEnv
from envs.records import StepInfo, is_step_info
from envs.surrogate import (
    CrossValidation,
    Logs,
    SurrogateModel,
    check_surrogate_fits,
    cross_validate,
    logs_from_lines,
    make_surrogate_env,
)
from kd_backend.errors import ConfigError
from kd_backend.io import atomic_write_json
from kd_backend.locking import LOCK_FILE, check_folder, claim_folder
from kd_backend.pipeline import config_dict

logger = logging.getLogger(__name__)

RESUME_MAY_CHANGE = frozenset({
    "total_episodes", "eval_seeds", "baselines", "checkpoint_every", "threads", "env.report_dev", "env.backend.progress",
})
"""Settings a ``--resume`` may change: what is learned next is the same run either way."""


def check_resume(config: LearnConfig, run_dir: Path) -> None:
    """Refuse a ``--resume`` whose flags contradict the run: another env, learner or seed (the
    checkpoint was learned with the saved ones), fewer episodes than are finished, or ``--overwrite``.

    :raises ConfigError: naming each contradicting setting, its saved and its new value.
    """
    if config.overwrite:
        raise ConfigError(f"--resume {run_dir} continues the run and --overwrite deletes it; pass only one of them")
    saved = load_config_file(LearnConfig, run_dir / CONFIG_FILE)
    old = flatten(config_dict(dataclasses.replace(saved, resume=None, overwrite=False)))
    new = flatten(config_dict(dataclasses.replace(config, resume=None, overwrite=False)))
    changed = [k for k in new if k not in RESUME_MAY_CHANGE and old.get(k) != new[k]]
    if changed:
        details = ", ".join(f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in changed)
        raise ConfigError(
            f"--resume {run_dir} would change what the run learns with ({details}); its checkpoint was learned "
            f"with the saved settings. Resume without these flags, or start a new run (--name). "
            f"A resume may change only {sorted(RESUME_MAY_CHANGE)}"
        )
    checkpoint = latest_checkpoint(run_dir)
    done = checkpoint.episodes if checkpoint else 0
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
    # a file where the folder should be, or no write access: refused now, not after the teachers are built
    check_folder(run_dir, overwrite=True, flag="--runs-dir")
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
        per_update = rollout_episodes(config.algo) * episode_length
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


def latest_checkpoint(run_dir: Path) -> Checkpoint | None:
    """The run's last checkpoint (:class:`agents.callbacks.Checkpoint`), or None."""
    return Checkpoint.read(run_dir)


def make_learner(config: LearnConfig, env: DistillationEnv, run_dir: Path) -> tuple[BaseAlgorithm, int]:
    """A fresh learner, or the one of the run's last checkpoint when resuming.

    Resuming drops the ``episodes.jsonl`` lines of episodes the checkpoint does not cover (they
    are redone, with the same seeds), so no episode is lost or repeated.

    :return: the learner (acting in :func:`make_train_env`'s env: a :class:`SeededEpisodes` wrapper
        of ``env``, or a vector env of ``n_envs``) and the number
        of episodes already finished.
    """
    checkpoint = latest_checkpoint(run_dir) if config.resume else None
    done = checkpoint.episodes if checkpoint else 0
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
    agent = load_agent(folder / checkpoint.model, train_env, algo=config.algo, meaning=meaning)
    agent.tensorboard_log = str(run_dir / "tensorboard")
    if checkpoint.replay_buffer and getattr(agent, "replay_buffer", None) is not None:
        load_replay_buffer(agent.replay_buffer, folder / checkpoint.replay_buffer)
    return agent, done


def checkpoint_rng(run_dir: Path) -> dict[str, Any] | None:
    """The random-number states saved with the run's last checkpoint (None: none saved)."""
    checkpoint = latest_checkpoint(run_dir)
    if not checkpoint or not checkpoint.rng:
        return None
    return load_rng_state(run_dir / "checkpoints" / checkpoint.rng)


@contextlib.contextmanager
def resumable(config: LearnConfig, run_dir: Path) -> Iterator[None]:
    """Turn a Ctrl-C (SIGINT) during learning or evaluation into a short report of where the run
    stands and the exact command that continues it, and exit status 130, instead of a traceback."""
    try:
        yield
    except KeyboardInterrupt:
        checkpoint = latest_checkpoint(run_dir)
        covered = checkpoint.episodes if checkpoint else 0
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
            if done and is_step_info(info) and (step := StepInfo.from_info(info)).done:
                self.done += 1
                if self.bar is not None:
                    dev = step.dev_score
                    self.bar.set_postfix_str(
                        f"ctrl {step.final_ctrl_score:.3f}" + ("" if dev is None else f" dev {dev:.3f}")
                        + f" compute {step.compute_total:.2f}"
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


SURROGATE_FILE = "surrogate.json"
"""The fitted surrogate of a pre-trained run and its cross-validation (:func:`pretrain_on_surrogate`)."""


RECORD_FILES = ("selection.jsonl", "evaluation.jsonl")
"""Episode records ``compare.py`` writes (:class:`agents.baselines.EpisodeRecord`), which a surrogate
can also learn from: a protocol's selection episodes (dev sealed) first."""


def read_logs(paths: Sequence[str | Path]) -> Logs:
    """The logged decisions of earlier runs, for :class:`envs.surrogate.SurrogateModel`.

    Each path is a log file or a folder holding one: a learning run's ``episodes.jsonl`` (a torn
    last line, from a killed run, is skipped), or the episode records of ``compare.py``
    (``selection.jsonl`` of a protocol, whose grid applies every menu plan at every depth, else
    ``evaluation.jsonl``).

    :raises ConfigError: a path that is neither, or logs the surrogate cannot use
        (:func:`envs.surrogate.logs_from_lines`).
    """
    sources = {}
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = [path / name for name in (EPISODES_FILE, *RECORD_FILES) if (path / name).is_file()]
            path = found[0] if found else path / EPISODES_FILE
        if not path.is_file():
            raise ConfigError(
                f"--surrogate {raw}: no such file (give an episodes.jsonl, a compare.py selection.jsonl or "
                "evaluation.jsonl, or the run folder holding one)"
            )
        lines = read_episodes(path)
        sources[str(path)] = record_lines(lines, path) if lines and "controller" in lines[0] else lines
    return logs_from_lines(sources)


def record_lines(records: Sequence[dict[str, Any]], source: str | Path) -> list[dict[str, Any]]:
    """``compare.py`` episode records (:meth:`EpisodeRecord.to_dict` lines) as ``episodes.jsonl`` lines.

    :raises ConfigError: records without their ctrl states (written before DynaKD kept them).
    """
    lines = []
    for episode, data in enumerate(records):
        record = EpisodeRecord.from_dict(data)
        for step in record.steps:
            if step.ctrl is None:
                raise ConfigError(
                    f"{source}: episode records without ctrl states (written before DynaKD recorded them) cannot "
                    "train a surrogate; run compare.py again with this version"
                )
            line = {"episode": episode, "step": step.step, "plan": step.plan, "ctrl": step.ctrl,
                    "stats": step.stats, "step_compute": step.compute}
            if step.initial_ctrl is not None:
                line["initial_ctrl"] = step.initial_ctrl
            lines.append(line)
    return lines


@dataclasses.dataclass(frozen=True)
class Surrogate:
    """A surrogate fitted for a learning run, and how well it predicts held-out episodes.

    :param model: the fitted model.
    :param episodes: logged episodes it was fitted to.
    :param check: its cross-validation (None: too few complete episodes to hold any out).
    :param summary: one line for the report.
    """

    model: SurrogateModel
    episodes: int
    check: CrossValidation | None
    summary: str


def fit_surrogate(config: LearnConfig, spaces: Spaces) -> Surrogate:
    """Read and fit ``config.surrogate``'s logs and check that the surrogate can stand in for the
    run's env, before any heavy work (:func:`envs.surrogate.check_surrogate_fits`)."""
    logs = read_logs(config.surrogate)
    model = SurrogateModel.fit(logs)
    check_surrogate_fits(model, config.env, spaces.num_teachers, spaces.regression)
    try:
        check: CrossValidation | None = cross_validate(logs)
        summary = check.summary()
    except ConfigError as err:  # too few complete episodes to hold any out
        check, summary = None, f"surrogate: not cross-validated ({err})"
    return Surrogate(model, logs.num_episodes, check, summary)


def pretrain_on_surrogate(agent: BaseAlgorithm, config: LearnConfig, env: DistillationEnv, run_dir: Path,
                          surrogate: Surrogate) -> str:
    """Learn ``config.surrogate_episodes`` episodes on the surrogate env, then hand the learner back
    its real env.

    The surrogate env has the real env's spaces, so the learner continues on the real env as it
    is; its SB3 scalars go to TensorBoard as ``surrogate_<n>``; ``episodes.jsonl`` holds real
    episodes only. The model and its cross-validation are written to ``<run_dir>/surrogate.json``.

    :return: a one-line summary (logged episodes, held-out accuracy, time) for the report.
    """
    regression = env.distiller.spec.is_regression
    envs = [make_surrogate_env(config.env, surrogate.model, env.teacher_names, regression) for _ in range(agent.n_envs)]
    checked = dataclasses.asdict(surrogate.check) if surrogate.check is not None else None
    atomic_write_json(run_dir / SURROGATE_FILE, {**surrogate.model.to_dict(), "cross_validation": checked})
    real = agent.get_env()
    start = time.perf_counter()
    agent.set_env(DummyVecEnv([lambda e=e: e for e in envs]))
    agent.learn(total_timesteps=config.surrogate_episodes * env.steps_per_episode, tb_log_name="surrogate",
                reset_num_timesteps=True)
    agent.set_env(real)
    summary = (f"{surrogate.summary}; pre-trained on it for {config.surrogate_episodes} episodes in "
               f"{time.perf_counter() - start:.0f} s ({surrogate.episodes} logged episodes)")
    logger.info(summary)
    return summary


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
