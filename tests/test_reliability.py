"""Issue 11: no code runs from a policy file, no silent wrong results, bad input refused before any
work with a clear message and nothing left behind, and run state that checks itself."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import os
import pickle
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from agents import EpisodeLogger, load_agent, make_agent, read_episodes
from agents.cli import load_config_file, parse_config, save_config
from agents.configs import CONFIG_FILE, LearnConfig
from agents.learning import claim_run_dir, learn, make_learner, prepare_run_dir
from agents.spaces import SpacesOnlyEnv, expected_spaces
from agents.storage import read_policy
from envs import DistillationEnv, tiny_config
from kd_backend.errors import ConfigError
from kd_backend.pipeline import build_distiller, config_dict

REPO = Path(__file__).resolve().parents[1]



def run_script(script: str, *args: object, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(REPO / "experiments" / script), *map(str, args)]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env, **kw)


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    path = tmp_path_factory.getbasetemp() / "dynakd-tiny-cache"  # shared with test_env/test_agents
    path.mkdir(exist_ok=True)
    return tiny_config(cache_dir=str(path))


@pytest.fixture(scope="module")
def distiller(config):
    return build_distiller(config.backend)


@pytest.fixture(scope="module")
def policy_zip(config, distiller, tmp_path_factory) -> Path:
    env = DistillationEnv(config, distiller=distiller)
    path = tmp_path_factory.mktemp("policy") / "policy.zip"
    make_agent("ppo", env).save(path)
    return path


# ---------------------------------------------------------------------------------------------- security
class _Payload:
    """Unpickling this creates ``marker``: the stand-in for arbitrary code in a crafted file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _rewrite_zip(src: Path, dst: Path, change) -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            content = change(name, zin.read(name))
            if content is not None:
                zout.writestr(name, content)
    return dst


def _evil_data(marker: Path, keep_record: bool):
    evil = {":type:": "<class 'object'>", ":serialized:": base64.b64encode(pickle.dumps(_Payload(marker))).decode()}

    def change(name: str, content: bytes):
        if name != "data":
            return content
        data = json.loads(content)
        data["observation_space"] = evil  # SB3 decodes every ':serialized:' entry of data on load
        data["policy_class"] = evil
        if not keep_record:
            del data["dynakd"]
        return json.dumps(data)

    return change


def test_the_crafted_payload_is_real(policy_zip, tmp_path):
    """Guard of the tests below: SB3's own loader does run the payload of the crafted file."""
    from stable_baselines3.common.save_util import load_from_zip_file

    marker = tmp_path / "pwned"
    evil = _rewrite_zip(policy_zip, tmp_path / "evil.zip", _evil_data(marker, keep_record=True))
    load_from_zip_file(evil)
    assert marker.exists()


@pytest.mark.parametrize("keep_record", [True, False])
def test_loading_a_crafted_policy_runs_no_code(policy_zip, config, distiller, tmp_path, keep_record):
    marker = tmp_path / "pwned"
    evil = _rewrite_zip(policy_zip, tmp_path / "evil.zip", _evil_data(marker, keep_record))
    env = DistillationEnv(config, distiller=distiller)
    if keep_record:  # the pickled entries are ignored: the policy is rebuilt from the plain record and weights
        agent = load_agent(evil, env)
        obs = env.reset(seed=0)[0]
        assert agent.predict(obs, deterministic=True)[0] == load_agent(policy_zip, env).predict(obs, deterministic=True)[0]
    else:  # a file without DynaKD's record could only be opened by unpickling: refused
        with pytest.raises(ConfigError, match="has no DynaKD record.*unpickling"):
            load_agent(evil, env)
    assert not marker.exists()


def test_a_crafted_weights_entry_is_refused(policy_zip, config, distiller, tmp_path):
    marker = tmp_path / "pwned"

    def change(name: str, content: bytes):
        if name != "policy.pth":
            return content
        buf = io.BytesIO()
        torch.save({"x": _Payload(marker)}, buf)  # a torch file whose pickle runs code
        return buf.getvalue()

    evil = _rewrite_zip(policy_zip, tmp_path / "evil.zip", change)
    with pytest.raises(ConfigError, match=r"entry policy.pth is not a plain tensor file and was refused"):
        read_policy(evil)
    assert not marker.exists()


