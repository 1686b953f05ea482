"""What a learning run leaves behind: ``episodes.jsonl``, TensorBoard scalars and checkpoints.

:class:`EpisodeLogger` writes, for every env step during SB3 learning, one JSON line (the applied
plan, the epoch stats, ctrl evaluation, reward, compute; on the first step of an episode also the
fresh student's ctrl evaluation ``initial_ctrl``, on the last the final ctrl and dev scores) to
``<run_dir>/episodes.jsonl`` — append-only and flushed per line — and
the same numbers as TensorBoard scalars under ``<run_dir>/tensorboard/``:

* per step, in ``dynakd/`` (x = timesteps): ``step/reward``, ``step/ctrl_score``, ``step/compute``
  and the step's ``plan/*`` and ``train/*`` (:func:`kd_backend.reporting.step_scalars`);
* per episode, in ``dynakd_episodes/`` (x = episode): ``episode/final_ctrl_score``,
  ``episode/final_dev_score``, ``episode/compute``, ``episode/return``;
* the Custom Scalars layout of DynaKD's one tag schema (:data:`kd_backend.reporting.TAG_GROUPS`).

A learner that continues from a checkpoint at timestep T (``reset_num_timesteps=False``) redoes
the steps after it, while the events an interrupted run wrote for them stay in its event files.
So that TensorBoard shows each step once, every writer opens with ``purge_step`` at the point it
restarts from (TensorBoard then drops the earlier events at or after it): timestep T + 1 for
``dynakd/`` and for SB3's own folder (``<tb_log_name>_<n>``, which SB3 continues but does not
purge), episode ``start_episode`` for ``dynakd_episodes/``. The two x-axes are why per-episode
scalars have a folder of their own: a purge drops every tag of a folder from one step on.

It is also the one place where a learning run is checkpointed. Every ``checkpoint_every``
finished episodes it saves the learner (an off-policy replay buffer as ``.npz``, and the
random-number states as JSON: nothing a resume unpickles, see :mod:`agents.storage`) under
``<run_dir>/checkpoints/`` and points ``checkpoints/latest.json`` at it, at the first moment the
learner holds what it learned from those episodes:

* on-policy learners (PPO, A2C) update after a rollout ends, so they are saved when the next
  rollout starts (after the update), provided no episode is in progress; a checkpoint taken as
  the episode ends would predate the update, and resuming from it would drop that update;
* off-policy learners (DQN, SAC) are saved at the start of the next rollout after an episode
  ends (one env step later for SB3): only then is the episode's last transition in the replay
  buffer and its gradient step taken; a checkpoint taken as the episode ends would lose both;
* an off-policy checkpoint still due when learning ends is saved then.

Checkpoints fall on episode boundaries, so resuming loses no finished episode;
``checkpoint_at_end`` adds one when learning ends. :func:`truncate_episodes` drops the lines of
episodes a resumed run will redo.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, TextIO

from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Logger, TensorBoardOutputFormat
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm

from agents.storage import save_replay_buffer, save_rng_state, set_rng_state
from envs.records import StepInfo, is_step_info
from kd_backend.errors import ConfigError
from kd_backend.io import atomic_write_json, atomic_write_text
from kd_backend.reporting import (
    episode_scalars,
    step_scalars,
    write_layout,
    write_scalars,
)

logger = logging.getLogger(__name__)

EPISODES_FILE = "episodes.jsonl"
STEP_SCALARS = "dynakd"
"""Folder under ``<run_dir>/tensorboard/`` of the per-step scalars (x = timesteps)."""
EPISODE_SCALARS = "dynakd_episodes"
"""Folder under ``<run_dir>/tensorboard/`` of the per-episode scalars (x = episode)."""


def _purge_sb3_tensorboard(sb3_logger: Logger, step: int) -> None:
    """Reopen SB3's TensorBoard writer with ``purge_step=step``, so that TensorBoard drops the SB3
    events at ``step`` and later that an interrupted run left in the folder SB3 continues.

    The writer SB3 opened is closed first; its event file keeps only a header.
    """
    from torch.utils.tensorboard import SummaryWriter

    for output in sb3_logger.output_formats:
        if isinstance(output, TensorBoardOutputFormat):
            log_dir = output.writer.get_logdir()
            output.writer.close()
            output.writer = SummaryWriter(log_dir, purge_step=step)


@dataclass(frozen=True)
class Checkpoint:
    """``checkpoints/latest.json``: the run's last checkpoint, written by :class:`EpisodeLogger` and read
    back by :meth:`read` (``--resume``); file names are relative to ``checkpoints/``.

    :param episodes: finished episodes the checkpoint covers.
    :param num_timesteps: the learner's timesteps at the checkpoint.
    :param model: the learner's ``.zip``.
    :param replay_buffer: an off-policy learner's replay buffer ``.npz`` (None for PPO/A2C).
    :param rng: the random-number states ``.json``.
    """

    episodes: int
    num_timesteps: int
    model: str
    replay_buffer: str | None
    rng: str | None

    FILE: ClassVar[str] = "latest.json"

    def write(self, run_dir: str | Path) -> Path:
        """Point ``run_dir/checkpoints/latest.json`` at this checkpoint (atomically)."""
        return atomic_write_json(Path(run_dir) / "checkpoints" / self.FILE, asdict(self))

    @classmethod
    def read(cls, run_dir: str | Path) -> Checkpoint | None:
        """The run's last checkpoint, or None when it has none.

        :raises ConfigError: a ``latest.json`` that is not one (naming the file and the fix).
        """
        path = Path(run_dir) / "checkpoints" / cls.FILE
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
            return cls(**{f.name: data.get(f.name) for f in fields(cls)} | {"episodes": int(data["episodes"])})
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise ConfigError(
                f"{path} is not a checkpoint record ({e}); start the run over with --overwrite, or restore the file"
            ) from e


class EpisodeLogger(BaseCallback):
    """Per-step JSONL + TensorBoard logging and episode-boundary checkpoints for DynaKD learning runs.

    :param run_dir: the run's folder.
    :param checkpoint_every: save a checkpoint once this many episodes finished since the last one
        (0 = never), at the start of the next rollout (after the update that learns from them) or
        when learning ends.
    :param tensorboard: also write TensorBoard scalars (SB3's own events are purged on continuing
        either way).
    :param start_episode: number of the first episode (the episodes already finished, when resuming).
    :param save_replay_buffer: with off-policy learners, save the replay buffer with each checkpoint.
    :param checkpoint_at_end: also save when learning ends, if an episode finished since the last
        checkpoint (so that a crash after learning resumes without relearning), even with
        ``checkpoint_every=0``.
    :param rng_state: random-number states to restore as learning starts (a checkpoint's, when
        resuming: after SB3 has reset the env, so the resumed run samples what the uninterrupted one would).
    :param verbose: SB3 verbosity.
    """

    def __init__(
        self,
        run_dir: str | Path,
        checkpoint_every: int = 0,
        tensorboard: bool = True,
        start_episode: int = 0,
        save_replay_buffer: bool = True,
        checkpoint_at_end: bool = False,
        rng_state: dict[str, Any] | None = None,
        verbose: int = 0,
    ) -> None:
        super().__init__(verbose)
        self.run_dir = Path(run_dir)
        self.checkpoint_every = checkpoint_every
        self.checkpoint_at_end = checkpoint_at_end
        self.tensorboard = tensorboard
        self.episodes = start_episode  # finished episodes
        self._next_episode = start_episode  # number of the next episode to start
        self.save_replay = save_replay_buffer
        self._file: TextIO | None = None
        self._writer: Any = None  # per-step scalars
        self._episode_writer: Any = None
        self._current: dict[int, int] = {}  # env index -> episode number in progress
        self._returns: dict[int, float] = {}
        self._checkpointed = start_episode
        self._rng_state = rng_state

    @property
    def episodes_path(self) -> Path:
        return self.run_dir / EPISODES_FILE

    @property
    def _between_episodes(self) -> bool:
        """No env has an episode in progress: a checkpoint now covers exactly ``self.episodes``."""
        return not self._current

    def _checkpoint_due(self) -> bool:
        every = self.checkpoint_every
        return bool(every) and self.episodes - self._checkpointed >= every and self._between_episodes

    def _on_training_start(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._file = self.episodes_path.open("a")
        # The steps this learn() call logs start after the learner's timesteps (a checkpoint's, when
        # resuming) and at episode self.episodes: events of earlier runs from there on are stale.
        start = self.model.num_timesteps
        if self.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            folder = self.run_dir / "tensorboard"
            self._writer = SummaryWriter(str(folder / STEP_SCALARS), purge_step=start + 1)
            self._episode_writer = SummaryWriter(str(folder / EPISODE_SCALARS), purge_step=self.episodes)
            write_layout(self._writer)
        if start > 0:
            _purge_sb3_tensorboard(self.model.logger, start + 1)
        self._current.clear()  # a new learn() call starts numbering after the finished episodes
        self._returns.clear()
        self._next_episode = self.episodes
        if self._rng_state is not None:
            set_rng_state(self.model, self._rng_state)
            self._rng_state = None

    def _on_step(self) -> bool:
        infos, rewards, dones = self.locals["infos"], self.locals["rewards"], self.locals["dones"]
        for i, info in enumerate(infos):
            if not is_step_info(info):
                continue
            step = StepInfo.from_info(info)
            if i not in self._current:
                self._current[i], self._next_episode = self._next_episode, self._next_episode + 1
                self._returns[i] = 0.0
            episode = self._current[i]
            reward = float(rewards[i])
            self._returns[i] += reward
            done = bool(dones[i])
            line: dict[str, Any] = {
                "episode": episode, "step": step.step, "env": i, "timestep": self.num_timesteps,
                "seed": step.seed, "reward": reward, "plan": dict(step.plan), "stats": dict(step.stats),
                "ctrl": dict(step.ctrl), "teacher_weights": step.teacher_weights, "step_compute": step.step_compute,
                "compute_total": step.compute_total, "done": done,
            }
            if step.initial_ctrl is not None:
                line["initial_ctrl"] = dict(step.initial_ctrl)
            if done:
                line.update(final_ctrl_score=step.final_ctrl_score, dev_score=step.dev_score,
                            episode_return=self._returns[i])
            self._write_line(line)
            self._write_scalars(line, list(step.teacher_names))
            if done:
                self._finish_episode(i, line)
        return True

    def _on_rollout_start(self) -> None:
        # SB3 updates (and off-policy learners store the last transition) between rollouts: the
        # start of the next one is the first moment the learner holds all it learned from an episode.
        if self._checkpoint_due():
            self.save_checkpoint()

    def _write_line(self, line: dict[str, Any]) -> None:
        assert self._file is not None
        self._file.write(json.dumps(line) + "\n")
        self._file.flush()

    def _write_scalars(self, line: dict[str, Any], teacher_names: list[str]) -> None:
        if self._writer is None:
            return
        scalars = {
            "step/reward": line["reward"], "step/ctrl_score": line["ctrl"]["score"], "step/compute": line["step_compute"],
            **step_scalars(line["plan"], line["stats"], teacher_names),
        }
        write_scalars(self._writer, scalars, line["timestep"])

    def _finish_episode(self, i: int, line: dict[str, Any]) -> None:
        episode = self._current.pop(i)
        self.episodes += 1
        if self._episode_writer is not None:
            scalars = episode_scalars(line["final_ctrl_score"], line["dev_score"], line["compute_total"], line["episode_return"])
            write_scalars(self._episode_writer, scalars, episode)
            self._episode_writer.flush()
            self._writer.flush()

    def save_checkpoint(self) -> Path:
        """Save the learner now as ``checkpoints/episode-<N>.zip`` and point ``latest.json`` at it."""
        folder = self.run_dir / "checkpoints"
        folder.mkdir(parents=True, exist_ok=True)
        model_path = folder / f"episode-{self.episodes:05d}.zip"
        self.model.save(model_path)
        buffer_path = None
        if self.save_replay and isinstance(self.model, OffPolicyAlgorithm):
            buffer_path = folder / f"episode-{self.episodes:05d}-replay.npz"  # no pickle (agents.storage)
            save_replay_buffer(self.model.replay_buffer, buffer_path)
        rng_path = save_rng_state(self.model, folder / f"episode-{self.episodes:05d}-rng.json")
        Checkpoint(episodes=self.episodes, num_timesteps=self.num_timesteps, model=model_path.name,
                   replay_buffer=buffer_path.name if buffer_path else None, rng=rng_path.name).write(self.run_dir)
        self._checkpointed = self.episodes
        logger.info("checkpoint after %d episodes: %s", self.episodes, model_path)
        return model_path

    def _on_training_end(self) -> None:
        at_end = self.checkpoint_at_end and self.episodes > self._checkpointed and self._between_episodes
        # Off-policy: the checkpoint of the last episode, due one step after it ended, is taken now.
        if at_end or (isinstance(self.model, OffPolicyAlgorithm) and self._checkpoint_due()):
            self.save_checkpoint()
        if self._file is not None:
            self._file.close()
            self._file = None
        for writer in (self._writer, self._episode_writer):
            if writer is not None:
                writer.close()
        self._writer = self._episode_writer = None


def read_episodes(path: str | Path) -> list[dict[str, Any]]:
    """The lines of an ``episodes.jsonl``; a torn last line (a kill mid-write) is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    lines = []
    for n, raw in enumerate(path.read_text().splitlines()):
        if not raw.strip():
            continue
        try:
            lines.append(json.loads(raw))
        except json.JSONDecodeError:
            logger.warning("%s line %d is not valid JSON (interrupted write?); skipped", path, n + 1)
    return lines


def truncate_episodes(path: str | Path, num_episodes: int) -> int:
    """Keep only the lines of episodes ``< num_episodes`` (those a checkpoint covers); returns lines kept."""
    kept = [line for line in read_episodes(path) if line.get("episode", 0) < num_episodes]
    atomic_write_text(path, "".join(json.dumps(line) + "\n" for line in kept))
    return len(kept)
