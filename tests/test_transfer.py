"""Transfer sets: unlabelled training rows that KD learns from and CE never sees."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from kd_backend.config import BackendConfig
from kd_backend.data import UNLABELLED, TaskData, load_task
from kd_backend.errors import ConfigError, DataError
from kd_backend.pipeline import build_distiller, load_task_data
from kd_backend.plan import EpochPlan
from kd_backend.synthetic import SyntheticConfig

GLUE_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "glue"


def test_synthetic_transfer_rows_are_new_unlabelled_sentences():
    plain = load_task("synthetic", synthetic=SyntheticConfig(num_train=300, num_dev=50), ctrl_fraction=0.2)
    task = load_task("synthetic", synthetic=SyntheticConfig(num_train=300, num_dev=50), ctrl_fraction=0.2, transfer=100)
    n = len(plain.train)
    assert len(task.train) == n + 100 and task.train.labelled.sum() == n
    assert task.train.text_a[:n] == plain.train.text_a and task.ctrl == plain.ctrl and task.dev == plain.dev
    assert (task.train.labels[n:] == UNLABELLED).all() and task.ctrl.labelled.all()
    assert not set(task.train.text_a[n:]) & set(plain.train.text_a) - {""}  # an independent stream (few repeats)


@pytest.mark.skipif(not GLUE_DIR.is_dir(), reason=f"GLUE data folder {GLUE_DIR} not found")
def test_file_transfer_rows_come_from_rows_left_unused(tmp_path):
    task = load_task("glue/sst2", str(GLUE_DIR), train_limit=300, dev_limit=50, transfer=200, ctrl_max=100)
    labelled = set(np.asarray(task.train.text_a)[task.train.labelled]) | set(task.ctrl.text_a)
    transfer = np.asarray(task.train.text_a)[~task.train.labelled]
    assert len(transfer) == 200 and not labelled & set(transfer)
    with pytest.raises(ConfigError, match="left beyond train_limit; lower transfer or train_limit"):
        load_task("glue/sst2", str(GLUE_DIR), transfer=10)  # no train_limit: no row is unused


def test_only_train_may_hold_unlabelled_rows():
    task = load_task("synthetic", synthetic=SyntheticConfig(num_train=100, num_dev=20), transfer=10)
    with pytest.raises(DataError, match="dev split has unlabelled rows"):
        TaskData(task.spec, task.train, task.ctrl, task.dev.unlabelled())


def test_kd_trains_on_transfer_rows_and_ce_never_sees_them(tmp_path):
    cfg = BackendConfig(
        synthetic_train=200, synthetic_dev=40, ctrl_fraction=0.2, transfer=96, teachers=("tiny-1x64",),
        teacher_epochs=1, epochs=1, batch_size=16, max_seq_length=24, vocab_size=300, device="cpu",
        cache_dir=str(tmp_path), progress=False,
    )
    task = load_task_data(cfg)
    distiller = build_distiller(cfg, task)
    labelled = int(task.train.labelled.sum())
    distiller.reset(0)
    ce_only = distiller.train_epoch(EpochPlan(kd_weight=0.0))
    assert ce_only.examples_trained == labelled  # a plan without a teacher skips the transfer rows
    # the compute unit is a full epoch over every row: KD costs ~1, CE-only (labelled rows only) less
    distiller.reset(0)
    kd = distiller.train_epoch(EpochPlan())
    assert kd.examples_trained == len(task.train)
    assert kd.student_flops / distiller.full_epoch_flops == pytest.approx(1.0, rel=0.02)
    assert ce_only.student_flops / distiller.full_epoch_flops < 0.8
    # CE on a batch of only transfer rows is exactly 0 (masked), KD is not
    distiller.reset(0)
    rows = np.flatnonzero(~task.train.labelled)[:16]
    captured = {}
    original = distiller._check_finite
    distiller._check_finite = lambda total, terms: captured.update(terms or {}) or original(total, terms)
    distiller._train_step(EpochPlan(), rows, __import__("kd_backend.distiller", fromlist=["_Accumulator"])._Accumulator(1))
    assert float(captured["ce"]) == 0.0 and float(captured["kd"]) > 0.0
    assert torch.isfinite(captured["total"])
