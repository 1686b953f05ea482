"""Plans that end the run (``EpochPlan.final``, menu names ending in ``-end``): the learning-rate
schedule they compress, the env's early termination, schedules shorter than the episode, the
protocol's shorter candidates and the tree search's complete schedules."""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import pytest
import torch

from agents import ScheduleController, evaluate_controller, menu_plans
from agents.controllers import build_controllers
from agents.protocol import candidate_schedules
from agents.search import tree_search
from agents.spaces import expected_spaces
from envs import DistillationEnv, plan_fields, tiny_config
from kd_backend.errors import ConfigError
from kd_backend.pipeline import build_distiller
from kd_backend.plan import EpochPlan


@pytest.fixture(scope="module")
def config(tiny_cache):
    return tiny_config(cache_dir=str(tiny_cache), horizon=3, menu=("kd-t0", "kd-t1", "kd-t1-end"),
                       branch_cache=32, report_dev=False, cost_weight=3.0)


@pytest.fixture(scope="module")
def distiller(config):
    return build_distiller(config.backend)


def test_end_suffix_names_a_final_plan_and_is_checked():
    assert plan_fields("kd-t1-end", 2) == {"teacher_weights": (0.0, 1.0), "final": True}
    assert plan_fields("frac-0.3-stale-t1-lr2-end", 2) == {
        "fraction": 0.3, "selection": "entropy", "scope": "epoch", "scoring": "stale",
        "teacher_weights": (0.0, 1.0), "lr_scale": 2.0, "final": True,
    }
    with pytest.raises(ConfigError, match="ends the run twice"):
        plan_fields("kd-t1-end-end", 2)
    with pytest.raises(ConfigError, match="-end to make it the run's last epoch"):
        plan_fields("kd-t9-end", 2)
    with pytest.raises(ConfigError, match="final=1 must be True or False"):
        EpochPlan(final=1)  # type: ignore[arg-type]


