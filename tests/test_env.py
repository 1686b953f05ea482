"""The Gymnasium environment on the tiny variant: codecs, observation, reward, determinism, checkers."""

from __future__ import annotations

import itertools
import json
import math
import warnings

import gymnasium
import numpy as np
import pytest
import torch

import envs
from envs import (
    BoxCodec,
    DistillationEnv,
    EnvConfig,
    MenuCodec,
    MultiDiscreteCodec,
    named_plans,
    plan_fields,
    tiny_config,
)
from envs.observation import LOSS_CAP, observation_names, observation_space
from envs.reward import step_reward
from kd_backend.errors import ConfigError
from kd_backend.pipeline import build_distiller
from kd_backend.plan import EpochPlan


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """One teacher/cache folder for the whole test session (teachers are trained once)."""
    path = tmp_path_factory.getbasetemp() / "dynakd-tiny-cache"
    path.mkdir(exist_ok=True)
    return str(path)


@pytest.fixture(scope="module")
def config(cache_dir):
    return tiny_config(cache_dir=cache_dir)


@pytest.fixture(scope="module")
def distiller(config):
    return build_distiller(config.backend)


@pytest.fixture()
def env(config, distiller):
    return DistillationEnv(config, distiller=distiller)


def run_episode(env, actions, seed):
    obs, _ = env.reset(seed=seed)
    observations, rewards, infos = [obs], [], []
    for action in actions:
        obs, reward, terminated, truncated, info = env.step(action)
        observations.append(obs)
        rewards.append(reward)
        infos.append(info)
        assert not truncated
    assert terminated
    return observations, rewards, infos


# ---------------------------------------------------------------------------------------- codecs
CFG = EnvConfig()


def test_default_menu_covers_the_paper_and_round_trips():
    codec = MenuCodec(CFG, num_teachers=2)
    assert 10 <= codec.space.n <= 16
    paper = ("kd-t0", "kd-t1", "kd-mean", "adopt-hard", "adopt-soft", "frac-0.3", "frac-0.1", "objective-uncertainty")
    assert set(paper) <= set(codec.names)
    plans = [codec.decode(i) for i in range(codec.space.n)]
    assert len(set(plans)) == len(plans), "two menu entries decode to the same plan"
    for i, plan in enumerate(plans):
        assert codec.encode(plan) == i
        assert codec.decode(np.array(i)) == plan  # SB3 hands scalars as 0-d arrays
    assert plans[codec.names.index("kd-t1")].teacher_weights == (0.0, 1.0)
    frac = plans[codec.names.index("frac-0.1")]
    assert (frac.fraction, frac.selection, frac.scope) == (0.1, "entropy", "epoch")
    assert plans[codec.names.index("objective-uncertainty")].objective == "uncertainty"
    assert plans[codec.names.index("adopt-soft")].teacher_mode == "soft"


def test_cheap_selection_plans_can_be_put_on_a_menu(config, distiller):
    assert not {"frac-0.3-random", "frac-0.3-stale"} & set(MenuCodec(CFG, 2).names)  # default menu unchanged
    menu = ("kd-mean", "frac-0.3", "frac-0.3-random", "frac-0.3-stale")
    env = DistillationEnv(config.replace(menu=menu), distiller=distiller)
    stale, rand = env.codec.decode(3), env.codec.decode(2)
    assert (stale.fraction, stale.scope, stale.scoring, stale.selection) == (0.3, "epoch", "stale", "entropy")
    assert (rand.selection, rand.scoring) == ("random", "fresh")
    _, _, infos = run_episode(env, [0, 1, 3], seed=3)
    fresh_cost, stale_cost = infos[1]["step_compute"], infos[2]["step_compute"]
    assert infos[2]["stats"]["examples_scored"] == 0  # everything was seen in the two epochs before
    assert stale_cost < 0.75 * fresh_cost
    _, _, infos = run_episode(env, [0, 2, 2], seed=3)
    assert infos[1]["stats"]["examples_scored"] == 0 and infos[1]["step_compute"] < 0.75 * fresh_cost