def test_scripts_refuse_a_crafted_policy_before_any_work(policy_zip, config, tmp_path):
    marker = tmp_path / "pwned"
    evil = _rewrite_zip(policy_zip, tmp_path / "evil.zip", _evil_data(marker, keep_record=False))
    cfg = tmp_path / "env.yaml"
    save_config(cfg, LearnConfig(env=config, eval_seeds=(100,)))
    out = tmp_path / "replay"
    proc = run_script("replay_schedule.py", "--config", cfg, "--policy", evil, "--out", out)
    assert proc.returncode == 1 and "has no DynaKD record" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_script("compare.py", "--config", cfg, "--controllers", "kd-t0", evil, "--out", tmp_path / "cmp")
    assert proc.returncode == 1 and "has no DynaKD record" in proc.stderr
    assert not marker.exists() and not out.exists() and not (tmp_path / "cmp").exists()
    not_a_zip = tmp_path / "junk.zip"
    not_a_zip.write_bytes(b"\x80\x04junk")
    with pytest.raises(ConfigError, match="not a readable .zip"):
        load_agent(not_a_zip, SpacesOnlyEnv(expected_spaces(config)))


def test_off_policy_resume_reads_no_pickle(config, distiller, tmp_path):
    env = DistillationEnv(config, distiller=distiller)
    length = env.steps_per_episode
    agent = make_agent("dqn", env, learning_starts=length)
    agent.learn(total_timesteps=2 * length, callback=EpisodeLogger(tmp_path / "run", checkpoint_every=1))
    folder = tmp_path / "run" / "checkpoints"
    latest = json.loads((folder / "latest.json").read_text())
    assert latest["replay_buffer"].endswith(".npz") and not list(folder.glob("*.pkl"))
    resumed = load_agent(folder / latest["model"], env)
    from agents.storage import load_replay_buffer

    load_replay_buffer(resumed.replay_buffer, folder / latest["replay_buffer"])
    assert resumed.replay_buffer.pos == agent.replay_buffer.pos
    np.testing.assert_array_equal(resumed.replay_buffer.observations, agent.replay_buffer.observations)
    assert resumed.exploration_rate == pytest.approx(agent.exploration_rate)
    for a, b in zip(resumed.policy.parameters(), agent.policy.parameters()):
        torch.testing.assert_close(a, b)
    (folder / "old-replay.pkl").write_bytes(b"x")
    with pytest.raises(ConfigError, match="not a DynaKD .npz buffer"):
        load_replay_buffer(resumed.replay_buffer, folder / "old-replay.pkl")


# ---------------------------------------------------------------------------------------------- resume = uninterrupted
def _learn(cfg: LearnConfig, env: DistillationEnv) -> list[dict]:
    run_dir = prepare_run_dir(cfg)
    claim_run_dir(cfg)
    save_config(run_dir / CONFIG_FILE, dataclasses.replace(cfg, resume=None))
    agent, done = make_learner(cfg, env, run_dir)
    learn(agent, cfg, run_dir, done, show_progress=False)
    return read_episodes(run_dir / "episodes.jsonl"), agent


def test_a_resumed_run_is_the_run_it_would_have_been(config, distiller, tmp_path):
    env = DistillationEnv(config, distiller=distiller)
    base = LearnConfig(env=config, runs_dir=str(tmp_path), total_episodes=4, rollout_episodes=2,
                       checkpoint_every=2, eval_seeds=(100,))
    whole, whole_agent = _learn(dataclasses.replace(base, name="whole"), env)
    _learn(dataclasses.replace(base, name="split", total_episodes=2), env)
    split, split_agent = _learn(dataclasses.replace(base, name="split", resume=str(tmp_path / "split")), env)

    def key(lines):
        return [(x["episode"], x["step"], x["seed"], json.dumps(x["plan"]), x["reward"]) for x in lines]

    assert len(whole) == len(split) == 4 * env.steps_per_episode
    assert key(split) == key(whole)  # the same actions after the resume: the sampling RNG was restored
    for a, b in zip(split_agent.policy.parameters(), whole_agent.policy.parameters()):
        torch.testing.assert_close(a, b)


# ---------------------------------------------------------------------------------------------- numeric knobs
def _flat(text: str) -> str:
    """tyro's boxed error message as one line (box borders and wrapping removed)."""
    return " ".join(text.replace("│", " ").replace("╭", " ").replace("╰", " ").split())


