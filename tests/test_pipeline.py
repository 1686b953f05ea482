"""The flat run config: one definition per optimisation knob, and a YAML round trip."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path

import pytest
import yaml

from kd_backend.config import BackendConfig, DistillerConfig
from kd_backend.errors import ConfigError
from kd_backend.pipeline import config_dict


def test_backend_config_carries_every_distiller_knob():
    cfg = BackendConfig(lr=5e-4, max_grad_norm=0.5, eval_batch_size=64, layer_map=[(1, 2)], finite_check_every=10)
    dc = cfg.distiller_config()
    assert type(dc) is DistillerConfig
    assert {f.name for f in dataclasses.fields(DistillerConfig)} <= {f.name for f in dataclasses.fields(BackendConfig)}
    assert (dc.lr, dc.max_grad_norm, dc.eval_batch_size, dc.layer_map, dc.finite_check_every) == (
        5e-4, 0.5, 64, ((1, 2),), 10,
    )
    assert dc.progress is True  # the scripts' default, unlike a bare DistillerConfig's


def test_backend_config_validates_inherited_fields():
    with pytest.raises(ConfigError, match="DistillerConfig.lr"):
        BackendConfig(lr=-1.0)
    with pytest.raises(ConfigError, match="student_init"):
        BackendConfig(student_init="middle")
    with pytest.raises(ConfigError, match=r"ctrl_rule='dev_length' must be one of \['unseen', 'dev-length', 'random'\]"):
        BackendConfig(ctrl_rule="dev_length")  # caught at config time, not when the data loads


def test_ctrl_rule_help_lists_its_choices(capsys, monkeypatch):
    import tyro

    from agents.configs import CompareConfig

    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit):
        tyro.cli(CompareConfig, args=["--help"])
    assert "--ctrl-rule {unseen,dev-length,random}" in capsys.readouterr().out


def test_config_dict_is_yaml_safe_and_round_trips():
    cfg = BackendConfig(teachers=("tiny-1x64", "tiny-2x128"), layer_map=((1, 2), (2, 4)))
    text = yaml.safe_dump(config_dict(cfg), sort_keys=False)
    assert BackendConfig(**yaml.safe_load(text)) == cfg


def test_fine_tune_warns_when_the_model_learned_nothing(tmp_path, caplog, monkeypatch):
    from kd_backend.data import load_task
    from kd_backend.models import build_model
    from kd_backend.pipeline import fine_tune
    from kd_backend.synthetic import SyntheticConfig
    from kd_backend.tokenization import train_wordpiece_tokenizer

    task = load_task("synthetic", synthetic=SyntheticConfig(num_train=200, num_dev=60, seed=1))
    tok = train_wordpiece_tokenizer(task.train.text_a, vocab_size=300)
    cfg = DistillerConfig(epochs=1, batch_size=16, lr=1e-9, cache_dir=str(tmp_path), device="cpu", warmup_ratio=0.5)
    with caplog.at_level("WARNING", logger="kd_backend.pipeline"):
        _, evals = fine_tune(task, lambda s: build_model("tiny-1x64", 2, len(tok), seed=s), tok, cfg, tmp_path / "m")
    assert "no better than predicting a constant" in caplog.text and "another learning rate (lr=1e-09" in caplog.text
    assert "--teacher-lr / --teacher-epochs" in caplog.text and "--lr / --epochs for train_teachers.py" in caplog.text
    # the flags it names exist: the KD scripts' config fields and train_teachers.py's arguments
    assert {"teacher_lr", "teacher_epochs"} <= {f.name for f in dataclasses.fields(BackendConfig)}
    spec = importlib.util.spec_from_file_location("train_teachers", Path(__file__).parents[1] / "experiments" / "train_teachers.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "train_teachers", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    assert {"lr", "epochs"} <= {f.name for f in dataclasses.fields(module.TrainArgs)}
    assert (tmp_path / "m" / "dynakd_eval.json").exists()


def test_a_cached_teacher_that_learned_nothing_is_flagged_on_every_load(tmp_path, caplog):
    import json

    from kd_backend.data import load_task
    from kd_backend.metrics import constant_score
    from kd_backend.pipeline import warn_if_teacher_learned_nothing
    from kd_backend.synthetic import SyntheticConfig

    task = load_task("synthetic", synthetic=SyntheticConfig(num_train=50, num_dev=60, seed=1))
    floor = constant_score(task.spec, task.dev.labels)  # the majority class's accuracy
    assert 0.5 <= floor < 1.0
    for score, expected in ((floor, True), (floor + 0.004, True), (floor + 0.02, False)):
        (tmp_path / "dynakd_eval.json").write_text(json.dumps([{"score": 0.9}, {"score": score}]))
        with caplog.at_level("WARNING", logger="kd_backend.pipeline"):
            caplog.clear()
            assert warn_if_teacher_learned_nothing(tmp_path, task, "minilm-l3") is expected
        assert ("no better than predicting a constant" in caplog.text) is expected
        if expected:
            assert "minilm-l3" in caplog.text and "--teacher-lr" in caplog.text
    (tmp_path / "dynakd_eval.json").unlink()
    assert warn_if_teacher_learned_nothing(tmp_path, task, "minilm-l3") is False  # no record: nothing to say