def test_menu_is_configurable_and_names_unknown_plans():
    codec = MenuCodec(EnvConfig(menu=("kd-t0", "frac-0.1"), kd_loss="mse", temperature=2.0), num_teachers=2)
    assert codec.space.n == 2
    assert codec.decode(1).kd_loss == "mse" and codec.decode(1).temperature == 2.0
    with pytest.raises(ConfigError, match="kd-t7"):
        MenuCodec(EnvConfig(menu=("kd-t7",)), num_teachers=2)
    with pytest.raises(ConfigError, match="not on the menu"):
        codec.encode(EpochPlan(fraction=0.5))


def test_menu_names_any_fraction_and_refuses_the_same_plan_twice():
    codec = MenuCodec(EnvConfig(menu=("frac-0.45-stale", "frac-0.5-random", "frac-0.25", "frac-1")), num_teachers=2)
    stale, rand, fresh, full = (codec.decode(i) for i in range(4))
    assert (stale.fraction, stale.selection, stale.scope, stale.scoring) == (0.45, "entropy", "epoch", "stale")
    assert (rand.fraction, rand.selection, rand.scoring) == (0.5, "random", "fresh")
    assert (fresh.fraction, fresh.selection, fresh.scoring) == (0.25, "entropy", "fresh")
    assert full.fraction == 1.0 and not full.needs_uncertainty
    # the parsed name is the named plan where one exists
    assert plan_fields("frac-0.3-stale", 2) == named_plans(2)["frac-0.3-stale"]
    assert plan_fields("frac-.3-random", 2) == named_plans(2)["frac-0.3-random"]
    assert plan_fields("frac-0.4", 2, regression=True)["selection"] == "random"
    assert plan_fields("frac-0.45-stale-t0", 2)["teacher_weights"] == (1.0, 0.0)  # -tK: teacher K alone
    assert "teacher_weights" not in plan_fields("frac-0.45-stale", 2)  # else the teachers' mean
    # -kd / -stale-kd rank by the KD loss to the plan's teachers (also on regression tasks)
    assert plan_fields("frac-0.3-stale-kd-t1", 2) == {
        "fraction": 0.3, "selection": "kd-loss", "scope": "epoch", "scoring": "stale", "teacher_weights": (0.0, 1.0),
    }
    assert plan_fields("frac-0.2-kd", 2, regression=True) == {"fraction": 0.2, "selection": "kd-loss", "scope": "epoch"}
    EpochPlan(**plan_fields("frac-0.3-stale-kd-t1-lr2", 2))  # a valid plan
    # -lrX scales the learning rate of any named or parsed plan
    assert plan_fields("frac-0.3-stale-t1-lr2.5", 2) == {**plan_fields("frac-0.3-stale-t1", 2), "lr_scale": 2.5}
    assert plan_fields("kd-t0-lr.5", 2) == {**named_plans(2)["kd-t0"], "lr_scale": 0.5}
    with pytest.raises(ConfigError, match="twice"):
        plan_fields("kd-t0-lr2-lr2", 2)
    with pytest.raises(ConfigError, match="must be > 0"):
        plan_fields("kd-t0-lr0", 2)
    for bad in ("frac-0", "frac-1.5", "frac-0.3-margin", "frac-x"):
        with pytest.raises(ConfigError, match="frac-R-stale"):
            plan_fields(bad, 2)
    with pytest.raises(ConfigError, match="regression"):
        plan_fields("frac-0.4-stale", 2, regression=True)
    with pytest.raises(ConfigError, match="'frac-0.3-stale' and 'frac-0.30-stale'"):
        MenuCodec(EnvConfig(menu=("frac-0.3-stale", "frac-0.30-stale")), num_teachers=2)


def test_regression_menu_has_no_uncertainty_plans():
    menu = MenuCodec(CFG, 2, regression=True)
    plans = [menu.decode(i) for i in range(menu.space.n)]
    assert len(plans) >= 5 and not any(p.needs_uncertainty for p in plans)
    assert set(menu.names) <= set(named_plans(2, regression=True))
    md = MultiDiscreteCodec(CFG, 2, regression=True)
    for action in itertools.islice(itertools.product(*(range(n) for n in md.space.nvec)), 500):
        assert not md.decode(np.array(action)).needs_uncertainty


