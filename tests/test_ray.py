"""Scaling out on Ray (issue 10): the Ray vector env against DummyVecEnv, an actor killed
mid-episode during learning, n_envs > 1 in the learn workflow, and the PBT baseline.

Every test here needs Ray (``pip install -e ".[ray]"``) and is skipped with that reason without
it; they start a local Ray with 2 CPUs and shut it down at the end of the module.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from stable_baselines3.common.vec_env import DummyVecEnv

from agents import read_episodes
from agents.cli import save_config
from agents.configs import LearnConfig
from agents.controllers import load_schedule
from agents.evaluation import evaluate
from agents.learning import RESTARTS_FILE, learn, make_learner, prepare_run_dir
from agents.ray_vec_env import RayVecEnv  # noqa: E402
from agents.spaces import build_env, expected_spaces
from agents.vec_env import EnvFactory, SeededEpisodes
from envs import tiny_config

ray = pytest.importorskip("ray", reason='Ray is not installed; these tests need DynaKD\'s ray extra: pip install -e ".[ray]"')
pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parents[1]

STEPS = 3  # decisions per episode of the tiny env


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> str:
    path = tmp_path_factory.getbasetemp() / "dynakd-tiny-cache"
    path.mkdir(exist_ok=True)
    return str(path)


@pytest.fixture(scope="module")
def config(cache_dir):
    cfg = tiny_config(cache_dir=cache_dir)
    build_env(cfg)  # fine-tune and cache the teachers once, before any actor starts
    return cfg


@pytest.fixture(scope="module")
def local_ray():
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _rollout(vec, actions):
    """Reset (seeded via ``seed()``), then step through ``actions``; everything the learner would see."""
    vec.seed(123)
    out = [vec.reset()]
    for a in actions:
        obs, rewards, dones, infos = vec.step(np.asarray(a))
        out.append((obs, rewards, dones, infos))
    return out


def _same(a, b):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _same(x, y)
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b)
    else:
        assert a == b or (isinstance(a, float) and np.isnan(a) and np.isnan(b))


def _cluster_state() -> str:
    """What the test's Ray holds (free and total resources), and the warnings and errors its raylet
    logged last: enough to tell a resource wait from a worker that never started."""
    state = f"free {ray.available_resources()} of {ray.cluster_resources()}"
    try:
        logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
        lines = [x for f in sorted(logs.glob("raylet*.out")) for x in f.read_text(errors="replace").splitlines()
                 if " W " in x[:40] or " E " in x[:40] or "WARN" in x or "ERROR" in x]
        state += "; raylet warnings and errors, last 20:\n" + "\n".join(lines[-20:])
    except Exception as e:  # noqa: BLE001 - diagnostics only: say why they are missing
        state += f"; no raylet log ({type(e).__name__}: {e})"
    return state


def _wait_until_free(when: str, limit_s: float = 120) -> None:
    """Wait until every CPU of the test's Ray is free again (Ray releases a finished task's or a killed
    actor's resources asynchronously), failing with the cluster's state after ``limit_s``."""
    deadline = time.time() + limit_s
    while ray.available_resources().get("CPU", 0) < ray.cluster_resources().get("CPU", 0):
        assert time.time() < deadline, f"the test's Ray is still busy {when}, after {limit_s:.0f} s: {_cluster_state()}"
        time.sleep(0.2)


def _run_joined(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Run a script that joins this module's Ray as a client, once the cluster's CPUs are all free
    (an earlier test's actors may take a moment to go), and fail with the cluster's state if the
    script does not finish in time, instead of a bare timeout."""
    _wait_until_free("before the script joins it")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=420, **kwargs)
    except subprocess.TimeoutExpired as e:
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        pytest.fail(f"{cmd[1]} did not finish in 420 s; {_cluster_state()}; its stderr ends: {err[-3000:]}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


# The two tests that join the cluster from another process come first, while the cluster is fresh.
def test_learn_policy_on_ray_with_two_envs_and_resume(config, local_ray, tmp_path):
    """``learn_policy.py --vec-env ray --n-envs 2 --ray-address ...`` end to end, then ``--resume`` to
    more episodes: every episode once, seeds = episode numbers, the policy saw them all."""
    cfg = LearnConfig(env=config, name="ray2", runs_dir=str(tmp_path), total_episodes=2, rollout_episodes=2,
                      checkpoint_every=2, eval_seeds=(100,), baselines=("kd-t0",), vec_env="ray", n_envs=2)
    path = tmp_path / "learn.yaml"
    save_config(path, cfg)
    address = ray.get_runtime_context().gcs_address
    script = [sys.executable, str(REPO / "experiments" / "learn_policy.py")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for args in (["--config", path, "--ray-address", address],
                 ["--resume", tmp_path / "ray2", "--total-episodes", "4", "--ray-address", address]):
        _run_joined([*script, *map(str, args)], cwd=REPO, env=env)
    run = tmp_path / "ray2"
    lines = read_episodes(run / "episodes.jsonl")
    assert sorted((x["episode"], x["step"]) for x in lines) == [(e, s) for e in range(4) for s in range(1, STEPS + 1)]
    assert {x["episode"]: x["seed"] for x in lines} == {e: e for e in range(4)}
    assert {x["env"] for x in lines} == {0, 1}
    assert json.loads((run / "checkpoints" / "latest.json").read_text())["episodes"] == 4
    assert (run / "policy.zip").is_file() and (run / "comparison.csv").is_file()
    assert not (run / RESTARTS_FILE).exists()  # nothing died

def test_ray_throughput_benchmark_quick(local_ray, tmp_path):
    address = ray.get_runtime_context().gcs_address  # the benchmark joins this test's Ray as a client
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cache = tmp_path / "cache"
    proc = _run_joined(
        [sys.executable, str(REPO / "experiments" / "benchmarks" / "ray_throughput.py"), "--quick", "--out",
         str(tmp_path), "--ray-address", address, "--env.backend.cache-dir", str(cache)],
        cwd=REPO / "experiments" / "benchmarks", env=env)
    data = json.loads((tmp_path / "ray_throughput.json").read_text())
    assert [r["setting"] for r in data["rows"]] == ["SubprocVecEnv, 1 env", "SubprocVecEnv, 2 envs",
                                                   "RayVecEnv, 1 env", "RayVecEnv, 2 envs"]
    assert all(r["episodes/hour"] > 0 and r["vs SubprocVecEnv"] > 0 for r in data["rows"])
    assert [r["setting"] for r in data["overhead"]] == ["local step (DummyVecEnv)", "Ray actor step"]
    assert "per-step overhead of Ray" in proc.stdout

def test_ray_vec_env_matches_dummy_vec_env(config, local_ray):
    factories = [EnvFactory(config, first_seed=7 + k, stride=2) for k in range(2)]
    actions = [[0, 1], [2, 3], [1, 1], [3, 0], [0, 0], [2, 1], [1, 2]]  # two whole episodes and one more step
    dummy = DummyVecEnv(factories)
    expected = _rollout(dummy, actions)
    vec = RayVecEnv(factories)
    try:
        got = _rollout(vec, actions)
        _same(got, expected)
        assert [info["seed"] for info in got[1][3]] == [7, 8]  # seeds from SeededEpisodes, not seed()
        assert [info["seed"] for info in got[STEPS + 1][3]] == [9, 10]  # after the auto-reset
        assert all("terminal_observation" in info for info in got[STEPS][3])
        assert vec.get_attr("steps_per_episode") == [STEPS, STEPS]
        assert vec.env_is_wrapped(SeededEpisodes) == [True, True]
        vec.set_attr("stride", 2, indices=[1])
        assert vec.get_attr("stride", indices=1) == [2]
        assert vec.env_method("episode_state") == dummy.env_method("episode_state")
        assert vec.has_attr("teacher_names") and not vec.has_attr("no_such_attribute")
        assert vec.restarts == [0, 0]
    finally:
        vec.close()
        dummy.close()


def test_killed_actor_is_restarted_and_its_episode_redone(config, local_ray, tmp_path):
    """SIGKILL one actor in the middle of learning: the episode is redone on a new actor (same seed,
    same actions), and episodes.jsonl is complete, duplicate-free and equal to a run without Ray."""
    base = dict(env=config, total_episodes=4, rollout_episodes=2, checkpoint_every=2, eval_seeds=(100,),
                baselines=("kd-t0",), n_envs=2, runs_dir=str(tmp_path))
    reference = LearnConfig(name="dummy", vec_env="dummy", **base)
    killed = LearnConfig(name="ray", vec_env="ray", ray_max_restarts=2, **base)
    results = {}
    for cfg in (reference, killed):
        run_dir = prepare_run_dir(cfg)
        env = build_env(cfg.env)
        agent, done = make_learner(cfg, env, run_dir)
        vec = agent.get_env()
        killer = None
        if isinstance(vec, RayVecEnv):
            victim = vec.actor_pids()[0]

            def kill_mid_episode(path=run_dir / "episodes.jsonl", pid=victim):
                deadline = time.time() + 120
                while time.time() < deadline and not (path.exists() and path.read_text().count("\n") >= 2):
                    time.sleep(0.02)
                os.kill(pid, signal.SIGKILL)  # episodes 0 and 1 have done one step of three

            killer = threading.Thread(target=kill_mid_episode, daemon=True)
            killer.start()
        try:
            assert learn(agent, cfg, run_dir, done, show_progress=False) == 4
        finally:
            vec.close()
        if killer is not None:
            killer.join(timeout=5)
            assert vec.restarts == [1, 0]
            (line,) = [json.loads(x) for x in (run_dir / RESTARTS_FILE).read_text().splitlines()]
            assert line["env"] == 0 and line["restart"] == 1
        results[cfg.name] = read_episodes(run_dir / "episodes.jsonl")

    lines = results["ray"]
    assert [(x["episode"], x["step"]) for x in lines] == [(e, s) for r in (0, 2) for s in range(1, STEPS + 1)
                                                          for e in (r, r + 1)]
    assert {x["episode"]: x["seed"] for x in lines} == {0: 0, 1: 1, 2: 2, 3: 3}
    strip = [{k: v for k, v in x.items() if k != "stats"} for x in lines]
    assert strip == [{k: v for k, v in x.items() if k != "stats"} for x in results["dummy"]]
    assert [x["stats"]["losses"] for x in lines] == [x["stats"]["losses"] for x in results["dummy"]]


def test_pbt_population_of_two_completes_and_its_schedule_replays(config, local_ray, tmp_path):
    from agents.pbt import run_pbt

    result = run_pbt(config, tmp_path / "pbt", population=2, quantile_fraction=0.5, seed=0)
    saved = json.loads((tmp_path / "pbt" / "pbt_schedule.json").read_text())
    assert saved["controller"] == "pbt" and saved["chosen_by"] == "final_ctrl_score"
    assert len(saved["plans"]) == STEPS and saved["plans"] == result.plans
    assert result.trials == 2 and result.decisions_trained == 2 * STEPS
    assert saved["pbt_total_compute"] == pytest.approx(result.total_compute) and result.total_compute > 0
    assert result.total_compute >= saved["total_compute"] - 1e-9  # the lineage is part of what was trained
    trials = json.loads((tmp_path / "pbt" / "pbt_trials.json").read_text())["trials"]
    assert len(trials) == 2 and max(t["final_ctrl_score"] for t in trials) == result.final_ctrl_score

    # Open-loop replay from scratch on the same seed is the best trial's run, exploits included.
    spaces = expected_spaces(config)
    schedule = load_schedule(tmp_path / "pbt" / "pbt_schedule.json", config, spaces)
    env = build_env(config, spaces)
    [record] = evaluate(env, {"pbt": schedule}, [config.backend.seed], show_progress=False)
    assert record.final_ctrl_score == pytest.approx(result.final_ctrl_score, abs=1e-9)
    assert record.total_compute == pytest.approx(saved["total_compute"], rel=1e-9)


def test_warm_up_builds_one_env_per_node(config, local_ray):
    from agents.ray_vec_env import warm_up

    here = ray.get_runtime_context().get_node_id()
    assert warm_up(EnvFactory(config)) == [here]  # the one node of a local Ray
    assert warm_up(EnvFactory(config), skip_nodes=[here]) == []
    _wait_until_free("after the warm-up", limit_s=60)  # its worker exits and gives its CPU back


def test_envs_the_cluster_cannot_place_warn_then_fail_with_the_cause(config, local_ray, monkeypatch, caplog):
    """Ray queues an actor it cannot place without a word; RayVecEnv says what it waits for, and with
    ``start_timeout_s`` gives up naming the cause, and leaves nothing behind."""
    import agents.ray_vec_env as rve

    monkeypatch.setattr(rve, "START_WARN_S", 0.5)
    _wait_until_free("before the test")  # an earlier test's workers may still hold a CPU a moment
    with caplog.at_level("WARNING", logger="agents.ray_vec_env"), pytest.raises(rve.RayEnvError) as err:
        RayVecEnv([EnvFactory(config)], num_cpus=3, start_timeout_s=2)  # the test's Ray has 2 CPUs
    assert "1 of 1 Ray envs not started" in str(err.value) and "3 CPU" in str(err.value)
    assert "--n-envs" in str(err.value)
    assert any("not started" in r.getMessage() and "of 2 CPU" in r.getMessage() for r in caplog.records)
    _wait_until_free("after RayVecEnv gave up")