def test_a_final_first_epoch_is_a_one_epoch_run_bit_for_bit(config):
    """A final plan compresses the rest of the schedule (warm-up, then decay to 0) into its epoch: in
    a 3-epoch run, ending at the first epoch trains exactly what a 1-epoch run trains."""
    short = build_distiller(dataclasses.replace(config.backend, epochs=1))
    long = build_distiller(dataclasses.replace(config.backend, epochs=3))
    plan = EpochPlan(teacher_weights=(0.0, 1.0))
    short.reset(7)
    long.reset(7)
    a = short.train_epoch(plan)
    b = long.train_epoch(plan.replace(final=True))
    assert a.lr == b.lr and b.lr < 0.1 * config.backend.lr  # decayed to (nearly) 0 by its last step
    assert long.progress == pytest.approx(1.0)
    for (name, p), q in zip(short.student.state_dict().items(), long.student.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    # without final, the same first epoch keeps most of its learning rate for the next two
    ref = build_distiller(dataclasses.replace(config.backend, epochs=3))
    ref.reset(7)
    assert ref.train_epoch(plan).lr > 0.5 * config.backend.lr


def test_a_final_plan_ends_the_episode_and_its_compute(config, distiller):
    env = DistillationEnv(config.replace(branch_cache=0), distiller=distiller)
    env.reset(seed=3)
    plans = menu_plans(env)
    _, _, terminated, _, info = env.step(plans["kd-t1"])
    assert not terminated
    _, _, terminated, _, info = env.step(plans["kd-t1-end"])
    assert terminated and info["final_ctrl_score"] is not None
    assert info["compute_total"] == pytest.approx(2 * info["step_compute"], rel=0.2)  # two epochs paid, not three
    with pytest.raises(gym.error.ResetNeeded):
        env.step(plans["kd-t1"])
    env.reset(seed=3)  # a fresh episode runs to the horizon again
    for _ in range(3):
        _, _, terminated, _, _ = env.step(plans["kd-t1"])
    assert terminated


def test_schedules_may_be_shorter_only_when_they_end_in_a_final_plan(config, distiller):
    end, go = EpochPlan(final=True), EpochPlan()
    assert ScheduleController([go, end]).fits(3) and ScheduleController([go, go, go]).fits(3)
    assert not ScheduleController([go, go]).fits(3) and not ScheduleController([go, go, go, end]).fits(3)
    with pytest.raises(ConfigError, match="final plan .* 1 plan\\(s\\) follow"):
        ScheduleController([go, end, go])
    env = DistillationEnv(config.replace(branch_cache=0, report_dev=True), distiller=distiller)
    spaces = expected_spaces(env.config)
    controllers = build_controllers(["kd-t1>kd-t1-end"], config, spaces)
    (record,) = evaluate_controller(env, controllers["kd-t1>kd-t1-end"], [4])
    assert len(record.steps) == 2 and record.final_dev_score is not None
    with pytest.raises(ConfigError, match="end a shorter schedule with a final plan"):
        build_controllers(["kd-t1>kd-t1"], config, spaces)
    with pytest.raises(ConfigError, match="or end a shorter one with a final plan"):
        evaluate_controller(env, ScheduleController([go, go]), [4])


def test_protocol_candidates_include_every_shorter_run_of_a_plan_with_a_final_twin():
    plans = {"kd": EpochPlan(), "ce": EpochPlan(kd_weight=0.0), "small": EpochPlan(fraction=0.3),
             "kd-end": EpochPlan(final=True)}
    cands = {c.name: c for c in candidate_schedules(plans, steps=4)}
    static = [n for n, c in cands.items() if c.kind == "static"]
    assert static == ["kd", "kd-end", "kd>kd-end", "kd>kd>kd-end", "ce", "small"]
    assert cands["kd>kd>kd-end"].plans == (plans["kd"], plans["kd"], plans["kd-end"])
    grid = [n for n, c in cands.items() if c.kind == "grid"]
    # a final B ends the run after A; B = kd (with its twin) adds "A, kd ... , kd-end"; no final A
    assert grid == ["kd>ce", "kd>small", "ce>kd", "ce>kd-end", "ce>kd>kd-end", "ce>small"]
    assert all(c.controller().fits(4) for c in cands.values())
    with pytest.raises(ConfigError, match="end the run after the first epoch"):
        candidate_schedules(plans, steps=4, first_plans=["kd-end"])


def test_search_returns_the_best_complete_schedule_short_or_full(config, distiller):
    env = DistillationEnv(config, distiller=distiller)
    menu = menu_plans(env)
    seeds = (5,)
    result = tree_search(env, menu, seeds, beam=4)  # 4 = every prefix that does not end: all is scored
    complete = [n for n in result.nodes if n.depth == 3 or n.names[-1] == "kd-t1-end"]
    # a final plan ends a schedule: nothing extends it
    assert not any(n.names[:-1] and n.names[-2] == "kd-t1-end" for n in result.nodes)
    assert {n.depth for n in complete} == {1, 2, 3}
    best = max(complete, key=lambda n: n.objective)
    assert result.names == best.names
    assert result.cost["episodes"] == len(complete) * len(seeds)
    # its score is what a fresh run of that schedule gives
    fresh = DistillationEnv(config.replace(branch_cache=0), distiller=distiller)
    (record,) = evaluate_controller(fresh, result.controller(), seeds)
    assert 100 * record.final_ctrl_score - 3.0 * record.total_compute == pytest.approx(best.objective, abs=1e-9)
    # cost_weight high enough that one epoch beats three: the search ends the run at once
    cheap = tree_search(env, menu, seeds, beam=1, cost_weight=1e4)
    assert cheap.names[-1] == "kd-t1-end" and len(cheap.names) == 1


def test_greedy_search_ranks_a_prefix_by_what_ending_it_at_once_gives(config, distiller):
    """An unfinished prefix still has a high learning rate; the beam ranks it by the better of its
    own objective and that of the same prefix ended by its final twin (kd-t1 by kd-t1-end)."""
    env = DistillationEnv(config, distiller=distiller)
    result = tree_search(env, menu_plans(env), (5,), beam=1)
    first = {n.names[0]: n for n in result.nodes if n.depth == 1}
    value = {"kd-t0": first["kd-t0"].objective,
             "kd-t1": max(first["kd-t1"].objective, first["kd-t1-end"].objective)}
    kept = [name for name, node in first.items() if node.kept and name != "kd-t1-end"]
    assert kept == [max(value, key=value.get)]
    assert all(n.names[0] == kept[0] for n in result.nodes if n.depth == 2)