def test_multidiscrete_round_trips_every_action():
    codec = MultiDiscreteCodec(CFG, num_teachers=2)
    assert list(codec.space.nvec) == [6, 4, 4, 3, 3, 3]
    for action in itertools.product(*(range(n) for n in codec.space.nvec)):
        action = np.array(action, dtype=np.int64)
        plan = codec.decode(action)
        assert plan.scope == CFG.scope
        np.testing.assert_array_equal(codec.encode(plan), action)
        norm = codec.normalise(action)
        assert norm.shape == (codec.dim,) and np.all(np.abs(norm) <= 1)
    with pytest.raises(ConfigError, match="multidiscrete"):
        codec.encode(EpochPlan(teacher_weights=(0.3, 0.7)))


def test_box_maps_extremes_and_round_trips():
    codec = BoxCodec(EnvConfig(r_min=0.1, weight_bins=(0.0, 2.0)), num_teachers=2)
    assert codec.space.shape == (5,)
    low = codec.decode(np.array([1, -1, -1, -1, -1], dtype=np.float32))
    assert low.fraction == pytest.approx(0.1) and low.kd_weight == 0 and low.hidden_weight == 0
    assert low.teacher_weights[0] > 0.99
    high = codec.decode(np.array([0, 0, 1, 1, 1], dtype=np.float32))
    assert high.fraction == 1.0 and high.kd_weight == 2.0 and high.teacher_weights == (0.5, 0.5)
    rng = np.random.default_rng(0)
    for _ in range(200):
        plan = codec.decode(rng.uniform(-1, 1, 5).astype(np.float32))
        assert sum(plan.teacher_weights) == pytest.approx(1.0)
        assert 0.1 - 1e-6 <= plan.fraction <= 1.0
        again = codec.decode(codec.encode(plan))
        np.testing.assert_allclose(again.teacher_weights, plan.teacher_weights, atol=1e-5)
        for f in ("fraction", "kd_weight", "hidden_weight"):
            assert getattr(again, f) == pytest.approx(getattr(plan, f), abs=1e-5)
    with pytest.raises(ConfigError, match="box"):
        codec.encode(EpochPlan(teacher_mode="hard"))


@pytest.mark.parametrize(
    "codec, bad",
    [
        (MenuCodec(CFG, 2), -1),
        (MenuCodec(CFG, 2), 99),
        (MenuCodec(CFG, 2), 1.5),
        (MenuCodec(CFG, 2), float("nan")),
        (MenuCodec(CFG, 2), "kd-t0"),
        (MenuCodec(CFG, 2), [0, 1]),
        (MultiDiscreteCodec(CFG, 2), [0, 0, 0]),
        (MultiDiscreteCodec(CFG, 2), [0, 9, 0, 0, 0, 0]),
        (MultiDiscreteCodec(CFG, 2), [0, -1, 0, 0, 0, 0]),
        (BoxCodec(CFG, 2), [0.0, 0.0, 1.5, 0.0, 0.0]),
        (BoxCodec(CFG, 2), [0.0, float("nan"), 0.0, 0.0, 0.0]),
        (BoxCodec(CFG, 2), [0.0, 0.0]),
    ],
)
def test_bad_actions_raise_config_error_naming_the_value(codec, bad):
    with pytest.raises(ConfigError) as err:
        codec.decode(bad)
    assert repr(bad) in str(err.value) or str(bad) in str(err.value)


# ---------------------------------------------------------------------------------- observation
def test_observation_names_match_space():
    for k, a in ((1, 4), (2, 13), (3, 6)):
        names = observation_names(k, a)
        assert len(names) == len(set(names)) == observation_space(k, a).shape[0]
    names = observation_names(2, 3, ("x", "y", "z"))
    assert names[:3] == ("progress", "ctrl_score", "ctrl_loss") and names[-1] == "last_action:z"
    assert "t1_agreement" in names and "compute_used" in names


