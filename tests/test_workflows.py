"""The user-facing workflows — learn, replay, compare — as subprocesses with tiny budgets, checking
the artifacts they write; ``--resume`` after a kill; bad input refused before any work."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from agents import ScheduleController, read_episodes
from agents.cli import load_config_file, parse_config, save_config
from agents.configs import CompareConfig, LearnConfig, ReplayConfig
from agents.controllers import build_controllers, load_policy
from agents.spaces import check_algorithm, configure_threads, expected_spaces
from agents.vec_env import SeededEpisodes
from agents.workflows import compare, learn_policy, replay
from envs import tiny_config
from kd_backend.errors import ConfigError
from kd_backend.pipeline import load_task_data
from kd_backend.reporting import read_scalars

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # end-to-end: scripts as subprocesses (CI runs them; -m "not slow" skips)

EVAL_SEEDS = (100, 101)
BASELINES = ("kd-t0", "paper-combined", "random")
STEPS = 3  # decisions per episode of the tiny env: 3 epochs x 1


def run_script(script: str, *args: object, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "experiments" / script), *map(str, args)]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def check_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}"
    )


@pytest.fixture(scope="module")
def tiny_yaml(tmp_path_factory) -> Path:
    """A learn config for the tiny env (its teachers are cached where test_env/test_agents cache them)."""
    cache = tmp_path_factory.getbasetemp() / "dynakd-tiny-cache"
    cache.mkdir(exist_ok=True)
    runs = tmp_path_factory.mktemp("runs")
    cfg = LearnConfig(
        env=tiny_config(cache_dir=str(cache)), name="tiny", runs_dir=str(runs), total_episodes=4,
        rollout_episodes=2, checkpoint_every=2, eval_seeds=EVAL_SEEDS, baselines=BASELINES,
    )
    path = tmp_path_factory.mktemp("configs") / "tiny.yaml"
    save_config(path, cfg)
    return path


@pytest.fixture(scope="module")
def learned(tiny_yaml) -> Path:
    """One learning run of 4 episodes (2 PPO updates), shared by the tests that read its artifacts."""
    check_ok(run_script("learn_policy.py", "--config", tiny_yaml))
    return Path(yaml.safe_load(tiny_yaml.read_text())["runs_dir"]) / "tiny"


def test_learn_writes_every_artifact(learned, tiny_yaml):
    config = yaml.safe_load((learned / "config.yaml").read_text())
    assert set(config) == {f.name for f in dataclasses.fields(LearnConfig)}
    assert config["total_episodes"] == 4 and config["resume"] is None and config["algo"] == "ppo"
    cache_dir = yaml.safe_load(tiny_yaml.read_text())["env"]["backend"]["cache_dir"]
    assert config["env"]["backend"]["cache_dir"] == cache_dir
    resolved = load_config_file(LearnConfig, learned / "config.yaml")  # the saved config reads back
    assert resolved.env == tiny_config(cache_dir=config["env"]["backend"]["cache_dir"])

    spaces = expected_spaces(resolved.env)
    agent = load_policy(learned / "policy.zip", spaces)
    assert agent.dynakd_algo == "ppo" and agent.num_timesteps == 4 * STEPS

    lines = read_episodes(learned / "episodes.jsonl")
    assert len(lines) == 4 * STEPS
    steps = [(line["episode"], line["step"]) for line in lines]
    assert steps == [(e, s) for e in range(4) for s in range(1, STEPS + 1)]
    assert [line["seed"] for line in lines if line["done"]] == [0, 1, 2, 3]  # training seeds: seed + episode
    assert all(0 <= line["dev_score"] <= 1 for line in lines if line["done"])

    with (learned / "comparison.csv").open() as f:
        rows = {row["controller"]: row for row in csv.DictReader(f)}
    assert set(rows) == {"learned-ppo", *BASELINES}
    assert all(int(row["episodes"]) == len(EVAL_SEEDS) and 0 <= float(row["dev_score"]) <= 1 for row in rows.values())
    png = (learned / "comparison.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000

    evaluated = [json.loads(line) for line in (learned / "evaluation.jsonl").read_text().splitlines()]
    assert len(evaluated) == len(rows) * len(EVAL_SEEDS)
    own = [e for e in evaluated if e["controller"] == "learned-ppo"]
    assert {e["seed"] for e in own} == set(EVAL_SEEDS)  # fresh seeds, not training ones

    best = json.loads((learned / "best_schedule.json").read_text())
    top = max(own, key=lambda e: e["final_ctrl_score"])  # by ctrl, never by dev
    assert best["chosen_by"] == "final_ctrl_score" and best["seed"] == top["seed"]
    assert best["plans"] == [s["plan"] for s in top["steps"]]
    assert ScheduleController.load(learned / "best_schedule.json").num_steps == STEPS

    scalars = read_scalars(learned / "tensorboard")
    dev = [line["dev_score"] for line in lines if line["done"]]
    assert [v for _, v in scalars["episode/final_dev_score"]] == pytest.approx(dev, abs=1e-6)  # float32 in TB
    assert len(scalars["plan/fraction"]) == 4 * STEPS and "plan/teacher_weight/t1_tiny-2x128" in scalars
    assert "train/value_loss" in scalars  # SB3's own scalars: the policy was updated
    assert "train/loss_kd" in scalars and "step/compute" in scalars  # one tag schema (kd_backend.reporting)
    assert scalars["learned-ppo/dev_score"][0][1] == pytest.approx(float(rows["learned-ppo"]["dev_score"]), abs=1e-6)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    hparams = EventAccumulator(str(learned / "tensorboard" / "hparams"))
    hparams.Reload()
    assert hparams.PluginTagToContent("hparams")  # the HParams dashboard's record: settings + final metrics
    layout = EventAccumulator(str(learned / "tensorboard" / "dynakd"))
    layout.Reload()
    assert layout.PluginTagToContent("custom_scalars")  # the dashboard opens grouped


def test_replay_policy_and_schedule(learned, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path / "closed"
    proc = run_script("replay_schedule.py", "--config", learned / "config.yaml", "--policy", learned / "policy.zip",
                      "--seed", 7, "--out", out)
    check_ok(proc)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["mode"] == "closed loop" and metrics["seed"] == 7 and len(metrics["steps"]) == STEPS
    assert set(metrics["final_dev"]) == {"accuracy"} and metrics["final_dev_score"] == metrics["final_dev"]["accuracy"]
    assert metrics["final_ctrl_score"] == metrics["steps"][-1]["ctrl_score"] == metrics["final_ctrl"]["score"]
    applied = ScheduleController.load(out / "schedule.json")
    assert [p.to_dict() for p in applied.plans] == [s["plan"] for s in metrics["steps"]]
    model = AutoModelForSequenceClassification.from_pretrained(out / "student")
    tokenizer = AutoTokenizer.from_pretrained(out / "student")
    assert model.config.num_labels == 2
    assert model(**tokenizer(["a fine film"], return_tensors="pt")).logits.shape == (1, 2)
    labels = load_task_data(load_config_file(LearnConfig, learned / "config.yaml").env.backend).spec.label_names
    assert list(model.config.id2label.values()) == list(labels)  # the task's names, not LABEL_0 / LABEL_1
    card = (out / "student" / "README.md").read_text()
    assert "closed loop" in card and "## Schedule applied" in card and card.count("\n| ") >= STEPS + 4
    scalars = read_scalars(out)
    assert len(scalars["step/ctrl_score"]) == STEPS and scalars["episode/final_dev_score"][0][1] == pytest.approx(
        metrics["final_dev_score"])

    # Open loop: the recorded schedule is applied as written, on another seed.
    out2 = tmp_path / "open"
    check_ok(run_script("replay_schedule.py", "--config", learned / "config.yaml", "--schedule",
                        learned / "best_schedule.json", "--seed", 8, "--out", out2))
    replayed = json.loads((out2 / "metrics.json").read_text())
    assert replayed["mode"] == "open loop" and replayed["seed"] == 8
    assert [s["plan"] for s in replayed["steps"]] == json.loads((learned / "best_schedule.json").read_text())["plans"]
    assert (out2 / "student" / "config.json").exists()


def test_compare_over_two_seeds(learned, tmp_path):
    out = tmp_path / "compare"
    proc = run_script("compare.py", "--config", learned / "config.yaml", "--controllers", "kd-t1", "random",
                      learned / "policy.zip", learned / "best_schedule.json", "--seeds", 1, 2, "--out", out)
    check_ok(proc)
    with (out / "comparison.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["controller"] for r in rows] == ["kd-t1", "random", "tiny/policy", "tiny/best_schedule"]
    assert all(r["episodes"] == "2" and r["seeds"] == "1 2" for r in rows)
    assert (out / "comparison.png").stat().st_size > 5000
    assert len((out / "evaluation.jsonl").read_text().splitlines()) == 8
    assert "tiny/policy" in proc.stdout and "dev score" in proc.stdout  # the printed table


def test_resume_after_kill_neither_loses_nor_repeats_episodes(tiny_yaml, tmp_path):
    total = 12
    args = ["--config", tiny_yaml, "--runs-dir", tmp_path, "--name", "killed", "--total-episodes", total,
            "--eval-seeds", 100, "--baselines", "kd-t0"]
    run = tmp_path / "killed"
    cmd = [sys.executable, str(REPO / "experiments" / "learn_policy.py"), *map(str, args)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            finished = sum(line["done"] for line in read_episodes(run / "episodes.jsonl"))
            # Checkpoints follow PPO updates (every 2 episodes here): after an odd count, the last
            # finished episode is not covered, so the resume must drop and redo its lines.
            if finished >= 5 and finished % 2 == 1 and (run / "checkpoints" / "latest.json").exists():
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"the run ended before it could be killed:\n{proc.stderr.read()[-3000:]}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stderr.close()
    assert not (run / "policy.zip").exists()
    checkpoint = json.loads((run / "checkpoints" / "latest.json").read_text())
    assert 2 <= checkpoint["episodes"] < total
    uncovered = [line for line in read_episodes(run / "episodes.jsonl") if line["episode"] >= checkpoint["episodes"]]
    assert uncovered, "the kill should leave lines of episodes the checkpoint does not cover"

    refused = run_script("learn_policy.py", *args)  # the same name without --resume: refused, nothing touched
    assert refused.returncode == 1 and "--resume" in refused.stderr

    check_ok(run_script("learn_policy.py", "--resume", run))
    lines = read_episodes(run / "episodes.jsonl")
    keys = [(line["episode"], line["step"]) for line in lines]
    assert keys == sorted(set(keys)), "episodes.jsonl repeats or reorders steps"
    assert keys == [(e, s) for e in range(total) for s in range(1, STEPS + 1)]
    pool = LearnConfig().seed_pool  # the default seed pool: episode i uses seed i mod pool
    assert [line["seed"] for line in lines if line["done"]] == [i % pool for i in range(total)]
    assert [line["timestep"] for line in lines] == list(range(1, total * STEPS + 1))
    scalars = read_scalars(run / "tensorboard")  # the redone steps replaced the killed run's events
    for tag, points in scalars.items():
        steps = [t for t, _ in points]
        assert len(steps) == len(set(steps)), f"TensorBoard {tag} repeats steps {sorted(steps)}"
    assert [t for t, _ in scalars["step/reward"]] == list(range(1, total * STEPS + 1))
    dev = [line["dev_score"] for line in lines if line["done"]]
    assert scalars["episode/final_dev_score"] == [(e, pytest.approx(d, abs=1e-6)) for e, d in enumerate(dev)]
    policy = load_policy(run / "policy.zip", expected_spaces(tiny_config()))
    assert policy.num_timesteps == total * STEPS
    assert (run / "comparison.csv").exists() and (run / "best_schedule.json").exists()


# ------------------------------------------------------------------------------------------ bad input
def parse(cls, *argv):
    return parse_config(cls, None, [str(a) for a in argv])


def test_dqn_with_box_is_refused_before_any_work(tiny_yaml, tmp_path):
    cfg = parse(LearnConfig, "--config", tiny_yaml, "--algo", "dqn", "--action-space", "box", "--runs-dir", tmp_path)
    with pytest.raises(ConfigError, match=r"'dqn' cannot act in the Box.*\['ppo', 'a2c', 'sac'\]"):
        learn_policy(cfg)
    assert not (tmp_path / "tiny").exists()  # nothing was started
    proc = run_script("learn_policy.py", "--config", tiny_yaml, "--algo", "dqn", "--action-space", "box",
                      "--runs-dir", tmp_path)
    assert proc.returncode == 1 and "error: algorithm 'dqn' cannot act" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_mismatched_policy_is_refused_before_any_work(learned, tmp_path):
    base = ("--config", learned / "config.yaml", "--policy", learned / "policy.zip", "--out", tmp_path / "x")
    with pytest.raises(ConfigError, match="action space Discrete"):
        replay(parse(ReplayConfig, *base, "--menu", "kd-t0", "kd-t1"))
    with pytest.raises(ConfigError, match="observation space"):
        replay(parse(ReplayConfig, *base, "--teachers", "tiny-2x128"))
    # the same spaces with another meaning: a reordered menu would replay other plans without error
    menu = expected_spaces(load_config_file(LearnConfig, learned / "config.yaml").env).meaning["actions"]
    with pytest.raises(ConfigError, match=rf"actions 0 means '{menu[0]}' for the policy but '{menu[-1]}' here"):
        replay(parse(ReplayConfig, *base, "--menu", *reversed(menu)))
    with pytest.raises(ConfigError, match="does not exist"):
        replay(parse(ReplayConfig, "--policy", tmp_path / "missing.zip"))
    with pytest.raises(ConfigError, match="exactly one of --policy"):
        replay(parse(ReplayConfig, "--config", learned / "config.yaml"))
    with pytest.raises(ConfigError, match="unknown controller 'kd-t7'"):
        compare(parse(CompareConfig, "--config", learned / "config.yaml", "--controllers", "kd-t0", "kd-t7"))
    assert not (tmp_path / "x").exists()


def test_on_policy_budget_must_fill_whole_rollouts():
    # PPO learns from rollouts of rollout_episodes whole episodes: a remainder would never be learned from.
    with pytest.raises(ConfigError, match=r"total_episodes=7 is not a multiple of the 2 episodes PPO.*--total-episodes 6 or 8"):
        LearnConfig(total_episodes=7, rollout_episodes=2)
    with pytest.raises(ConfigError, match=r"the 4 episodes PPO.*--total-episodes 4$"):
        LearnConfig(total_episodes=3, rollout_episodes=None)  # agents.factory's PPO default: 4 per update
    assert LearnConfig(total_episodes=7, rollout_episodes=3, algo="dqn").total_episodes == 7  # off-policy: any budget
    assert LearnConfig(total_episodes=6, rollout_episodes=3, algo="a2c").total_episodes == 6


@pytest.mark.parametrize(
    "content, match",
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"steps": []}), "no 'plans' key"),
        (json.dumps([{"fraction": 2.0}] * STEPS), r"step 0.*fraction=2\.0"),
        (json.dumps([{"teacher_mode": "fixed", "bogus": 1}] * STEPS), r"unknown EpochPlan field\(s\) \['bogus'\]"),
        (json.dumps([{}]), "has 1 plans but an episode of this env has 3"),
        (json.dumps([{"teacher_weights": [1, 0, 0]}] * STEPS), "weights 3 teachers but the env has 2"),
    ],
)
def test_malformed_schedule_is_refused_before_any_work(tiny_yaml, tmp_path, content, match):
    path = tmp_path / "schedule.json"
    path.write_text(content)
    cfg = parse(ReplayConfig, "--config", tiny_yaml, "--schedule", path, "--out", tmp_path / "out")
    with pytest.raises(ConfigError, match=match):
        replay(cfg)
    assert not (tmp_path / "out").exists()


def test_config_files_missing_or_unknown_keys(tmp_path, tiny_yaml, capsys):
    data = yaml.safe_load(tiny_yaml.read_text())
    for key in ("total_episodes", "env"):
        broken = tmp_path / f"no-{key}.yaml"
        broken.write_text(yaml.safe_dump({k: v for k, v in data.items() if k != key}))
        with pytest.raises(ConfigError, match=rf"missing required key\(s\) \['{key}'\]"):
            parse(LearnConfig, "--config", broken)
    data["env"]["backend"]["teacher_count"] = 2
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"env\.backend: unknown key\(s\) \['teacher_count'\]"):
        parse(LearnConfig, "--config", unknown)
    with pytest.raises(ConfigError, match="does not exist"):
        parse(LearnConfig, "--config", tmp_path / "nope.yaml")
    with pytest.raises(SystemExit):  # tyro reports errors of flag values itself
        parse(LearnConfig, "--config", tiny_yaml, "--eval-seeds", 3, 100)
    assert "eval_seeds [3] are also training" in " ".join(capsys.readouterr().err.split())
    with pytest.raises(ConfigError, match="no config.yaml"):
        parse(LearnConfig, "--resume", tmp_path)
    # A learn config also drives replay and compare: learn-only keys are skipped, unknown ones are not.
    replay = parse(ReplayConfig, "--config", tiny_yaml, "--schedule", "s.json", "--seed", 4)
    assert replay.env.backend.seed == 4 and replay.env.backend.synthetic_train == 600
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['teacher_count'\]"):
        parse(CompareConfig, "--config", unknown)


def test_boolean_flags_are_switches(tiny_yaml):
    cfg = parse(LearnConfig, "--config", tiny_yaml, "--overwrite", "--no-report-dev", "--no-progress")
    assert cfg.overwrite and not cfg.env.report_dev and not cfg.env.backend.progress
    assert parse(LearnConfig, "--config", tiny_yaml, "--report-dev").env.report_dev
    replay = parse(ReplayConfig, "--config", tiny_yaml, "--schedule", "s.json", "--no-bf16", "--pad-to-max-length")
    assert not replay.env.backend.bf16 and replay.env.backend.pad_to_max_length
    assert not parse(CompareConfig, "--config", tiny_yaml, "--no-progress").env.backend.progress
    with pytest.raises(SystemExit):  # the style of distill.py, train_teachers.py and the benchmarks: no values
        parse(LearnConfig, "--config", tiny_yaml, "--overwrite", "True")


def test_shipped_configs():
    configs = REPO / "experiments" / "configs"
    assert load_config_file(LearnConfig, configs / "default.yaml") == LearnConfig()  # = no arguments
    sst2 = load_config_file(LearnConfig, configs / "sst2_cpu.yaml")
    b = sst2.env.backend
    assert b.task == "glue/sst2" and b.data_dir == "../shared/data/glue" and b.train_limit
    assert b.teachers == ("tiny-2x128", "tiny-4x256") and b.student.startswith("tiny-")
    paper = load_config_file(LearnConfig, configs / "gpu_paper.yaml")
    b = paper.env.backend
    paper_setting = (b.student_init, b.student_layers, b.epochs, b.lr, b.batch_size, b.max_seq_length)
    assert paper_setting == ("first", 6, 3, 2e-5, 32, 128)
    assert len(b.teachers) == 2 and paper.env.temperature == 1.0 and b.device == "cuda"
    for cfg in (LearnConfig(), sst2, paper):  # the spaces are known without building anything
        spaces = expected_spaces(cfg.env)
        check_algorithm(cfg.algo, spaces)
        assert set(build_controllers(cfg.baselines, cfg.env, spaces)) == set(cfg.baselines)


def test_schedules_by_plan_names_and_teacher_suffixes_build_without_work():
    cfg = load_config_file(LearnConfig, REPO / "experiments" / "configs" / "sst2_minilm_cpu.yaml")
    spaces = expected_spaces(cfg.env)  # 3 teachers, 3 decisions per episode
    ctrls = build_controllers(["kd-t1>frac-0.3-stale-t1>frac-0.4-random", "frac-0.3-stale-t2"], cfg.env, spaces)
    first, stale, rand = ctrls["kd-t1>frac-0.3-stale-t1>frac-0.4-random"].plans
    assert first.teacher_weights == (0.0, 1.0, 0.0) and first.fraction == 1.0
    assert (stale.fraction, stale.scoring, stale.teacher_weights) == (0.3, "stale", (0.0, 1.0, 0.0))
    assert (rand.fraction, rand.selection, rand.teacher_weights) == (0.4, "random", None)  # the teachers' mean
    assert ctrls["frac-0.3-stale-t2"].plan.teacher_weights == (0.0, 0.0, 1.0)
    with pytest.raises(ConfigError, match=r"names 2 plan\(s\) but an episode has 3 decisions.*kd-t1>kd-t2>kd-t2"):
        build_controllers(["kd-t1>kd-t2"], cfg.env, spaces)
    with pytest.raises(ConfigError, match="step 1: unknown plan name 'kd-t9'"):
        build_controllers(["kd-t1>kd-t9>kd-t1"], cfg.env, spaces)
    with pytest.raises(ConfigError, match=r"names teacher 3, but there are 3 teacher\(s\): use -t0 … -t2"):
        build_controllers(["frac-0.3-t3"], cfg.env, spaces)


def test_threads_default_to_one_for_tiny_cpu_students():
    import torch

    before = torch.get_num_threads()
    try:
        assert configure_threads(None, tiny_config().backend) == 1
        assert configure_threads(2, tiny_config().backend) == 2
    finally:
        torch.set_num_threads(before)


def test_seed_pool_cycles_training_seeds_and_resumes_in_step():
    import gymnasium as gym

    class Recorder(gym.Env):
        observation_space = gym.spaces.Box(0, 1, (1,))
        action_space = gym.spaces.Discrete(2)

        def __init__(self):
            self.seeds = []

        def reset(self, *, seed=None, options=None):
            self.seeds.append(seed)
            return self.observation_space.sample(), {}

    env = Recorder()
    wrapped = SeededEpisodes(env, first_seed=100, pool=3, base_seed=100)
    for _ in range(7):
        wrapped.reset(seed=12345)  # SB3's own seed is ignored
    assert env.seeds == [100, 101, 102, 100, 101, 102, 100]
    resumed = SeededEpisodes(Recorder(), first_seed=107, pool=3, base_seed=100)  # after 7 episodes
    assert resumed.seed_of(resumed.next_seed) == 101  # episode 7 of the uninterrupted run
    two = [SeededEpisodes(Recorder(), first_seed=100 + k, stride=2, pool=3, base_seed=100) for k in range(2)]
    for _ in range(3):
        for w in two:
            w.reset()
    assert [w.env.seeds for w in two] == [[100, 102, 101], [101, 100, 102]]  # episodes 0..5 over 2 envs
    assert SeededEpisodes(Recorder(), first_seed=9).seed_of(9) == 9  # no pool: seed + i
    with pytest.raises(ConfigError, match="seed_pool"):
        LearnConfig(seed_pool=0)


def test_dev_never_steers_learning(tiny_yaml, tmp_path):
    """Learning reports dev (TensorBoard, the progress bar) but the learner never sees it: the same run
    with dev sealed off (--no-report-dev: dev is never evaluated) learns the very same policy."""
    import torch

    policies = {}
    for flag in ("--report-dev", "--no-report-dev"):
        runs = tmp_path / flag.strip("-")
        cfg = parse(LearnConfig, "--config", tiny_yaml, flag, "--runs-dir", runs, "--total-episodes", "2",
                    "--baselines", "kd-t0", "--eval-seeds", "100", "--no-progress")
        learn_policy(cfg)
        lines = [json.loads(line) for line in (runs / "tiny" / "episodes.jsonl").read_text().splitlines()]
        assert any(line.get("dev_score") is not None for line in lines) == (flag == "--report-dev")
        policies[flag] = load_policy(runs / "tiny" / "policy.zip", expected_spaces(cfg.env))
    a, b = (p.policy.state_dict() for p in policies.values())
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
