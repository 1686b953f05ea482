"""SB3 learners, baselines and the logging callback on the tiny environment."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from agents import (
    EpisodeLogger,
    PaperHeuristic,
    RandomController,
    ScheduleController,
    StaticController,
    evaluate_controller,
    load_agent,
    make_agent,
    read_episodes,
    truncate_episodes,
)
from agents.callbacks import EPISODE_SCALARS, STEP_SCALARS
from envs import DistillationEnv, tiny_config
from kd_backend.errors import ConfigError
from kd_backend.pipeline import build_distiller
from kd_backend.plan import EpochPlan
from kd_backend.reporting import read_scalars


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    path = tmp_path_factory.getbasetemp() / "dynakd-tiny-cache"  # shared with test_env: teachers train once
    path.mkdir(exist_ok=True)
    return tiny_config(cache_dir=str(path))


@pytest.fixture(scope="module")
def distiller(config):
    return build_distiller(config.backend)


def make_env(config, distiller, kind="discrete", **changes):
    return DistillationEnv(config.replace(action_space=kind, **changes), distiller=distiller)


@pytest.mark.parametrize(
    "algo, kind", [("ppo", "discrete"), ("a2c", "multidiscrete"), ("dqn", "discrete"), ("sac", "box")]
)
def test_each_algorithm_learns_a_few_steps(config, distiller, algo, kind, tmp_path):
    env = make_env(config, distiller, kind)
    length = env.steps_per_episode
    small = {"ppo": {"n_steps": length, "n_epochs": 2}, "a2c": {}, "dqn": {"learning_starts": length},
             "sac": {"learning_starts": length}}[algo]  # so that two episodes include updates
    agent = make_agent(algo, env, tensorboard_log=tmp_path / "tb", seed=0, **small)
    before = [p.detach().clone() for p in agent.policy.parameters()]
    agent.learn(total_timesteps=2 * length)
    assert agent.num_timesteps >= 2 * length
    after = list(agent.policy.parameters())
    assert any(not np.array_equal(a.detach().numpy(), b.numpy()) for a, b in zip(after, before)), "no update happened"
    action, _ = agent.predict(env.reset(seed=0)[0], deterministic=True)
    assert env.action_space.contains(np.asarray(action, dtype=env.action_space.dtype))
    assert list((tmp_path / "tb").iterdir()), "SB3 wrote no TensorBoard events"


def test_defaults_suit_short_expensive_episodes(config, distiller):
    env = make_env(config, distiller)
    ppo = make_agent("PPO", env)
    assert ppo.n_steps == 4 * env.steps_per_episode and ppo.gamma == 1.0 and ppo.batch_size <= ppo.n_steps
    dqn = make_agent("dqn", env)
    assert dqn.learning_starts == 2 * env.steps_per_episode and 0.99 <= dqn.gamma <= 1.0
    assert make_agent("ppo", env, gamma=0.5).gamma == 0.5  # overrides win


def test_algorithm_and_space_mismatch_is_named(config, distiller):
    box, discrete = make_env(config, distiller, "box"), make_env(config, distiller)
    with pytest.raises(ConfigError, match=r"'dqn'.*box.*\['ppo', 'a2c', 'sac'\]"):
        make_agent("dqn", box)
    with pytest.raises(ConfigError, match=r"'sac'.*discrete"):
        make_agent("sac", discrete)
    with pytest.raises(ConfigError, match="'td9'"):
        make_agent("td9", discrete)


def test_load_agent_checks_spaces(config, distiller, tmp_path):
    env = make_env(config, distiller)
    agent = make_agent("ppo", env)
    agent.save(tmp_path / "policy.zip")
    loaded = load_agent(tmp_path / "policy.zip", env)
    obs = env.reset(seed=0)[0]
    assert loaded.predict(obs, deterministic=True)[0] == agent.predict(obs, deterministic=True)[0]
    other = make_env(config, distiller, "multidiscrete")
    with pytest.raises(ConfigError, match=r"action space Discrete\(13\).*MultiDiscrete"):
        load_agent(tmp_path / "policy.zip", other)
    shorter_menu = make_env(config, distiller, menu=("kd-t0", "kd-t1"))
    with pytest.raises(ConfigError, match="observation space"):
        load_agent(tmp_path / "policy.zip", shorter_menu)
    with pytest.raises(ConfigError, match="does not exist"):
        load_agent(tmp_path / "missing.zip", env)


def test_baselines_and_policies_share_one_evaluation(config, distiller):
    env = make_env(config, distiller, horizon=1)
    length = env.steps_per_episode
    controllers = [
        StaticController.plain_kd(teacher=1, num_teachers=env.distiller.num_teachers),
        *(PaperHeuristic(m) for m in ("adoption", "selection", "objective", "combined")),
        RandomController(env.action_space, seed=0),
        ScheduleController([EpochPlan(fraction=0.3)] * length),
        make_agent("ppo", env),
    ]
    table = {}
    for controller in controllers:
        records = evaluate_controller(env, controller, seeds=[0])
        (record,) = records
        assert len(record.steps) == length and record.final_dev_score is not None
        assert record.total_compute > 0 and record.episode_return == pytest.approx(sum(s.reward for s in record.steps))
        table[getattr(controller, "name", "ppo")] = record
    assert table["kd-t1"].steps[0].plan["teacher_weights"] == [0.0, 1.0]
    assert table["paper-selection"].steps[0].plan["selection"] == "margin"
    assert table["paper-combined"].steps[0].plan["teacher_mode"] == "hard"
    assert table["schedule"].total_compute < table["kd-t1"].total_compute


def test_replaying_a_recorded_schedule_reproduces_the_run(config, distiller, tmp_path):
    env = make_env(config, distiller)
    (random_run,) = evaluate_controller(env, RandomController(env.action_space, seed=3), seeds=[5])
    ScheduleController(random_run.schedule).save(tmp_path / "schedule.json", source="random")
    replay = ScheduleController.load(tmp_path / "schedule.json")
    (replayed,) = evaluate_controller(env, replay, seeds=[5])
    assert replayed.schedule == random_run.schedule
    assert replayed.final_ctrl_score == random_run.final_ctrl_score
    assert replayed.final_dev_score == random_run.final_dev_score


def test_malformed_schedules_are_rejected(config, distiller, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="non-empty"):
        ScheduleController([])
    with pytest.raises(ConfigError, match="step 1.*fraction"):
        ScheduleController([{"fraction": 0.5}, {"fraction": 2.0}])
    with pytest.raises(ConfigError, match="step 0.*'teachers'"):
        ScheduleController([{"teachers": 1}])
    with pytest.raises(ConfigError, match="step 0 is a int"):
        ScheduleController([3])
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        ScheduleController.load(tmp_path / "bad.json")
    (tmp_path / "nokey.json").write_text(json.dumps({"schedule": []}))
    with pytest.raises(ConfigError, match="no 'plans' key"):
        ScheduleController.load(tmp_path / "nokey.json")
    env = make_env(config, distiller)
    calls = []
    monkeypatch.setattr(env.distiller, "train_epoch", lambda *a, **k: calls.append(a))
    n = env.steps_per_episode
    with pytest.raises(ConfigError, match=f"{n + 1} plans but an episode has {n} decisions"):
        evaluate_controller(env, ScheduleController([EpochPlan()] * (n + 1)), seeds=[0])
    assert not calls, "the length check must come before any training"


def test_callback_writes_jsonl_tensorboard_and_checkpoints(config, distiller, tmp_path):
    env = make_env(config, distiller)
    length = env.steps_per_episode
    agent = make_agent("ppo", env, n_steps=length, n_epochs=1)
    initial = [p.detach().clone() for p in agent.policy.parameters()]
    logger = EpisodeLogger(tmp_path / "run", checkpoint_every=1, checkpoint_at_end=True)
    agent.learn(total_timesteps=2 * length, callback=logger)

    lines = read_episodes(tmp_path / "run" / "episodes.jsonl")
    assert len(lines) == 2 * length
    assert [(x["episode"], x["step"]) for x in lines] == [(e, s) for e in range(2) for s in range(1, length + 1)]
    last = lines[-1]
    assert last["done"] and last["dev_score"] is not None and "final_ctrl_score" in last
    assert EpochPlan.from_dict(last["plan"]) and last["stats"]["steps"] > 0

    steps = read_scalars(tmp_path / "run" / "tensorboard" / STEP_SCALARS)
    for tag in ("step/reward", "plan/fraction", "plan/kd_weight", "plan/hidden_weight",
                *(f"plan/teacher_weight/t{k}_{n}" for k, n in enumerate(env.teacher_names))):
        assert tag in steps, tag
    assert [t for t, _ in steps["step/reward"]] == list(range(1, 2 * length + 1))
    per_episode = read_scalars(tmp_path / "run" / "tensorboard" / EPISODE_SCALARS)
    assert set(per_episode) == {"episode/final_ctrl_score", "episode/final_dev_score", "episode/compute",
                                "episode/return"}
    devs = [(t, v) for t, v in per_episode["episode/final_dev_score"]]
    assert devs == [(e, pytest.approx(x["dev_score"])) for e, x in enumerate(x for x in lines if x["done"])]

    # PPO: the checkpoint after episode 0 is taken after the update that learned from it, not before.
    first = load_agent(tmp_path / "run" / "checkpoints" / "episode-00001.zip", env)
    assert first.num_timesteps == length
    assert any(not np.array_equal(a.detach().numpy(), b.numpy()) for a, b in zip(first.policy.parameters(), initial))
    latest = json.loads((tmp_path / "run" / "checkpoints" / "latest.json").read_text())  # at the end
    assert latest["episodes"] == 2 and (tmp_path / "run" / "checkpoints" / latest["model"]).exists()
    assert load_agent(tmp_path / "run" / "checkpoints" / latest["model"], env).num_timesteps == 2 * length

    # resume: drop the episode a checkpoint after episode 1 would not cover, then continue numbering
    assert truncate_episodes(tmp_path / "run" / "episodes.jsonl", 1) == length
    resumed = EpisodeLogger(tmp_path / "run", start_episode=1)
    agent.learn(total_timesteps=length, callback=resumed, reset_num_timesteps=False)
    episodes = [x["episode"] for x in read_episodes(tmp_path / "run" / "episodes.jsonl")]
    assert episodes == [0] * length + [1] * length


def test_off_policy_checkpoints_as_episodes_end(config, distiller, tmp_path):
    env = make_env(config, distiller)
    length = env.steps_per_episode
    agent = make_agent("dqn", env, learning_starts=length)
    agent.learn(total_timesteps=2 * length, callback=EpisodeLogger(tmp_path / "run", checkpoint_every=1))
    folder = tmp_path / "run" / "checkpoints"
    latest = json.loads((folder / "latest.json").read_text())
    assert latest == {"episodes": 2, "num_timesteps": 2 * length, "model": "episode-00002.zip",
                      "replay_buffer": "episode-00002-replay.npz", "rng": "episode-00002-rng.json"}
    first = load_agent(folder / "episode-00001.zip", env)
    assert first.num_timesteps == length and (folder / "episode-00001-replay.npz").exists()


def test_resuming_from_a_checkpoint_shows_each_step_once_in_tensorboard(config, distiller, tmp_path):
    """Episode 2 is logged, then redone from the checkpoint taken before it (as after a kill):
    TensorBoard keeps the redone events only, in DynaKD's scalars and in SB3's own."""
    env = make_env(config, distiller)
    length = env.steps_per_episode
    run, tb = tmp_path / "run", tmp_path / "run" / "tensorboard"
    agent = make_agent("ppo", env, n_steps=length, n_epochs=1, tensorboard_log=tb)
    agent.learn(total_timesteps=3 * length, callback=EpisodeLogger(run, checkpoint_every=1), tb_log_name="sb3")
    latest = json.loads((run / "checkpoints" / "latest.json").read_text())
    assert latest["episodes"] == 2 and latest["num_timesteps"] == 2 * length  # PPO: episode 2 awaits its update
    assert max(t for t, _ in read_scalars(tb)["time/fps"]) == 3 * length

    time.sleep(1.1)  # TensorBoard reads a folder's event files in name order, which starts with the second
    truncate_episodes(run / "episodes.jsonl", 2)
    resumed = load_agent(run / "checkpoints" / latest["model"], env)
    resumed.tensorboard_log = str(tb)
    resumed.learn(total_timesteps=length, callback=EpisodeLogger(run, checkpoint_every=1, start_episode=2),
                  tb_log_name="sb3", reset_num_timesteps=False)

    scalars = read_scalars(tb)
    assert {"step/reward", "episode/return", "time/fps", "train/value_loss"} <= set(scalars)
    for tag, points in scalars.items():
        steps = [t for t, _ in points]
        assert len(steps) == len(set(steps)), f"{tag} repeats steps {sorted(steps)}"
    assert [t for t, _ in scalars["step/reward"]] == list(range(1, 3 * length + 1))
    assert [t for t, _ in scalars["time/fps"]] == [length, 2 * length, 3 * length]
    lines = read_episodes(run / "episodes.jsonl")
    assert [(x["episode"], x["step"]) for x in lines] == [(e, s) for e in range(3) for s in range(1, length + 1)]
    rewards = {x["timestep"]: x["reward"] for x in lines}  # the redone steps' values, not the stale ones
    assert scalars["step/reward"] == [(t, pytest.approx(rewards[t])) for t in range(1, 3 * length + 1)]
    returns = [x["episode_return"] for x in lines if x["done"]]
    assert scalars["episode/return"] == [(e, pytest.approx(r)) for e, r in enumerate(returns)]


def test_paper_heuristics_are_named_plans_of_the_one_vocabulary():
    from envs.actions import PAPER_HEURISTICS, named_plans

    plans = named_plans(2)
    for name, plan_name in PAPER_HEURISTICS.items():
        heuristic = PaperHeuristic(name.removeprefix("paper-"))
        assert heuristic.name == name and heuristic.plan == EpochPlan(**plans[plan_name])
    assert PaperHeuristic("adoption", adoption_mode="soft").plan.teacher_mode == "soft"
    with pytest.raises(ConfigError, match="not one of"):
        PaperHeuristic("nope")


def test_checkpoint_record_round_trips_and_refuses_garbage(tmp_path):
    from agents.callbacks import Checkpoint

    assert Checkpoint.read(tmp_path) is None
    record = Checkpoint(episodes=4, num_timesteps=12, model="episode-00004.zip", replay_buffer=None, rng="r.json")
    record.write(tmp_path)
    assert Checkpoint.read(tmp_path) == record
    (tmp_path / "checkpoints" / "latest.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not a checkpoint record.*--overwrite"):
        Checkpoint.read(tmp_path)
