"""The static workflows as a user runs them: train_teachers.py then distill.py, checked by their artifacts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from kd_backend.reporting import read_scalars

pytestmark = pytest.mark.slow  # end-to-end: scripts as subprocesses (CI runs them; -m "not slow" skips)

ROOT = Path(__file__).resolve().parents[1]
GLUE = ROOT.parent / "shared" / "data" / "glue"
# From-scratch transformers need a few hundred steps before they beat chance on the synthetic rule.
TINY = ["--task", "synthetic", "--synthetic-train", "3000", "--synthetic-dev", "400", "--max-seq-length", "48",
        "--batch-size", "16", "--lr", "1e-3", "--no-progress"]


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / script), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    return proc


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("teacher") / "t"
    proc = run("train_teachers.py", *TINY, "--preset", "tiny-1x64", "--epochs", "3",
               "--cache-dir", str(out.parent / "cache"), "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_train_teachers_writes_a_loadable_model(teacher):
    model = AutoModelForSequenceClassification.from_pretrained(str(teacher))
    assert model.config.num_hidden_layers == 1 and model.config.num_labels == 2
    AutoTokenizer.from_pretrained(str(teacher))
    evals = json.loads((teacher / "dynakd_eval.json").read_text())
    assert len(evals) == 3 and evals[-1]["score"] > 0.56  # a teacher that learned something


def test_distill_improves_over_the_untrained_student_and_writes_artifacts(teacher, tmp_path):
    out = tmp_path / "run"
    proc = run("distill.py", *TINY, "--teachers", str(teacher), "--student", "tiny-1x64", "--epochs", "2",
               "--teacher-mode", "fixed", "--hidden-weight", "0.5",
               "--cache-dir", str(tmp_path / "cache"), "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["epochs"]) == 2 and set(metrics["final_dev"]) == {"accuracy"}
    untrained = metrics["untrained_dev_score"]
    assert metrics["final_dev_score"] >= untrained + 0.05, (untrained, metrics["final_dev_score"])
    assert metrics["epochs"][0]["train"]["losses"]["kd"] > 0 and metrics["epochs"][0]["train"]["losses"]["hidden"] > 0
    model = AutoModelForSequenceClassification.from_pretrained(str(out / "student"))
    assert model.config.num_hidden_layers == 1
    scalars = read_scalars(out)
    assert len(scalars["dev/score"]) == 2 and "train/loss_kd" in scalars
    assert (out / "config.yaml").exists()


@pytest.mark.skipif(not (GLUE / "SST-2" / "train.tsv").exists(), reason="needs ../shared/data/glue (SST-2)")
def test_distill_on_local_sst2_with_a_preset_teacher_trained_on_first_use(tmp_path):
    out = tmp_path / "sst2"
    proc = run("distill.py", "--task", "glue/sst2", "--data-dir", str(GLUE), "--train-limit", "400", "--dev-limit",
               "100", "--teachers", "tiny-1x64", "--teacher-epochs", "1", "--student", "tiny-1x64", "--epochs", "1",
               "--fraction", "0.3", "--scope", "batch", "--no-progress", "--cache-dir", str(tmp_path / "c"),
               "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "glue/sst2" and metrics["epochs"][0]["dev"]["num_examples"] == 100
    # the exported student is a Hugging Face classifier that answers with SST-2's label names
    from transformers import pipeline

    classify = pipeline("text-classification", model=str(out / "student"), device="cpu")
    assert classify("a gorgeous, witty film")[0]["label"] in ("negative", "positive")
    card = (out / "student" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers") and "# DynaKD student for glue/sst2" in card
    assert "| `tiny-1x64` |" in card and "30% of each batch by entropy" in card  # teachers and the schedule applied
    assert f"| dev score | {metrics['final_dev_score']:.4f} |" in card and "distill.py" in card


def test_bad_input_fails_fast_with_a_clear_message(tmp_path):
    proc = run("distill.py", "--task", "glue/nope", "--out", str(tmp_path / "x"))
    assert proc.returncode != 0 and "unknown task" in proc.stderr.lower()
    proc = run("train_teachers.py", *TINY, "--out", str(tmp_path / "y"))
    assert proc.returncode != 0 and "--preset" in proc.stderr