@pytest.mark.parametrize("kind", ["discrete", "multidiscrete", "box"])
def test_observations_within_declared_bounds(config, distiller, kind):
    env = DistillationEnv(config.replace(action_space=kind), distiller=distiller)
    assert len(env.observation_names) == env.observation_space.shape[0]
    env.action_space.seed(0)
    actions = [env.action_space.sample() for _ in range(env.steps_per_episode)]
    observations, rewards, infos = run_episode(env, actions, 3)
    for obs in observations:
        assert obs.dtype == np.float32 and obs in env.observation_space
    names = env.observation_names
    assert observations[0][names.index("progress")] == 0 and observations[-1][names.index("progress")] == 1
    assert observations[-1][names.index("compute_used")] > 0
    assert 0 < observations[-1][names.index("ctrl_loss")] <= LOSS_CAP
    assert observations[-1][names.index("ctrl_score")] == pytest.approx(infos[-1]["ctrl"]["score"])


# ---------------------------------------------------------------------------------------- reward
def test_reward_sign_and_cost():
    kw = dict(step_compute=1.0, episode_compute=2.0, last=False)
    assert step_reward("dense", score=0.8, prev_score=0.7, cost_weight=0.0, **kw) == pytest.approx(10.0)
    assert step_reward("dense", score=0.6, prev_score=0.7, cost_weight=0.0, **kw) < 0
    assert step_reward("dense", score=0.8, prev_score=0.7, cost_weight=3.0, **kw) == pytest.approx(7.0)
    assert step_reward("final", score=0.8, prev_score=0.7, cost_weight=1.0, **kw) == 0.0
    last = dict(kw, last=True)
    assert step_reward("final", score=0.8, prev_score=0.7, cost_weight=1.0, **last) == pytest.approx(78.0)


def test_dense_rewards_sum_to_score_gain_minus_cost(config, distiller):
    env = DistillationEnv(config.replace(cost_weight=2.0), distiller=distiller)
    obs, info = env.reset(seed=1)
    start = info["ctrl"]["score"]
    _, rewards, infos = run_episode(env, [env.codec.names.index("kd-mean")] * env.steps_per_episode, 1)
    gain = 100 * (infos[-1]["ctrl"]["score"] - start)
    assert sum(rewards) == pytest.approx(gain - 2.0 * infos[-1]["compute_total"], abs=1e-6)
    assert infos[-1]["compute_total"] == pytest.approx(env.steps_per_episode, rel=0.05)  # plain epochs


def test_final_reward_only_at_the_end(config, distiller):
    env = DistillationEnv(config.replace(reward="final"), distiller=distiller)
    _, rewards, infos = run_episode(env, [0] * env.steps_per_episode, 2)
    assert all(r == 0 for r in rewards[:-1])
    assert rewards[-1] == pytest.approx(100 * infos[-1]["final_ctrl_score"])


def test_small_fraction_costs_less_compute(env):
    full = run_episode(env, [env.codec.names.index("kd-mean")] * env.steps_per_episode, 0)[2][-1]["compute_total"]
    small = run_episode(env, [env.codec.names.index("frac-0.1")] * env.steps_per_episode, 0)[2][-1]["compute_total"]
    assert small < 0.75 * full  # scoring the pool costs a forward pass (~1/3 of a training epoch)


# ------------------------------------------------------------------------------------ the episode
def test_same_seed_same_episode(env):
    actions = [0, 3, 5][: env.steps_per_episode] + [1] * max(0, env.steps_per_episode - 3)
    obs_a, rew_a, inf_a = run_episode(env, actions, seed=11)
    obs_b, rew_b, inf_b = run_episode(env, actions, seed=11)
    for a, b in zip(obs_a, obs_b, strict=True):
        np.testing.assert_array_equal(a, b)
    assert rew_a == rew_b
    assert [i["stats"] for i in inf_a] == [i["stats"] for i in inf_b]
    obs_c, _, _ = run_episode(env, actions, seed=12)
    assert not np.array_equal(obs_a[0], obs_c[0]), "different seeds should give different students"


def _weights(env):
    return {k: v.clone() for k, v in env.distiller.student.state_dict().items()}


