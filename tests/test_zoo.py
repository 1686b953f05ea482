"""DynaKD's env under RL Baselines3 Zoo, as a Zoo user would run it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("rl_zoo3", reason='RL Baselines3 Zoo is not installed: pip install -e ".[zoo]"')

pytestmark = pytest.mark.slow  # end-to-end: scripts as subprocesses (CI runs them; -m "not slow" skips)

REPO = Path(__file__).resolve().parents[1]


def test_rl_zoo3_trains_ppo_on_the_tiny_env(tmp_path):
    logs = tmp_path / "logs"
    cmd = [sys.executable, "-m", "rl_zoo3.train", "--algo", "ppo", "--env", "DynamicKD-tiny-v0", "--gym-packages", "envs",
           "--conf-file", str(REPO / "experiments" / "configs" / "zoo_ppo.yml"), "--log-folder", str(logs),
           "--eval-freq", "-1", "--seed", "0"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = logs / "ppo" / "DynamicKD-tiny-v0_1"
    assert (run / "DynamicKD-tiny-v0.zip").is_file()  # the learned policy
    assert "total_timesteps      | 12" in proc.stdout  # the Zoo's budget from our hyperparameters file
    saved = (run / "DynamicKD-tiny-v0" / "config.yml").read_text()
    assert "n_steps" in saved and "gamma" in saved
