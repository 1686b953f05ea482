"""The tree-search controller: exhaustive when the beam is wide, scores that a from-scratch replay
reproduces, dev never read, its errors, and ``search_schedule.py``."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from agents import ScheduleController, evaluate_controller, menu_plans
from agents.cli import save_config
from agents.configs import LearnConfig
from agents.search import (
    format_search,
    required_branch_cache,
    tree_search,
    write_search,
)
from envs import DistillationEnv, tiny_config
from kd_backend.errors import ConfigError
from kd_backend.pipeline import build_distiller

REPO = Path(__file__).resolve().parents[1]
MENU = ("kd-t0", "kd-t1", "frac-0.3-random")


@pytest.fixture(scope="module")
def config(tiny_cache):
    return tiny_config(cache_dir=str(tiny_cache), horizon=2, menu=MENU, branch_cache=32, report_dev=False,
                       cost_weight=3.0)


@pytest.fixture(scope="module")
def distiller(config):
    return build_distiller(config.backend)


def test_a_wide_beam_is_exhaustive_and_its_scores_are_what_a_fresh_run_gives(config, distiller):
    env = DistillationEnv(config, distiller=distiller)
    menu = menu_plans(env)
    seeds = (5, 6)
    calls = []
    inner = distiller.evaluate

    def spy(split="ctrl"):
        calls.append(split)
        return inner(split)

    distiller.evaluate = spy
    try:
        result = tree_search(env, menu, seeds, beam=len(menu))  # beam >= menu: every sequence is scored
    finally:
        del distiller.evaluate
    assert "dev" not in calls and calls  # ctrl only

    # Brute force, every schedule trained from scratch without branching: the same objective, bit for bit.
    fresh = DistillationEnv(config.replace(branch_cache=0), distiller=distiller)
    brute = {}
    for names in itertools.product(menu, repeat=2):
        records = evaluate_controller(fresh, ScheduleController([menu[n] for n in names]), seeds)
        brute[names] = [100 * r.final_ctrl_score - 3.0 * r.total_compute for r in records]
    leaves = {n.names: n for n in result.nodes if n.depth == 2}
    assert set(leaves) == set(brute)
    for names, per_seed in brute.items():
        assert leaves[names].per_seed == pytest.approx(tuple(per_seed), abs=1e-9)
    best = max(brute, key=lambda n: (sum(brute[n]), -list(itertools.product(menu, repeat=2)).index(n)))
    assert sum(brute[result.names]) == pytest.approx(sum(brute[best]))
    assert result.plans == tuple(menu[n] for n in result.names)
    # the branches paid: every depth-2 trial replayed its depth-1 prefix
    assert result.cost["decisions_replayed"] >= len(menu) ** 2 * len(seeds)
    assert result.cost["episodes"] == len(menu) ** 2 * len(seeds)
    # the training compute it spent: each depth-1 prefix once, then only the second steps
    first = {n.names: n.compute for n in result.nodes if n.depth == 1}
    spent = len(seeds) * (sum(first.values()) + sum(leaves[n].compute - first[n[:1]] for n in leaves))
    assert result.cost["epochs_trained"] == pytest.approx(spent)


def test_greedy_search_keeps_one_prefix_and_writes_a_schedule_file(config, distiller, tmp_path):
    env = DistillationEnv(config, distiller=distiller)
    menu = menu_plans(env)
    result = tree_search(env, menu, [5], beam=1)
    first = [n for n in result.nodes if n.depth == 1]
    kept = [n for n in first if n.kept]
    assert len(kept) == 1 and kept[0].objective == max(n.objective for n in first)
    assert all(n.names[0] == kept[0].names[0] for n in result.nodes if n.depth == 2)  # only the kept one grows
    assert result.cost["decisions"] == len(menu) * 1 + len(menu) * 2  # depth 1: 1 step, depth 2: 2 steps
    write_search(tmp_path, result, task="synthetic")
    loaded = ScheduleController.load(tmp_path / "schedule.json")
    assert loaded.plans == result.plans
    meta = json.loads((tmp_path / "search.json").read_text())
    assert meta["schedule"] == list(result.names) and meta["cost_weight"] == 3.0 and len(meta["nodes"]) == 2 * len(menu)
    assert (tmp_path / "search.csv").read_text().count("\n") == 1 + 2 * len(menu)
    assert result.label in format_search(result)


def test_search_refuses_what_would_break_it(config, distiller):
    menu = menu_plans(DistillationEnv(config, distiller=distiller))
    small = DistillationEnv(config.replace(branch_cache=2), distiller=distiller)
    need = required_branch_cache(1, len(menu), 2)
    with pytest.raises(ConfigError, match=f"--branch-cache {need}"):
        tree_search(small, menu, [1, 2])
    with pytest.raises(ConfigError, match="must not report dev"):
        tree_search(DistillationEnv(config.replace(report_dev=True), distiller=distiller), menu, [1])
    env = DistillationEnv(config, distiller=distiller)
    with pytest.raises(ConfigError, match="beam"):
        tree_search(env, menu, [1], beam=0)
    with pytest.raises(ConfigError, match="distinct"):
        tree_search(env, menu, [1, 1])


def test_a_budget_keeps_only_prefixes_that_can_end_within_it(config, distiller, tmp_path):
    env = DistillationEnv(config, distiller=distiller)
    menu = menu_plans(env)
    free = tree_search(env, menu, [5], beam=len(menu))
    step = {n.names[0]: n.compute for n in free.nodes if n.depth == 1}
    cheap, full = step["frac-0.3-random"], step["kd-t1"]
    budget = full + 1.5 * cheap  # one full decision and one cheap one fit; two full ones do not
    result = tree_search(env, menu, [5], beam=len(menu), max_compute=budget)
    finals = [n for n in result.nodes if n.depth == 2]
    assert all(n.feasible == (n.compute <= budget) for n in finals)
    assert any(not n.feasible for n in finals) and any(n.feasible for n in finals)
    best = max((n for n in finals if n.feasible), key=lambda n: n.objective)
    assert result.names == best.names and result.max_compute == budget
    # the unconstrained search scored the same nodes the same way (branching replays them)
    same = {n.names: n.objective for n in free.nodes}
    assert all(same[n.names] == n.objective for n in result.nodes)
    write_search(tmp_path, result)
    assert json.loads((tmp_path / "search.json").read_text())["max_compute"] == budget
    assert "x " in format_search(result) and "over the budget" in format_search(result)
    with pytest.raises(ConfigError, match="raise --max-compute"):
        tree_search(env, menu, [5], max_compute=0.5 * cheap)
    with pytest.raises(ConfigError, match="positive"):
        tree_search(env, menu, [5], max_compute=-1.0)


def test_a_budget_prices_later_steps_by_their_data_share_not_by_a_first_step(config, distiller):
    # A stale-scored selection from scratch first scores the whole pool (~r + 1/3); after a full
    # epoch it costs ~r. Pricing the later decision at the first step's cost would reject a schedule
    # that fits: the search must keep kd-t1 at depth 1 and score kd-t1>frac-0.3-stale.
    env = DistillationEnv(config, distiller=distiller)
    full = menu_plans(env)["kd-t1"]
    menu = {"kd-t1": full, "frac-0.3-stale": replace(full, fraction=0.3, selection="entropy", scope="epoch", scoring="stale")}
    free = tree_search(env, menu, [5], beam=2)
    cost = {n.names: n.compute for n in free.nodes}
    first, later = cost[("frac-0.3-stale",)], cost[("kd-t1", "frac-0.3-stale")] - cost[("kd-t1",)]
    assert later < first
    budget = cost[("kd-t1",)] + (later + first) / 2  # fits kd-t1 then stale, not at the first step's price
    assert cost[("kd-t1",)] + first > budget  # what pricing by the first steps would have assumed
    result = tree_search(env, menu, [5], beam=2, max_compute=budget)
    finals = {n.names: n for n in result.nodes if n.depth == 2}
    assert finals[("kd-t1", "frac-0.3-stale")].feasible
    assert all(n.feasible == (n.compute <= budget) for n in finals.values())
    assert result.names == max((n for n in finals.values() if n.feasible), key=lambda n: n.objective).names


def test_search_schedule_script_writes_a_schedule_compare_reads(config, tmp_path):

    cfg_path = tmp_path / "tiny.yaml"
    save_config(cfg_path, LearnConfig(env=config))  # a learn config, as the shipped ones
    out = tmp_path / "search"
    cmd = [sys.executable, str(REPO / "experiments" / "search_schedule.py"), "--config", str(cfg_path),
           "--seeds", "1", "--branch-cache", "0", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "schedule:" in proc.stdout and (out / "schedule.json").is_file() and (out / "config.yaml").is_file()
    compare = [sys.executable, str(REPO / "experiments" / "compare.py"), "--config", str(cfg_path),
               "--controllers", str(out / "schedule.json"), "kd-t0", "--seeds", "3", "--out", str(tmp_path / "cmp")]
    proc = subprocess.run(compare, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "search/schedule" in (tmp_path / "cmp" / "comparison.csv").read_text()
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert again.returncode == 1 and "--overwrite" in again.stderr