def test_branching_episode_reproduces_the_episode_from_scratch(config, distiller, monkeypatch):
    """An episode that continues from a stored prefix is, bit for bit on the CPU, the episode trained
    from scratch with the same seed and plans: observations, rewards, every EpochStats and EvalStats
    field (ctrl after each step, dev at the end) but wall times, and the final student weights."""
    names = MenuCodec(config, 2).names
    a = [names.index(n) for n in ("kd-t1", "frac-0.3", "adopt-soft")]
    b = [names.index(n) for n in ("kd-t1", "frac-0.3", "pkd")]
    c = [names.index(n) for n in ("kd-t1", "kd-t0", "pkd")]
    scratch = DistillationEnv(config, distiller=distiller)
    ref_b = run_episode(scratch, b, seed=21)
    ref_b_weights = _weights(scratch)
    ref_c = run_episode(scratch, c, seed=21)
    ref_c_weights = _weights(scratch)
    branching = DistillationEnv(config.replace(branch_cache=8), distiller=distiller)
    run_episode(branching, a, seed=21)  # stores (kd-t1) and (kd-t1, frac-0.3) of seed 21
    run_episode(branching, a, seed=22)  # another seed: no sharing
    assert branching.branches.hits == 0
    trained = []
    original = distiller.train_epoch
    monkeypatch.setattr(distiller, "train_epoch", lambda *args, **kw: trained.append(1) or original(*args, **kw))
    for actions, ref, ref_weights, skipped in ((b, ref_b, ref_b_weights, 2), (c, ref_c, ref_c_weights, 1)):
        trained.clear()
        hits, spent = branching.branches.hits, branching.compute_trained
        got = run_episode(branching, actions, seed=21)
        assert branching.branches.hits - hits == skipped and len(trained) == len(actions) - skipped
        # only the decisions trained count as compute spent (a replayed 30% epoch costs nothing)
        assert branching.compute_trained - spent == pytest.approx(sum(i["step_compute"] for i in got[2][skipped:]))
        for x, y in zip(got[0], ref[0], strict=True):
            np.testing.assert_array_equal(x, y)
        assert got[1] == ref[1]
        assert got[2] == ref[2]  # infos: plans, EpochStats, ctrl EvalStats, dev EvalStats (no wall times)
        assert "dev" in got[2][-1]
        weights = _weights(branching)
        assert weights.keys() == ref_weights.keys()
        assert all(torch.equal(weights[k], ref_weights[k]) for k in weights)
    assert branching.branches.stats()["stored"] <= 8


def test_dev_split_is_only_read_after_the_last_step(config, distiller, monkeypatch):
    calls: list[tuple[str, int]] = []
    original = distiller.evaluate
    env = DistillationEnv(config, distiller=distiller)

    def spy(split="ctrl"):
        calls.append((split, env._t))
        return original(split)

    monkeypatch.setattr(distiller, "evaluate", spy)
    _, _, infos = run_episode(env, [0] * env.steps_per_episode, 4)
    dev_calls = [t for split, t in calls if split == "dev"]
    assert dev_calls == [env.steps_per_episode]
    assert {s for s, _ in calls} == {"ctrl", "dev"}
    assert "dev" not in str(env.observation_names)
    assert infos[-1]["dev_score"] == infos[-1]["dev"]["score"] and "dev_score" not in infos[0]
    calls.clear()
    quiet = DistillationEnv(config.replace(report_dev=False), distiller=distiller)
    run_episode(quiet, [0] * quiet.steps_per_episode, 4)
    assert all(split == "ctrl" for split, _ in calls)


def test_info_reports_the_applied_plan_and_has_no_wall_clock(env):
    plan = EpochPlan(teacher_mode="soft", fraction=0.5, selection="margin")
    env.reset(seed=0)
    _, _, _, _, info = env.step(plan)
    assert info["plan"] == plan.to_dict()
    assert info["stats"]["epoch"] == 0 and info["step_compute"] > 0
    assert list(info["teacher_weights"]) == [f"t{k}_{n}" for k, n in enumerate(env.teacher_names)]
    assert sum(info["teacher_weights"].values()) == pytest.approx(1.0)
    assert "wall_time" not in info["stats"] and "wall_time" not in info["ctrl"]
    assert not np.any(env._last_action), "a plan off the menu shows as a zero last action"


