"""The fair comparison protocol: candidates, selection on ctrl only (dev sealed), paired statistics,
the oracle's label, branch sharing in the grid, and the ``compare.py --protocol`` script."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agents import (
    EpisodeRecord,
    RandomController,
    ScheduleController,
    candidate_schedules,
    dev_sealed,
    format_protocol,
    menu_plans,
    merge_costs,
    run_protocol,
)
from agents.cli import parse_config, save_config
from agents.configs import CompareConfig
from agents.protocol import (
    ORACLE_ROLE,
    DevReadDuringSelection,
    budget_best,
    mean_se,
    paired_difference,
    pick_oracle,
    pick_reference,
    report_rows,
    selection_table,
    target_verdict,
)
from envs import DistillationEnv, tiny_config
from kd_backend.errors import ConfigError
from kd_backend.pipeline import build_distiller
from kd_backend.plan import EpochPlan

REPO = Path(__file__).resolve().parents[1]
MENU = ("kd-t0", "kd-t1", "frac-0.3")


@pytest.fixture(scope="module")
def config(tiny_cache):
    return tiny_config(cache_dir=str(tiny_cache), horizon=2, menu=MENU)


@pytest.fixture(scope="module")
def env(config):
    return DistillationEnv(config, distiller=build_distiller(config.backend))


def record(name: str, seed: int, ctrl: float, dev: float | None, compute: float = 3.0) -> EpisodeRecord:
    return EpisodeRecord(controller=name, seed=seed, final_ctrl_score=ctrl, final_dev_score=dev, total_compute=compute)


# ------------------------------------------------------------------------------------------- pure parts
def test_candidates_are_static_plans_and_a_first_then_rest_grid():
    plans = {"a": EpochPlan(), "b": EpochPlan(kd_weight=0.0), "small": EpochPlan(fraction=0.3),
             "paper": EpochPlan(fraction=0.1, scope="batch", selection="margin")}
    cands = candidate_schedules(plans, steps=3)
    static = [c.name for c in cands if c.kind == "static"]
    grid = [c.name for c in cands if c.kind == "grid"]
    assert static == ["a", "b", "small", "paper"]
    # first epoch: full-data plans only by default (batch-scope selection trains on every instance)
    assert grid == [f"{a}>{b}" for a in ("a", "b", "paper") for b in plans if b != a]
    ab = next(c for c in cands if c.name == "a>small")
    assert ab.plans == (plans["a"], plans["small"], plans["small"])
    two_parts = candidate_schedules(plans, steps=4, first_steps=2, first_plans=["small"], rest_plans=["a"])
    assert [c.plans for c in two_parts if c.kind == "grid"] == [(plans["small"],) * 2 + (plans["a"],) * 2]
    assert len(candidate_schedules(plans, steps=3, first_plans=[], rest_plans=[])) == 4
    with pytest.raises(ConfigError, match="not on the menu"):
        candidate_schedules(plans, steps=3, first_plans=["nope"])


def test_reference_follows_ctrl_not_dev_and_the_oracle_follows_dev():
    # "dev-best" has the best dev but a worse ctrl than "ctrl-best": the reference must be ctrl-best.
    selection = [
        record("ctrl-best", 1, 0.70, None), record("ctrl-best", 2, 0.72, None),
        record("dev-best", 1, 0.60, None), record("dev-best", 2, 0.62, None),
        record("static", 1, 0.65, None), record("static", 2, 0.66, None),
    ]
    kinds = {"ctrl-best": "grid", "dev-best": "grid", "static": "static"}
    cands = [type("C", (), {"name": n, "kind": k})() for n, k in kinds.items()]
    table = selection_table(cands, selection)
    assert "dev_score" not in table[0]
    assert [r["candidate"] for r in table] == ["ctrl-best", "static", "dev-best"]
    assert table[0]["ctrl_score"] == pytest.approx(0.71)
    assert pick_reference(table) == "ctrl-best" and pick_reference(table, "static") == "static"
    evaluation = [record("ctrl-best", s, 0.7, 0.60) for s in (5, 6)] + [record("dev-best", s, 0.6, 0.80) for s in (5, 6)]
    assert pick_oracle(evaluation, ["ctrl-best", "dev-best"]) == "dev-best"


def test_paired_differences_and_standard_errors_against_hand_values():
    ref = [record("ref", s, c, d, 3.0) for s, c, d in ((1, 0.50, 0.60), (2, 0.55, 0.70), (3, 0.52, 0.65))]
    ctl = [record("ctl", s, c, d, 1.5) for s, c, d in ((1, 0.51, 0.62), (2, 0.55, 0.69), (3, 0.50, 0.70))]
    static = [record("static", s, 0.5, 0.6, 2.0) for s in (1, 2, 3)]
    rows = report_rows(ref + ctl + static, {"ref": ["reference"], "ctl": ["controller"], "static": ["best static"]},
                       reference="ref", best_static="static")
    row = rows[1]
    # dev differences 0.02, -0.01, 0.05: mean 0.02, sample sd 0.03, SE 0.03 / sqrt(3)
    assert row["dev_diff_vs_reference"] == pytest.approx(0.02)
    assert row["dev_diff_vs_reference_se"] == pytest.approx(0.03 / math.sqrt(3))
    # ctrl differences 0.01, 0, -0.02: mean -1/300, sd sqrt(((1/75)^2 + (1/300)^2 + (1/60)^2) / 2)
    sd = math.sqrt(((0.01 + 1 / 300) ** 2 + (1 / 300) ** 2 + (-0.02 + 1 / 300) ** 2) / 2)
    assert row["ctrl_diff_vs_reference"] == pytest.approx(-1 / 300)
    assert row["ctrl_diff_vs_reference_se"] == pytest.approx(sd / math.sqrt(3))
    # dev 0.62, 0.69, 0.70: mean 0.67, sd sqrt((0.05^2 + 0.02^2 + 0.03^2) / 2)
    assert row["dev_score"] == pytest.approx(0.67)
    assert row["dev_score_se"] == pytest.approx(math.sqrt((0.05**2 + 0.02**2 + 0.03**2) / 2) / math.sqrt(3))
    assert row["compute"] == 1.5 and row["compute_ratio_vs_best_static"] == pytest.approx(0.75)
    assert rows[0]["dev_diff_vs_reference"] == 0.0 and not any(r["upper_bound"] for r in rows)
    # the target: +2.0 ± 1.7 is within one SE, but 0.75 of the best static plan's compute is above 0.6;
    # the static plan: dev differences 0, -0.1, -0.05 (mean -5.0 points, SE 2.9: 1.7 SE below), ratio 1
    assert rows[0]["target"] == "" and row["target"] == "no: compute 0.750 > 0.6"
    assert rows[2]["target"] == "no: dev -5.0 ± 2.9 (1.73 SE), compute 1.000 > 0.6"
    # against a full-horizon static plan of compute 4.0 the same controller saves enough: 1.5 / 4 = 0.375
    full = [record("full", s, 0.5, 0.6, 4.0) for s in (1, 2, 3)]
    rows = report_rows(ref + ctl + static + full, {"ref": ["reference"], "ctl": ["controller"]},
                       reference="ref", best_static="static", full_static="full")
    assert rows[1]["compute_ratio_vs_full_static"] == pytest.approx(0.375)
    assert rows[1]["target"] == "no: compute 0.750 > 0.6" and rows[1]["target_vs_full_static"] == "met: saving"
    assert mean_se([1.0])[1] != mean_se([1.0])[1]  # NaN: no SE from one value
    with pytest.raises(ConfigError, match="same seeds"):
        paired_difference({1: 0.5}, {2: 0.5})


def test_target_verdict_against_hand_made_rows():
    def row(diff, se, compute, ratio):
        return {"dev_diff_vs_reference": diff, "dev_diff_vs_reference_se": se, "compute": compute,
                "compute_ratio_vs_best_static": ratio}

    # the saving: within one SE (-0.004 + 0.005 >= 0) at 0.6 of the best static plan, below the reference
    assert target_verdict(row(-0.004, 0.005, 3.0, 0.6), reference_compute=4.0) == "met: saving"
    # just outside one SE
    assert target_verdict(row(-0.006, 0.005, 3.0, 0.6), 4.0) == "no: dev -0.6 ± 0.5 (1.20 SE)"
    # cheap enough against the best static plan, but dearer than the reference
    assert target_verdict(row(0.0, 0.005, 3.0, 0.5), 2.5) == "no: compute above the reference's"
    # better by more than 2 SE at the reference's compute (within the 2% tolerance), whatever the ratio
    assert target_verdict(row(0.011, 0.005, 4.05, 1.0), 4.0) == "met: better"
    assert target_verdict(row(0.009, 0.005, 4.0, 1.0), 4.0) == "no: compute 1.000 > 0.6"
    assert target_verdict(row(0.011, 0.005, 4.2, 1.0), 4.0) == "no: compute 1.000 > 0.6"
    # compute noise (dynamic padding): 0.601 of the best static plan still counts as 0.6, 0.61 does not
    assert target_verdict(row(0.0, 0.005, 3.15, 0.601), 4.0) == "met: saving"
    assert target_verdict(row(0.0, 0.005, 3.15, 0.61), 4.0) == "no: compute 0.610 > 0.6"
    # a NaN SE (one seed) counts as 0
    assert target_verdict(row(0.0, float("nan"), 1.0, 0.2), 4.0) == "met: saving"


def test_budget_best_is_the_ctrl_best_candidate_within_the_share_of_the_best_static_plan():
    table = [
        {"candidate": "ref", "kind": "grid", "ctrl_score": 0.80, "ctrl_score_se": 0.01, "compute": 4.0, "rank": 1},
        {"candidate": "st", "kind": "static", "ctrl_score": 0.79, "ctrl_score_se": 0.01, "compute": 5.0, "rank": 2},
        {"candidate": "mid", "kind": "grid", "ctrl_score": 0.78, "ctrl_score_se": 0.02, "compute": 3.1, "rank": 3},
        {"candidate": "cheap", "kind": "static", "ctrl_score": 0.75, "ctrl_score_se": 0.0, "compute": 3.0, "rank": 4},
        {"candidate": "cheaper", "kind": "grid", "ctrl_score": 0.70, "ctrl_score_se": 0.0, "compute": 1.0, "rank": 5},
    ]
    best = budget_best(table, reference="ref", best_static="st")  # budget 0.6 x 5.0 = 3.0: "mid" is above it
    assert best is not None and best["candidate"] == "cheap" and best["budget"] == pytest.approx(3.0)
    assert best["ctrl_gap_vs_reference"] == pytest.approx(-0.05)
    assert budget_best(table, "ref", "st", share=0.62)["candidate"] == "mid"
    assert budget_best(table, "ref", "st", share=0.1) is None


def test_dev_sealed_raises_on_dev_and_restores_evaluate(env):
    before = env.distiller.evaluate
    with dev_sealed(env.distiller):
        assert env.distiller.evaluate("ctrl").split == "ctrl"
        with pytest.raises(DevReadDuringSelection, match="selection"):
            env.distiller.evaluate("dev")
    assert env.distiller.evaluate == before and "evaluate" not in env.distiller.__dict__


# ------------------------------------------------------------------------------------------- the protocol
def test_protocol_on_the_tiny_env(env, monkeypatch):
    calls: list[str] = []
    original = env.distiller.evaluate

    def spy(split="ctrl"):
        calls.append(split)
        return original(split)

    monkeypatch.setattr(env.distiller, "evaluate", spy)
    plans = menu_plans(env)
    cands = candidate_schedules(plans, env.steps_per_episode)
    assert [c.name for c in cands] == [*MENU, "kd-t0>kd-t1", "kd-t0>frac-0.3", "kd-t1>kd-t0", "kd-t1>frac-0.3"]
    controllers = {"random": RandomController(env.action_space, seed=0), "kd-t1": None}  # a candidate: reused
    result = run_protocol(env, cands, controllers, selection_seeds=[1, 2], eval_seeds=[3, 4], oracle=True)

    # dev is never read during selection: it is read once per evaluation episode (after its last step) only
    assert all(r.final_dev_score is None for r in result.selection_records)
    assert calls.count("dev") == len(result.eval_records) == (len(cands) + 1) * 2
    # the reference is the ctrl-best candidate over the selection seeds, recomputed here by hand
    by_name: dict[str, list[float]] = {}
    for r in result.selection_records:
        by_name.setdefault(r.controller, []).append(r.final_ctrl_score)
    means = {n: sum(v) / len(v) for n, v in by_name.items()}
    assert means[result.reference] == max(means.values())
    assert means[result.best_static] == max(means[n] for n in MENU)
    full = [c.name for c in cands if c.kind == "static" and not any(p.final for p in c.plans)]
    assert means[result.full_static] == max(means[n] for n in full)
    # the oracle is the dev-best candidate on the eval seeds, and labelled as an upper bound
    oracle_row = next(r for r in result.rows if r["controller"] == result.oracle)
    assert oracle_row["upper_bound"] and ORACLE_ROLE in oracle_row["role"]
    assert sum(r["upper_bound"] for r in result.rows) == 1
    assert {r["controller"] for r in result.rows} >= {result.reference, result.best_static, "random", "kd-t1"}
    ref_row = next(r for r in result.rows if r["controller"] == result.reference)
    assert ref_row["dev_diff_vs_reference"] == 0.0 and ref_row["role"].startswith("reference")
    # the grid shares first epochs: with the same seed, "A>B" replays A's first epoch
    sel = result.costs["selection"]
    assert sel["episodes"] == len(cands) * 2 and sel["decisions"] == 2 * sel["episodes"]
    assert sel["decisions_replayed"] == 4 * 2  # each of the 4 grid schedules, on each of the 2 seeds
    assert sel["cpu_seconds"] > 0
    # the budget line comes from the selection table alone
    assert result.budget_best == budget_best(result.selection, result.reference, result.best_static)
    # the printed report: the verdict column, and the full-horizon columns only where that plan differs
    text = format_protocol(result)
    assert "target" in text.splitlines()[0] and "full-horizon static" not in text.splitlines()[0]
    # roles print short (how each was chosen is in the lines below the table and in protocol.csv)
    ref_line = next(line for line in text.splitlines() if line.startswith(result.reference + " "))
    assert ref_line.rstrip().split("  ")[-1].strip().startswith("reference") and "(ctrl-best" not in ref_line
    assert "(ctrl-best of static plans and grid)" in ref_row["role"]
    assert "runs the full horizon" in text
    assert ("menu's ctrl-best candidate" in text) == (result.budget_best is not None)
    # the constant predictor's ctrl score (the majority label's share on the tiny env's ctrl), and the
    # warning when the reference does no better
    labels = np.asarray(env.distiller.task.ctrl.labels)
    assert result.constant_ctrl == pytest.approx(np.bincount(labels).max() / len(labels))
    ref_ctrl = next(r["ctrl_score"] for r in result.selection if r["candidate"] == result.reference)
    assert f"A constant prediction scores {100 * result.constant_ctrl:.1f} on ctrl; the reference {100 * ref_ctrl:.1f}" in text
    assert ("no better than a constant" in text) == (ref_ctrl <= result.constant_ctrl + 0.005)
    assert "no better than a constant" in format_protocol(dataclasses.replace(result, constant_ctrl=ref_ctrl))
    assert "no better than a constant" not in format_protocol(dataclasses.replace(result, constant_ctrl=ref_ctrl - 0.01))
    assert "constant prediction" not in format_protocol(dataclasses.replace(result, constant_ctrl=None))
    other = dataclasses.replace(result, full_static=next(n for n in MENU if n != result.best_static))
    assert "target vs full-horizon static" in format_protocol(other).splitlines()[0]
    cheap = {"candidate": "frac-0.3", "kind": "static", "ctrl_score": 0.5, "ctrl_score_se": 0.01, "compute": 0.9,
             "budget": 1.2, "ctrl_gap_vs_reference": -0.034}
    line = format_protocol(dataclasses.replace(result, budget_best=cheap)).splitlines()[-2]
    assert line == ("At that budget (<= 1.20 on the selection seeds) the menu's ctrl-best candidate is 'frac-0.3': "
                    "ctrl 50.0 ± 1.0 @ 0.90, -3.4 points against the reference's ctrl (selection seeds).")
    assert all(r["target"].startswith(("met", "no")) for r in result.rows
               if r["controller"] != result.reference and not r["upper_bound"])


def test_protocol_reuses_an_earlier_runs_episodes_by_meaning(env):
    plans = menu_plans(env)
    cands = candidate_schedules(plans, env.steps_per_episode, first_plans=["kd-t1"], rest_plans=["frac-0.3"])
    first = run_protocol(env, cands, {"random": RandomController(env.action_space, seed=0)}, [1, 2], [3, 4],
                         oracle=False)
    prior = [*first.selection_records, *first.eval_records]
    # a record whose plans differ from its candidate's (another run's "kd-t0") must not stand in for it
    tampered = next(r for r in prior if r.controller == "kd-t0" and r.seed == 1)
    tampered.steps[0].plan = {**tampered.steps[0].plan, "kd_weight": 0.5}
    # a record written before a field was added to EpochPlan (no "final" key) keeps its meaning
    for r in prior:
        if r.controller == "kd-t1>frac-0.3":
            for step in r.steps:
                step.plan = {k: v for k, v in step.plan.items() if k != "final"}
    new = ScheduleController([plans["kd-t1"], plans["frac-0.3"]], name="new-schedule")
    second = run_protocol(
        env, cands, {"random": RandomController(env.action_space, seed=0), "new-schedule": new}, [1, 2], [3, 4],
        oracle=True, prior=prior, reuse_names=["random"],
    )
    sel = second.costs["selection"]
    assert (sel["episodes"], sel["episodes_reused"]) == (1, 2 * len(cands) - 1)  # kd-t0 reran on seed 1 only
    assert second.reference == first.reference and second.best_static == first.best_static
    chosen = {first.reference, first.best_static, first.full_static}
    assert second.costs["candidates_eval"]["episodes"] == 2 * (len(cands) - len(chosen))  # only the oracle's new runs
    assert second.costs["controllers_eval"]["episodes"] == 2  # random reused, the new schedule run
    old = {(r.controller, r.seed): r.final_dev_score for r in first.eval_records}
    for r in second.eval_records:
        if (r.controller, r.seed) in old:
            assert r.final_dev_score == old[r.controller, r.seed]
    # what reusing records is worth: the merged costs count the earlier run's episodes
    merged = merge_costs(first.costs, second.costs)
    assert merged["selection"]["episodes"] == 2 * len(cands)  # those run here and those reused
    assert merged["selection"]["cpu_seconds"] > second.costs["selection"]["cpu_seconds"]
    # an open-loop schedule (a schedule.json) means its plans: reused under the same plans, whatever
    # it is called in reuse_names; the same name with other plans runs again
    prior2 = [*second.selection_records, *second.eval_records]
    same = run_protocol(env, cands, {"new-schedule": new}, [1, 2], [3, 4], oracle=False, prior=prior2)
    assert same.costs["controllers_eval"]["episodes"] == 0
    changed = ScheduleController([plans["kd-t1"], plans["kd-t0"]], name="new-schedule")
    other = run_protocol(env, cands, {"new-schedule": changed}, [1, 2], [3, 4], oracle=False, prior=prior2)
    assert other.costs["controllers_eval"]["episodes"] == 2


def test_merge_costs_charges_only_the_share_of_the_earlier_run_it_reused():
    def phase(episodes, trained, cpu, reused=0, reused_compute=0.0):
        return {"episodes": episodes, "decisions": 3 * episodes, "decisions_replayed": 0, "epochs_trained": trained,
                "fraction_replayed": 0.0, "cpu_seconds": cpu, "wall_seconds": cpu, "episodes_reused": reused,
                "compute_reused": reused_compute}

    before = {"selection": phase(10, 20.0, 200.0), "controllers_eval": phase(4, 8.0, 80.0)}
    # all of selection reused; of the controllers, one of two (2 of the 8 epochs), the other left out
    new = {"selection": phase(2, 4.0, 40.0, reused=10, reused_compute=26.0),
           "controllers_eval": phase(1, 2.0, 20.0, reused=1, reused_compute=2.0)}
    merged = merge_costs(before, new)
    assert merged["selection"]["cpu_seconds"] == 240.0  # capped at the whole earlier phase
    assert merged["selection"]["episodes"] == 12 and merged["selection"]["decisions"] == 36
    assert merged["controllers_eval"]["cpu_seconds"] == 20.0 + 80.0 * 2 / 8  # not the episodes it left out
    assert merged["controllers_eval"]["episodes"] == 2 and merged["controllers_eval"]["epochs_trained"] == 4.0
    nothing = merge_costs(before, {"selection": phase(3, 6.0, 60.0)})
    assert nothing["selection"]["cpu_seconds"] == 60.0 and nothing["selection"]["episodes"] == 3


def test_protocol_refuses_overlapping_seeds(env):
    cands = candidate_schedules(menu_plans(env), env.steps_per_episode, first_plans=[], rest_plans=[])
    with pytest.raises(ConfigError, match="both selection and evaluation"):
        run_protocol(env, cands, {}, selection_seeds=[1, 2], eval_seeds=[2, 3])
    with pytest.raises(ConfigError, match=">= 2 distinct"):
        run_protocol(env, cands, {}, selection_seeds=[1], eval_seeds=[3])


def test_compare_protocol_script(config, tmp_path):

    cfg_path = tmp_path / "tiny.yaml"
    save_config(cfg_path, CompareConfig(env=config))
    out = tmp_path / "protocol"
    cmd = [sys.executable, str(REPO / "experiments" / "compare.py"), "--config", str(cfg_path), "--protocol",
           "--controllers", "kd-t0", "random", "--selection-seeds", "1", "--seeds", "3", "4", "5", "6", "7",
           "--first-plans", "kd-t1", "--rest-plans", "frac-0.3", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    with (out / "protocol.csv").open() as f:
        rows = list(csv.DictReader(f))
    names = [r["controller"] for r in rows]
    assert {"paper-adoption", "paper-combined", "random", "kd-t0"} <= set(names)
    assert all(r["episodes"] == "5" for r in rows)
    with (out / "selection.csv").open() as f:
        selection = list(csv.DictReader(f))
    assert {r["candidate"] for r in selection} == {*MENU, "kd-t1>frac-0.3"} and "dev_score" not in selection[0]
    report = json.loads((out / "protocol.json").read_text())
    assert report["reference"] == selection[0]["candidate"] and report["oracle_is_upper_bound"]
    assert report["costs"]["selection"]["episodes"] == 4
    assert (out / "protocol.png").stat().st_size > 5000
    assert "oracle" in proc.stdout and "grid search cost" in proc.stdout
    i = cmd.index("--seeds")
    bad = subprocess.run(cmd[: i + 1] + ["3", "4"] + cmd[i + 6 :], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "at least 5" in " ".join(bad.stderr.replace("│", " ").split())

    # --reuse: a second run adds nothing new, so it runs no episode and reports the first run's costs
    again = [*cmd[: cmd.index("--out")], "--reuse", str(out), "--out", str(tmp_path / "again")]
    proc = subprocess.run(again, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report2 = json.loads((tmp_path / "again" / "protocol.json").read_text())
    assert report2["reference"] == report["reference"] and report2["reused_from"] == str(out)
    assert report2["costs"]["selection"]["episodes"] == 4 and report2["costs"]["selection"]["episodes_reused"] == 4
    assert report2["costs"]["controllers_eval"]["episodes_reused"] == report2["costs"]["controllers_eval"]["episodes"]
    assert [r["dev_score"] for r in report2["rows"]] == [r["dev_score"] for r in report["rows"]]
    # episodes of other settings would mean something else: refused, naming the setting
    assert json.loads((tmp_path / "again" / "protocol.json").read_text())["costs"]["selection"]["episodes"] == 4
    other = [*again[:-1], str(tmp_path / "other"), "--lr", "0.5"]
    proc = subprocess.run(other, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "backend.lr" in proc.stderr and not (tmp_path / "other").exists()
    # a longer menu: the earlier candidates are matched by their plans; only the new ones run, and
    # random (whose actions are menu indices) runs again
    longer = [*again[:-1], str(tmp_path / "longer"), "--menu", *MENU, "kd-t1-end"]
    proc = subprocess.run(longer, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report3 = json.loads((tmp_path / "longer" / "protocol.json").read_text())
    sel, ctl = report3["costs"]["selection"], report3["costs"]["controllers_eval"]
    assert sel["episodes_reused"] == 4 and sel["episodes"] > 4  # kd-t1-end and kd-t1's shorter runs are new
    before = report2["costs"]["controllers_eval"]
    assert before["episodes_reused"] - ctl["episodes_reused"] == 5  # random, on 5 eval seeds, ran again
    assert ctl["episodes"] == before["episodes"]  # the same episodes behind the report, each counted once
    # --no-heuristics over more seeds: only the reference, the best static plan and --controllers
    # (kd-t0 and random here; no paper heuristic),
    # paired on all seven seeds, the first five read from the earlier run
    more = [*again[:-1], str(tmp_path / "more"), "--no-heuristics", "--no-oracle"]
    more[more.index("--seeds") + 1 : more.index("--seeds") + 6] = ["3", "4", "5", "6", "7", "8", "9"]
    proc = subprocess.run(more, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    with (tmp_path / "more" / "protocol.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {r["controller"] for r in rows} == {report["reference"], report["best_static"], "kd-t0", "random"}
    assert all(r["episodes"] == "7" for r in rows)
    report4 = json.loads((tmp_path / "more" / "protocol.json").read_text())
    assert report4["costs"]["selection"]["episodes_reused"] == 4
    # the chosen candidates ran only on the two new seeds (8 and 9); the first five were read
    chosen = {report4["reference"], report4["best_static"], report4["full_horizon_static"]}
    ce = report4["costs"]["candidates_eval"]
    assert ce["episodes"] - ce["episodes_reused"] == 2 * len(chosen)


def test_protocol_flag_alone_gets_five_eval_seeds():
    """`compare.py --protocol` with no --seeds must run (tyro builds the default before the flag)."""

    assert parse_config(CompareConfig, None, ["--protocol"]).eval_seeds == (10000, 10001, 10002, 10003, 10004)
    assert parse_config(CompareConfig, None, ["--controllers", "kd-t0"]).eval_seeds == (10000, 10001, 10002)
    with pytest.raises(ConfigError, match="at least 5 fresh seeds"):
        CompareConfig(protocol=True, seeds=(1, 2, 3))