KNOBS = [  # (flag, bad value, message); one or more per class of knob
    # counts
    ("--batch-size", "0", "DistillerConfig.batch_size=0 is out of range: must be an integer in [1, inf)"),
    ("--epochs", "-2", "DistillerConfig.epochs=-2 is out of range: must be an integer in [1, inf)"),
    ("--teacher-epochs", "0", "BackendConfig.teacher_epochs=0 is out of range: must be an integer in [1, inf)"),
    ("--horizon", "0", "EnvConfig.horizon=0 is out of range: must be an integer in [1, inf) or None"),
    ("--total-episodes", "0", "LearnConfig.total_episodes=0 is out of range: must be an integer in [1, inf)"),
    ("--train-limit", "0", "BackendConfig.train_limit=0 is out of range: must be an integer in [1, inf) or None"),
    ("--vocab-size", "10", "BackendConfig.vocab_size=10 is out of range: must be an integer in [100, inf)"),
    # seeds
    ("--seed", "-1", "DistillerConfig.seed=-1 is out of range: must be an integer in [0, 4.29497e+09]"),
    ("--agent-seed", "-1", "LearnConfig.agent_seed=-1 is out of range"),
    ("--data-seed", "-3", "BackendConfig.data_seed=-3 is out of range"),
    # positive reals: a negative clip factor trains the loss up, 0 zeroes every gradient
    ("--max-grad-norm", "-1", "DistillerConfig.max_grad_norm=-1.0 is out of range: must be a finite number in (0, inf)"),
    ("--max-grad-norm", "0", "DistillerConfig.max_grad_norm=0.0 is out of range: must be a finite number in (0, inf)"),
    ("--max-grad-norm", "nan", "DistillerConfig.max_grad_norm=nan is out of range"),
    ("--lr", "inf", "DistillerConfig.lr=inf is out of range: must be a finite number in (0, inf)"),
    ("--teacher-lr", "-5e-4", "BackendConfig.teacher_lr=-0.0005 is out of range"),
    ("--learning-rate", "nan", "LearnConfig.learning_rate=nan is out of range: must be a finite number in (0, inf) or None"),
    ("--temperature", "0", "EnvConfig.temperature=0.0 must be finite and > 0"),
    # non-negative reals
    ("--weight-decay", "-0.1", "DistillerConfig.weight_decay=-0.1 is out of range: must be a finite number in [0, inf)"),
    ("--cost-weight", "-1", "EnvConfig.cost_weight=-1.0 must be a finite number >= 0"),
    # fractions
    ("--ctrl-fraction", "1.5", "BackendConfig.ctrl_fraction=1.5 is out of range: must be a finite number in (0, 1)"),
    ("--ctrl-fraction", "nan", "BackendConfig.ctrl_fraction=nan is out of range"),
    ("--warmup-ratio", "1", "DistillerConfig.warmup_ratio=1.0 is out of range: must be a finite number in [0, 1)"),
    ("--r-min", "0", "EnvConfig.r_min=0.0 is out of range: must be a finite number in (0, 1]"),
]


@pytest.mark.parametrize("flag, value, message", KNOBS, ids=[f"{f}={v}" for f, v, _ in KNOBS])
def test_every_numeric_knob_is_range_checked_at_parse_time(flag, value, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_config(LearnConfig, None, [flag, value, "--runs-dir", str(tmp_path)])
    assert exit_info.value.code == 2
    assert message in _flat(capsys.readouterr().err)
    assert not list(tmp_path.iterdir())


def test_a_bad_knob_in_a_config_file_is_named(tmp_path):
    cfg = tmp_path / "bad.yaml"
    data = config_dict(LearnConfig())
    data["env"]["backend"]["max_grad_norm"] = -1
    import yaml

    cfg.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"DistillerConfig.max_grad_norm=-1 is out of range"):
        load_config_file(LearnConfig, cfg)


@pytest.mark.parametrize("script, extra, value", [
    ("distill.py", ["--out"], "-1"), ("distill.py", ["--out"], "0"), ("learn_policy.py", ["--runs-dir"], "-1"),
    ("replay_schedule.py", ["--schedule", "s.json", "--out"], "0"),
])
def test_scripts_refuse_a_bad_max_grad_norm_and_write_nothing(script, extra, value, tmp_path):
    out = tmp_path / "out"
    proc = run_script(script, "--max-grad-norm", value, *extra, out)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"max_grad_norm={float(value)} is out of range: must be a finite number in (0, inf)" in _flat(proc.stderr)
    assert not out.exists()