def test_step_before_reset_and_after_the_end_raise(config, distiller):
    env = DistillationEnv(config, distiller=distiller)
    with pytest.raises(gymnasium.error.ResetNeeded):
        env.step(0)
    run_episode(env, [0] * env.steps_per_episode, 0)
    with pytest.raises(gymnasium.error.ResetNeeded):
        env.step(0)
    env.reset(seed=0)
    with pytest.raises(ConfigError, match="99"):
        env.step(99)


def test_several_decisions_per_epoch(config, distiller):
    env = DistillationEnv(config.replace(decisions_per_epoch=2, horizon=2), distiller=distiller)
    assert env.steps_per_episode == 4
    _, _, infos = run_episode(env, [0, 1, 2, 3], 0)
    assert [(i["epoch"], i["part"]) for i in infos] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert distiller.epoch == 2
    assert sum(i["step_compute"] for i in infos[:2]) == pytest.approx(infos[1]["compute_total"])


def test_gymnasium_checker_passes(config, distiller):
    from gymnasium.utils.env_checker import check_env

    env = gymnasium.make("DynamicKD-tiny-v0", config=config, distiller=distiller, render_mode="ansi")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a checker warning is a failure too
        check_env(env.unwrapped)
    env.reset(seed=0)
    env.step(0)
    assert env.render().startswith("step 1/")


def test_sb3_checker_passes(config, distiller):
    from stable_baselines3.common.env_checker import check_env

    env = DistillationEnv(config.replace(action_space="box"), distiller=distiller)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env, warn=True)


def test_registered_ids_make_the_env(config, distiller):
    assert "DynamicKD-v0" in gymnasium.registry and "DynamicKD-tiny-v0" in gymnasium.registry
    assert gymnasium.registry["DynamicKD-v0"].entry_point == envs.ENTRY_POINT
    env = gymnasium.make("DynamicKD-v0", config=config)  # builds its own distiller from the cached teachers
    obs, info = env.reset(seed=0)
    assert obs in env.observation_space and info["step"] == 0
    assert env.unwrapped.teacher_names == distiller.teacher_names
    env.close()


def test_config_validation_names_the_bad_value():
    with pytest.raises(ConfigError, match="horizon"):
        EnvConfig(horizon=0)
    with pytest.raises(ConfigError, match="'boxy'"):
        EnvConfig(action_space="boxy")
    with pytest.raises(ConfigError, match="fraction_bins"):
        EnvConfig(fraction_bins=(0.0, 1.0))
    with pytest.raises(ConfigError, match="cost_weight"):
        EnvConfig(cost_weight=math.nan)


def test_step_info_is_typed_and_round_trips(tiny_cache):
    from envs.records import StepInfo, is_step_info

    env = DistillationEnv(tiny_config(cache_dir=str(tiny_cache), horizon=2))
    _, reset_info = env.reset(seed=3)
    assert not is_step_info(reset_info)
    with pytest.raises(ConfigError, match="not a DynaKD step info"):
        StepInfo.from_info(reset_info)
    _, reward, _, _, first = env.step(0)
    step = StepInfo.from_info(first)
    assert step.to_info() == first and step.reward == reward and not step.done and step.dev_score is None
    assert step.initial_ctrl == reset_info["ctrl"]  # the first step carries the state it started from
    assert step.ctrl_score == first["ctrl"]["score"] and list(step.teacher_weights) == [
        f"t{k}_{n}" for k, n in enumerate(env.teacher_names)]
    _, _, terminated, _, last = env.step(0)
    final = StepInfo.from_info(last)
    assert terminated and final.done and final.final_ctrl_score == final.ctrl_score and final.initial_ctrl is None
    assert final.dev_score == last["dev_score"] is not None and final.compute_total == pytest.approx(2 * step.step_compute, rel=0.5)
    json.dumps(last)  # plain values: it crosses processes and lands in episodes.jsonl
