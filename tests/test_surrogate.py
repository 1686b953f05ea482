"""The surrogate env: logs read back, a ridge fit checked against a known generating table, the same
spaces as the real env, refusals that name their fix, and pre-training inside ``learn_policy``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from agents.configs import LearnConfig
from agents.learning import SURROGATE_FILE, read_logs
from agents.spaces import expected_spaces
from agents.workflows import learn_policy
from envs import tiny_config
from envs.actions import plan_fields
from envs.surrogate import (
    SurrogateModel,
    cross_validate,
    make_surrogate_env,
    state_vector,
)
from kd_backend.errors import ConfigError
from kd_backend.plan import EpochPlan, EvalStats

MENU = ("ce-only", "kd-t0")
PLANS = {name: EpochPlan(**plan_fields(name, 1)) for name in MENU}
# The generating table: ctrl score gain and compute of each plan at decisions 0 and 1.
GAIN = {"ce-only": (0.05, 0.01), "kd-t0": (0.10, 0.02)}
COMPUTE = {"ce-only": (1.0, 1.0), "kd-t0": (1.2, 1.05)}


def _ctrl(score: float, teacher_score: float = 0.9) -> dict:
    return EvalStats(split="ctrl", num_examples=100, metrics={"accuracy": score}, score=score, loss=1.0 - score,
                     mean_uncertainty=1.0 - score, teacher_agreement=(score,), teacher_kl=(1.0 - score,),
                     teacher_scores=(teacher_score,)).to_dict()


def write_log(path: Path, schedules: list[tuple[str, str]], start: float = 0.5, noise: float = 0.0,
              initial: bool = True) -> Path:
    """An ``episodes.jsonl`` of the generating table: one episode per schedule of two plans."""
    rng = np.random.default_rng(0)
    lines = []
    for e, names in enumerate(schedules):
        score = start
        for t, name in enumerate(names):
            before = score
            score = before + GAIN[name][t] + noise * rng.normal()
            line = {"episode": e, "step": t + 1, "plan": PLANS[name].to_dict(), "stats": {"losses": {"ce": 0.3}},
                    "ctrl": _ctrl(score), "step_compute": COMPUTE[name][t], "done": t == len(names) - 1}
            if t == 0 and initial:
                line["initial_ctrl"] = _ctrl(before)
            lines.append(line)
    path.write_text("".join(json.dumps(line) + "\n" for line in lines) + '{"episode": 9, "st')  # a torn last line
    return path


ALL = [(a, b) for a in MENU for b in MENU]


def test_logs_read_back_every_state_and_refuse_logs_without_initial_state(tmp_path):
    logs = read_logs([write_log(tmp_path / "episodes.jsonl", ALL)])
    assert logs.num_episodes == 4 and len(logs.steps) == 8  # the torn last line is skipped
    first, second = logs.steps[0], logs.steps[1]
    assert first.t == 0 and second.t == 1 and first.plan == PLANS["ce-only"]
    np.testing.assert_allclose(first.before, state_vector(_ctrl(0.5)))
    np.testing.assert_array_equal(second.before, first.after)  # each step starts where the last ended
    assert read_logs([tmp_path]).num_episodes == 4  # a run folder holding episodes.jsonl
    old = write_log(tmp_path / "old.jsonl", ALL, initial=False)
    with pytest.raises(ConfigError, match="initial_ctrl.*learn on logs written by this version"):
        read_logs([old])
    with pytest.raises(ConfigError, match="no such file"):
        read_logs([tmp_path / "missing.jsonl"])


def test_the_fit_recovers_the_generating_table_exactly(tmp_path):
    logs = read_logs([write_log(tmp_path / "e.jsonl", ALL * 3)])
    model = SurrogateModel.fit(logs, ridge=1e-6)
    assert model.horizon == 2 and model.num_teachers == 1 and set(model.plans) == set(PLANS.values())
    for name in MENU:
        state = state_vector(_ctrl(0.5))
        after, ce, compute = model.predict(state, PLANS[name], 0)
        assert after[0] == pytest.approx(0.5 + GAIN[name][0], abs=1e-4)
        assert compute == pytest.approx(COMPUTE[name][0], abs=1e-4) and ce == pytest.approx(0.3, abs=1e-4)
        after2, _, compute2 = model.predict(after, PLANS[name], 1)
        assert after2[0] - after[0] == pytest.approx(GAIN[name][1], abs=1e-4)
        assert compute2 == pytest.approx(COMPUTE[name][1], abs=1e-4)
    assert np.all(model.noise < 1e-4)  # exact data: no residual noise to sample
    # the JSON round trip predicts the same
    again = SurrogateModel.from_dict(json.loads(json.dumps(model.to_dict())))
    np.testing.assert_allclose(again.predict(state, PLANS["kd-t0"], 0)[0], model.predict(state, PLANS["kd-t0"], 0)[0])
    with pytest.raises(ConfigError, match="never applied"):
        model.predict(state, EpochPlan(fraction=0.3), 0)
    with pytest.raises(ConfigError, match="beyond the 2 decisions"):
        model.predict(state, PLANS["kd-t0"], 2)


def test_cross_validation_tells_a_surrogate_that_knows_from_one_that_does_not(tmp_path):
    informative = cross_validate(read_logs([write_log(tmp_path / "a.jsonl", ALL * 3, noise=0.002)]))
    assert informative.episodes == 12 and informative.mae < 0.5 * informative.mae_mean
    assert "better than its mean" in informative.summary()
    # one plan only, pure noise: the final score is the mean plus noise, and the summary says so
    flat = cross_validate(read_logs([write_log(tmp_path / "b.jsonl", [("ce-only", "ce-only")] * 12, noise=0.02)]))
    assert flat.mae >= 0.9 * flat.mae_mean


def test_the_surrogate_env_has_the_real_envs_spaces_and_refuses_what_it_cannot_predict(tmp_path):
    model = SurrogateModel.fit(read_logs([write_log(tmp_path / "e.jsonl", ALL * 2, noise=0.01)]), ridge=1e-3)
    config = dataclasses.replace(tiny_config(), menu=MENU, horizon=2)
    config = config.replace(backend=dataclasses.replace(config.backend, teachers=("tiny-1x64",)))
    env = make_surrogate_env(config, model, ("tiny-1x64",))
    real = expected_spaces(config)
    assert env.observation_space == real.observation and env.action_space == real.action
    check_env(env, skip_render_check=True)
    env.reset(seed=3)
    total, done = 0.0, False
    while not done:
        _, reward, done, _, info = env.step(1)  # kd-t0 twice: +0.10 then +0.02, compute 1.2 then 1.05
        total += reward
    assert info["compute_total"] == pytest.approx(2.25, abs=0.02)
    assert total == pytest.approx(100 * 0.12 - 2.25, abs=3.0)  # noise sd 1 point per step
    with pytest.raises(ConfigError, match=r"never applied the menu plan\(s\) \['pkd'\]"):
        make_surrogate_env(config.replace(menu=(*MENU, "pkd")), model, ("tiny-1x64",))
    with pytest.raises(ConfigError, match="discrete menu only"):
        make_surrogate_env(config.replace(action_space="box"), model, ("tiny-1x64",))
    with pytest.raises(ConfigError, match="logs reached 2"):
        make_surrogate_env(config.replace(horizon=3), model, ("tiny-1x64",))
    with pytest.raises(ConfigError, match="fitted to runs with 1 teacher"):
        make_surrogate_env(config, model, ("a", "b"))


@pytest.mark.slow
def test_learn_policy_pretrains_on_a_surrogate_of_an_earlier_run(tiny_cache, tmp_path):
    # a two-plan menu, so that the 12 logged decisions of the first run try both
    base = LearnConfig(env=tiny_config(cache_dir=str(tiny_cache), menu=("kd-t0", "kd-t1")), runs_dir=str(tmp_path), total_episodes=4,
                       rollout_episodes=2, checkpoint_every=0, eval_seeds=(100,), baselines=("kd-t0",))
    learn_policy(dataclasses.replace(base, name="first"))
    first = [json.loads(line) for line in (tmp_path / "first" / "episodes.jsonl").read_text().splitlines()]
    assert [("initial_ctrl" in line) for line in first] == [True, False, False] * 4  # on each first step only
    cfg = dataclasses.replace(base, name="second", total_episodes=2, surrogate=(str(tmp_path / "first"),),
                              surrogate_episodes=40)
    rows = learn_policy(cfg)
    run = tmp_path / "second"
    saved = json.loads((run / SURROGATE_FILE).read_text())
    assert saved["episodes"] == 4 and saved["cross_validation"]["folds"] >= 2
    real = [json.loads(line) for line in (run / "episodes.jsonl").read_text().splitlines()]
    assert len(real) == 2 * 3  # only the real episodes are logged
    assert {r["controller"] for r in rows} == {"learned-ppo", "kd-t0"}
    assert (run / "tensorboard" / "surrogate_1").is_dir() and (run / "tensorboard" / "sb3_1").is_dir()
    with pytest.raises(ConfigError, match="surrogate_episodes"):
        dataclasses.replace(cfg, surrogate_episodes=0)


def test_learn_policy_refuses_logs_it_cannot_use_before_any_work(tmp_path):
    cache = tmp_path / "cache"  # no teacher may be trained into it
    cfg = LearnConfig(env=tiny_config(cache_dir=str(cache)), runs_dir=str(tmp_path / "runs"), total_episodes=2,
                      rollout_episodes=2, surrogate=(str(write_log(tmp_path / "one-teacher.jsonl", ALL)),))
    with pytest.raises(ConfigError, match="fitted to runs with 1 teacher"):
        learn_policy(cfg)
    with pytest.raises(ConfigError, match="no such file"):
        learn_policy(dataclasses.replace(cfg, surrogate=(str(tmp_path / "nowhere"),)))
    assert not cache.exists()


def test_compare_records_train_a_surrogate_as_learning_logs_do(tiny_cache, tmp_path):
    """A protocol's selection.jsonl (or compare.py's evaluation.jsonl) holds each step's ctrl state and
    the fresh student's: read_logs turns its episodes into the same decisions an episodes.jsonl gives."""
    from agents import ScheduleController, evaluate_controller
    from envs import DistillationEnv

    env = DistillationEnv(tiny_config(cache_dir=str(tiny_cache), menu=("kd-t0", "kd-t1")))
    plans = [EpochPlan(**plan_fields(n, 2)) for n in ("kd-t1", "kd-t0", "kd-t1")]
    records = evaluate_controller(env, ScheduleController(plans), seeds=[3, 4])
    folder = tmp_path / "protocol"
    folder.mkdir()
    (folder / "selection.jsonl").write_text("".join(json.dumps(r.to_dict()) + "\n" for r in records))
    logs = read_logs([folder])
    assert logs.num_episodes == 2 and len(logs.steps) == 6
    _, info = env.reset(seed=4)
    np.testing.assert_array_equal(logs.steps[3].before, state_vector(info["ctrl"]))  # the fresh student
    for got, step in zip(logs.steps, [s for r in records for s in r.steps], strict=True):
        np.testing.assert_array_equal(got.after, state_vector(step.ctrl))
        assert got.plan == EpochPlan.from_dict(step.plan) and got.compute == step.compute
    old = [{**r.to_dict(), "steps": [{k: v for k, v in s.items() if k not in ("ctrl", "initial_ctrl")}
                                      for s in r.to_dict()["steps"]]} for r in records]
    (tmp_path / "old.jsonl").write_text("".join(json.dumps(r) + "\n" for r in old))
    with pytest.raises(ConfigError, match="without ctrl states"):
        read_logs([tmp_path / "old.jsonl"])