# ---------------------------------------------------------------------------------------------- run folders
@pytest.fixture(scope="module")
def small_run(config, tmp_path_factory) -> Path:
    """A finished learning run of 2 episodes, written by learn_policy.py."""
    runs = tmp_path_factory.mktemp("runs")
    cfg = LearnConfig(env=config, name="small", runs_dir=str(runs), total_episodes=2, rollout_episodes=1,
                      checkpoint_every=1, eval_seeds=(100,), baselines=("kd-t0",))
    path = runs / "small.yaml"
    save_config(path, cfg)
    proc = run_script("learn_policy.py", "--config", path, "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return runs / "small"


@pytest.mark.parametrize("flags, message", [
    (["--total-episodes", "1"], "the run has already finished 2 episodes; pass --total-episodes 2 or more"),
    (["--lr", "0.5"], "would change what the run learns with (env.backend.lr: 0.002 -> 0.5)"),
    (["--algo", "a2c"], "would change what the run learns with (algo: 'ppo' -> 'a2c')"),
    (["--overwrite"], "continues the run and --overwrite deletes it"),
])
def test_contradictory_resume_flags_are_refused(small_run, flags, message):
    before = {p: p.read_bytes() for p in small_run.rglob("*") if p.is_file() and p.name != ".dynakd.lock"}
    proc = run_script("learn_policy.py", "--resume", small_run, *flags)
    assert proc.returncode == 1 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    after = {p: p.read_bytes() for p in small_run.rglob("*") if p.is_file() and p.name != ".dynakd.lock"}
    assert after == before  # config.yaml (total_episodes 2) and every artifact untouched


def test_a_run_in_use_is_not_resumed_by_a_second_process(small_run):
    from kd_backend.locking import LOCK_FILE, FolderLock

    config_before = (small_run / "config.yaml").read_text()
    with FolderLock(small_run / LOCK_FILE):  # this process owns the run, as a live learn_policy.py would
        proc = run_script("learn_policy.py", "--resume", small_run)
        assert proc.returncode == 1, proc.stderr[-2000:]
        assert f"{small_run} is in use by another process (pid {os.getpid()}" in proc.stderr
    assert (small_run / "config.yaml").read_text() == config_before
    released = run_script("learn_policy.py", "--resume", small_run, "--no-progress")  # free again: resumes (nothing left to learn)
    assert released.returncode == 0, released.stderr[-2000:]


def test_distill_and_replay_refuse_an_existing_out_unless_overwrite(small_run, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    cfg = small_run / "config.yaml"
    proc = run_script("distill.py", "--task", "synthetic", "--out", out)
    assert proc.returncode == 1 and "already holds results (metrics.json); pass --overwrite" in proc.stderr
    proc = run_script("replay_schedule.py", "--config", cfg, "--schedule", small_run / "best_schedule.json", "--out", out)
    assert proc.returncode == 1 and "already holds results (metrics.json); pass --overwrite" in proc.stderr
    assert [p.name for p in out.iterdir()] == ["metrics.json"] and (out / "metrics.json").read_text() == "{}"
    proc = run_script("replay_schedule.py", "--config", cfg, "--schedule", small_run / "best_schedule.json", "--out", out,
                      "--overwrite", "--no-progress")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((out / "metrics.json").read_text())["mode"] == "open loop" and (out / "config.yaml").exists()


@pytest.mark.parametrize("script, flags", [
    ("distill.py", ["--task", "synthetic", "--out", "{file}/out"]),
    ("distill.py", ["--task", "synthetic", "--cache-dir", "{file}/cache", "--out", "{tmp}/out"]),
    ("learn_policy.py", ["--runs-dir", "{file}/runs"]),
    ("compare.py", ["--controllers", "kd-t0", "--out", "{file}/cmp"]),
    ("train_teachers.py", ["--task", "synthetic", "--preset", "tiny-2x128", "--out", "{file}/teachers"]),
])
def test_an_unusable_output_or_cache_folder_is_a_message_not_a_traceback(script, flags, tmp_path):
    """Every script, one exit status for the same class of error (1), the path named, the fix said."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    args = [f.format(file=blocker, tmp=tmp_path) for f in flags]
    proc = run_script(script, *args)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert str(blocker) in proc.stderr and "a file stands where a folder is expected" in proc.stderr
    assert blocker.read_text() == "not a folder" and not (tmp_path / "out").exists()


def test_distill_checks_its_inputs_before_writing(tmp_path):
    out = tmp_path / "out"
    proc = run_script("distill.py", "--task", "synthetic", "--teachers", tmp_path / "no-such-teacher",
                      "--cache-dir", tmp_path / "cache", "--out", out)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "no-such-teacher" in proc.stderr
    assert not out.exists()  # no config.yaml before the inputs were checked


def test_ctrl_c_during_learning_prints_the_resume_command(config, tmp_path):
    import signal
    import time

    cfg = LearnConfig(env=config, name="ctrlc", runs_dir=str(tmp_path), total_episodes=40, rollout_episodes=2,
                      checkpoint_every=2, eval_seeds=(100,), baselines=("kd-t0",))
    path = tmp_path / "c.yaml"
    save_config(path, cfg)
    run = tmp_path / "ctrlc"
    cmd = [sys.executable, str(REPO / "experiments" / "learn_policy.py"), "--config", str(path), "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if (run / "checkpoints" / "latest.json").exists() and sum(x["done"] for x in read_episodes(run / "episodes.jsonl")) >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    assert "learning episodes finished in" in err and "the last checkpoint covers 2" in err and f"continue with: python experiments/learn_policy.py --resume {run}" in err
    assert not (run / "policy.zip").exists() and (run / "checkpoints" / "latest.json").exists()


# ---------------------------------------------------------------------------------------------- custom files
TREC = Path("/work/shared/data/text/TREC") if Path("/work/shared/data/text/TREC").is_dir() else REPO.parent / "shared" / "data" / "text" / "TREC"
needs_trec = pytest.mark.skipif(not (TREC / "train.tsv").exists(), reason="needs shared/data/text/TREC")


@needs_trec
def test_custom_file_columns_and_dev_file_are_config_fields():
    from kd_backend.config import BackendConfig
    from kd_backend.pipeline import load_task_data

    with pytest.raises(Exception, match=r"no column 'label'.*Pass --label-column") as err:
        load_task_data(BackendConfig(task=str(TREC / "train.tsv")))
    help_text = run_script("distill.py", "--help").stdout
    for flag in ("--label-column", "--text-columns", "--dev-file", "--task"):  # every flag a message names exists
        assert flag in help_text
    assert "--train-file" not in str(err.value)
    cfg = BackendConfig(task=str(TREC / "train.tsv"), label_column="coarse", text_columns=("text",),
                        ctrl_rule="dev-length")  # no row dropped: every one is accounted for
    data = load_task_data(cfg)
    assert data.spec.num_labels == 6 and data.spec.label_column == "coarse" and not data.train.is_pair
    assert len(data.train) + len(data.ctrl) + len(data.dev) == 5452 and len(data.dev) == 545  # seeded 10% as dev
    # the default rule drops exactly the training questions that share text with a ctrl question
    from kd_backend.data import overlaps_ctrl

    unseen = load_task_data(dataclasses.replace(cfg, ctrl_rule="unseen"))
    dropped = int(overlaps_ctrl(data.train, data.ctrl).sum())
    assert unseen.ctrl == data.ctrl and 0 < dropped < 20 and len(unseen.train) == len(data.train) - dropped
    again = load_task_data(cfg)
    assert again.dev.fingerprint == data.dev.fingerprint  # the same seed: the same dev split
    assert load_task_data(dataclasses.replace(cfg, data_seed=1)).dev.fingerprint != data.dev.fingerprint
    with_dev = load_task_data(dataclasses.replace(cfg, dev_file=str(TREC / "test.tsv")))
    assert len(with_dev.dev) == 500 and len(with_dev.train) + len(with_dev.ctrl) == 5452
    with pytest.raises(ConfigError, match=r"\['text_columns', 'label_column'\] only apply to custom files"):
        load_task_data(BackendConfig(task="synthetic", label_column="coarse", text_columns=("text",)))


@needs_trec
def test_distill_on_the_trec_file_from_the_command_line(tmp_path):
    out = tmp_path / "trec"
    proc = run_script("distill.py", "--task", TREC / "train.tsv", "--label-column", "coarse", "--text-columns", "text",
                      "--dev-file", TREC / "test.tsv", "--train-limit", "300", "--dev-limit", "100",
                      "--teachers", "tiny-1x64", "--teacher-epochs", "1", "--student", "tiny-1x64", "--epochs", "1",
                      "--vocab-size", "500", "--max-seq-length", "32", "--no-progress",
                      "--cache-dir", tmp_path / "cache", "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "custom" and metrics["epochs"][0]["dev"]["num_examples"] == 100
    import yaml

    saved = yaml.safe_load((out / "config.yaml").read_text())["backend"]
    assert saved["label_column"] == "coarse" and saved["text_columns"] == ["text"]
    assert saved["dev_file"] == str(TREC / "test.tsv")


# ---------------------------------------------------------------------------------------------- cache state
def test_cache_entries_are_built_once_and_stale_temp_files_removed(tmp_path):
    import threading

    from kd_backend.cache import TeacherOutputs, load_or_build
    from kd_backend.locking import FolderLock

    stale = tmp_path / "k1.safetensors12345.tmp"
    stale.write_bytes(b"half a file")  # what a SIGKILL during a cache write leaves
    builds = []

    def build():
        builds.append(1)
        return TeacherOutputs(torch.ones(4, 2), None)

    held = FolderLock(tmp_path / "k1.lock")  # another process is building this entry right now
    result = {}
    waiter = threading.Thread(target=lambda: result.update(out=load_or_build(tmp_path, "k1", build, 4, {})))
    waiter.start()
    waiter.join(timeout=1.0)
    assert waiter.is_alive() and not builds  # it waits instead of building too
    held.release()
    waiter.join(timeout=30)
    assert builds == [1] and result["out"][1] is True and not stale.exists()
    outputs, built = load_or_build(tmp_path, "k1", build, 4, {})
    assert built is False and builds == [1] and torch.equal(outputs.logits, torch.ones(4, 2))  # reused


def test_a_teacher_output_file_is_tied_to_its_key_and_the_runs_shapes(tmp_path, caplog):
    import shutil

    from kd_backend.cache import TeacherOutputs, load_or_build

    made = []

    def build(cols=2):
        made.append(cols)
        return TeacherOutputs(torch.full((4, cols), float(len(made))), None)

    load_or_build(tmp_path, "teacher-a", build, 4, {})
    load_or_build(tmp_path, "teacher-b", build, 4, {})
    # a valid file of another teacher copied under this key: refused by its recorded key, rebuilt
    shutil.copy(tmp_path / "teacher-a.safetensors", tmp_path / "teacher-b.safetensors")
    with caplog.at_level("WARNING"):
        out, built = load_or_build(tmp_path, "teacher-b", build, 4, {})
    assert built and "written for key 'teacher-a'" in caplog.text and torch.equal(out.logits, torch.full((4, 2), 3.0))
    # a file of the right key but not the shape the run needs (another head, hidden states missing)
    caplog.clear()
    with caplog.at_level("WARNING"):
        _, built = load_or_build(tmp_path, "teacher-b", lambda: build(3), 4, {}, shapes={"logits": (4, 3)})
    assert built and "the run needs (4, 3)" in caplog.text
    _, built = load_or_build(tmp_path, "teacher-b", lambda: build(3), 4, {}, shapes={"logits": (4, 3)})
    assert not built
    caplog.clear()
    with caplog.at_level("WARNING"):
        _, built = load_or_build(tmp_path, "teacher-b", lambda: build(3), 4, {}, shapes={"logits": (4, 3), "hidden": (4, 1, 8)})
    assert built and "holds hidden of shape None" in caplog.text


def test_a_cached_teacher_that_changed_on_disk_is_fine_tuned_again(tmp_path, caplog):
    from envs import tiny_backend
    from kd_backend.io import INTEGRITY_FILE, check_integrity
    from kd_backend.pipeline import load_task_data, load_teacher

    cfg = tiny_backend(cache_dir=str(tmp_path))
    task = load_task_data(cfg)
    name = cfg.teachers[0]
    teacher = load_teacher(name, cfg, task)
    (folder,) = [p for p in (tmp_path / "models").iterdir() if p.is_dir()]
    assert check_integrity(folder) == [] and (folder / INTEGRITY_FILE).exists()
    weights = folder / "model.safetensors"
    before = torch.cat([p.detach().flatten() for p in teacher.model.parameters()])
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF  # a flipped byte in the last weight: the file still loads, with other outputs
    weights.write_bytes(bytes(data))
    assert check_integrity(folder) == ["changed: model.safetensors"]
    with caplog.at_level("INFO"):
        again = load_teacher(name, cfg, task)
    assert "fails its integrity check (changed: model.safetensors)" in caplog.text
    assert "fine-tuning teacher" in caplog.text and check_integrity(folder) == []
    after = torch.cat([p.detach().flatten() for p in again.model.parameters()])
    assert torch.equal(before, after)  # the same seeded recipe, fine-tuned again: the original teacher
    # a folder cached by an older DynaKD (no record) gets one on first use, and is checked from then on
    (folder / INTEGRITY_FILE).unlink()
    caplog.clear()
    with caplog.at_level("INFO"):
        load_teacher(name, cfg, task)
    assert "recorded the checksums" in caplog.text and check_integrity(folder) == []


# ---------------------------------------------------------------------------------------------- data that parses wrongly
def _write_tsv(path, rows, header=("label", "text")):
    path.write_text("\t".join(header) + "\n" + "".join("\t".join(map(str, r)) + "\n" for r in rows), encoding="utf-8")
    return path


def _sentences(n, offset=0):
    words = ["good", "bad", "film", "plot", "actor", "scene", "music", "story", "dull", "fine"]
    return [" ".join(words[(i * 7 + j * 3 + offset) % 10] for j in range(3 + i % 5)) + f" {i + offset}" for i in range(n)]


def test_swapped_label_and_text_columns_are_refused_by_name(tmp_path):
    from kd_backend.data import load_task
    from kd_backend.errors import DataError

    rows = [(i % 2, t) for i, t in enumerate(_sentences(300))]
    path = _write_tsv(tmp_path / "data.tsv", rows)
    with pytest.raises(DataError, match=r"label column 'text' holds \d+ distinct values among \d+ rows.*--label-column"):
        load_task(str(path), label_column="text", text_columns=("label",))
    with pytest.raises(DataError, match=r"text column 'label' holds only 2 distinct values.*--text-columns"):
        load_task(str(path), text_columns=("label",), label_column="label")
    assert len(load_task(str(path)).train) > 200  # the right columns load


def test_mojibake_leaks_and_missing_classes_are_warned_about_by_name(tmp_path, caplog):
    from kd_backend.data import load_task

    texts = _sentences(300)
    # a UTF-8 file whose accented words were decoded as Latin-1 somewhere upstream
    rows = [(i % 2, t + (" cafÃ© rÃ©sumÃ©" if i % 10 == 0 else "")) for i, t in enumerate(texts)]
    train = _write_tsv(tmp_path / "train.tsv", rows)
    dev = _write_tsv(tmp_path / "dev.tsv", [(i % 3, t) for i, t in enumerate(texts[:40])])  # leaked, and class 2
    with caplog.at_level("WARNING"):
        load_task(str(train), dev_file=str(dev))
    assert "replacement character or mojibake" in caplog.text and "re-save it as UTF-8" in caplog.text
    assert "also appear in train" in caplog.text
    assert "dev holds class(es) ['2'] that no training row has" in caplog.text
    caplog.clear()
    clean = _write_tsv(tmp_path / "clean.tsv", [(i % 2, t) for i, t in enumerate(texts)])
    with caplog.at_level("WARNING"):
        load_task(str(clean))
    assert caplog.text == ""  # a clean file is not warned about


@pytest.mark.parametrize("bad, message", [
    ("{tmp}/teachers/missing", "teacher folder '{tmp}/teachers/missing' does not exist"),
    ("{tmp}/not-a-model", "is not a model folder (no config.json in it)"),
])
def test_a_bad_later_teacher_is_refused_before_the_first_is_fine_tuned(bad, message, tmp_path):
    from envs import tiny_backend
    from kd_backend.pipeline import build_distiller

    (tmp_path / "teachers").mkdir()
    (tmp_path / "not-a-model").mkdir()
    cache = tmp_path / "cache"
    cfg = tiny_backend(cache_dir=str(cache))
    cfg = dataclasses.replace(cfg, teachers=(cfg.teachers[0], bad.format(tmp=tmp_path)))
    with pytest.raises(ConfigError, match=re.escape(message.format(tmp=tmp_path))):
        build_distiller(cfg)
    assert not (cache / "models").exists()  # the good first teacher was not fine-tuned for nothing
