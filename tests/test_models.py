"""Tokenizer training/encoding and the model helpers, on tiny models and synthetic text (CPU, offline)."""

from __future__ import annotations

import random

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertModel

from kd_backend.errors import ConfigError, DataError, HubOfflineError, ModelError
from kd_backend.models import (
    PRESETS,
    build_model,
    export_model,
    forward_flops,
    hidden_size,
    init_student_from_teacher,
    load_model,
    model_fingerprint,
    model_size,
    num_layers,
    resolve_layer_map,
)
from kd_backend.tokenization import (
    encode_texts,
    tokenizer_fingerprint,
    train_wordpiece_tokenizer,
)

WORDS = (
    "the a movie film story actor plot scene was is were truly deeply not very rather great terrible "
    "boring charming funny slow moving predictable original and but with without its this that"
).split()


def synthetic_sentences(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 14))).capitalize() + "." for _ in range(n)]


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return synthetic_sentences(300)


@pytest.fixture(scope="module")
def tokenizer(texts):
    return train_wordpiece_tokenizer(texts, vocab_size=200, model_max_length=64)


def tiny(num_labels: int = 2, preset: str = "tiny-1x64", vocab_size: int = 200, seed: int = 0):
    return build_model(preset, num_labels=num_labels, vocab_size=vocab_size, seed=seed).eval()


def logits(model, tokenizer, texts: list[str]) -> torch.Tensor:
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**batch).logits


# --- tokenization -----------------------------------------------------------------------------


def test_tokenizer_special_tokens_and_determinism(texts, tokenizer):
    assert tokenizer.convert_tokens_to_ids(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]) == [0, 1, 2, 3, 4]
    assert tokenizer.pad_token_id == 0 and len(tokenizer) <= 200
    again = train_wordpiece_tokenizer(list(texts), vocab_size=200, model_max_length=64)
    assert tokenizer_fingerprint(again) == tokenizer_fingerprint(tokenizer)
    other = train_wordpiece_tokenizer(texts, vocab_size=100, model_max_length=64)
    assert tokenizer_fingerprint(other) != tokenizer_fingerprint(tokenizer)


def test_tokenizer_rejects_bad_arguments():
    with pytest.raises(ConfigError, match="vocab_size=5"):
        train_wordpiece_tokenizer(["a b c"], vocab_size=5)
    with pytest.raises(DataError, match="no non-empty text"):
        train_wordpiece_tokenizer(["", "  "])


def test_encode_single_sentences(tokenizer, texts):
    ids, type_ids = encode_texts(tokenizer, texts[:20], None, max_seq_length=64)
    assert type_ids is None and len(ids) == 20
    for row, text in zip(ids, texts[:20]):
        assert row.dtype == np.int32
        assert row[0] == tokenizer.cls_token_id and row[-1] == tokenizer.sep_token_id
        assert 1 not in row  # every word of the training text is in the vocabulary
        assert tokenizer.decode(row, skip_special_tokens=True) == text.lower()
    assert encode_texts(tokenizer, [], None, 8) == ([], None)


def test_encode_pairs_gives_token_type_ids(tokenizer, texts):
    ids, type_ids = encode_texts(tokenizer, texts[:10], texts[10:20], max_seq_length=64)
    for row, tt, a, b in zip(ids, type_ids, texts[:10], texts[10:20]):
        assert tt.dtype == np.int8 and len(tt) == len(row)
        len_a = len(tokenizer.tokenize(a)) + 2  # [CLS] a [SEP]
        assert tt.tolist() == [0] * len_a + [1] * (len(row) - len_a)
        assert (row == tokenizer.sep_token_id).sum() == 2


def test_encode_truncates_longest_first(tokenizer):
    long_a, short_b = "the movie was great " * 30, "boring"
    ids, _ = encode_texts(tokenizer, [long_a, "the movie"], None, max_seq_length=10)
    assert [len(r) for r in ids] == [10, 4]
    assert ids[0][-1] == tokenizer.sep_token_id
    ids, type_ids = encode_texts(tokenizer, [long_a], [short_b], max_seq_length=12)
    assert len(ids[0]) == 12
    # the short second sentence survives whole: only the longer one was cut
    assert tokenizer.decode(ids[0][type_ids[0] == 1], skip_special_tokens=True) == "boring"
    with pytest.raises(ConfigError, match="max_seq_length=2"):
        encode_texts(tokenizer, ["a"], ["b"], max_seq_length=2)
    with pytest.raises(DataError, match="2 first sentences but 1 second"):
        encode_texts(tokenizer, ["a", "b"], ["c"], max_seq_length=8)


def test_tokenizer_save_reload_round_trip(tmp_path, tokenizer, texts):
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert tokenizer_fingerprint(reloaded) == tokenizer_fingerprint(tokenizer)
    assert reloaded.model_max_length == 64
    before = encode_texts(tokenizer, texts[:5], texts[5:10], 32)
    after = encode_texts(reloaded, texts[:5], texts[5:10], 32)
    for a, b in zip(before, after):
        assert all(np.array_equal(x, y) for x, y in zip(a, b))


# --- presets and sizes ------------------------------------------------------------------------


def test_presets_have_the_documented_shapes():
    shapes = {name: (p.num_layers, p.hidden_size, p.num_heads, p.intermediate_size) for name, p in PRESETS.items()}
    assert shapes == {
        "tiny-1x64": (1, 64, 2, 256),
        "tiny-2x128": (2, 128, 2, 512),
        "tiny-4x256": (4, 256, 4, 1024),
        "tiny-6x384": (6, 384, 6, 1536),
        "bert-6x768": (6, 768, 12, 3072),
        "bert-base": (12, 768, 12, 3072),
        "bert-large": (24, 1024, 16, 4096),
    }
    config = PRESETS["bert-large"].config(vocab_size=30522, num_labels=2)
    assert (config.num_hidden_layers, config.hidden_size, config.max_position_embeddings) == (24, 1024, 512)


@pytest.mark.parametrize("preset", ["tiny-1x64", "tiny-2x128", "tiny-4x256"])
def test_build_model_matches_preset(preset):
    model = build_model(preset, num_labels=3, vocab_size=100, seed=0)
    shape = PRESETS[preset]
    assert num_layers(model) == len(model.bert.encoder.layer) == shape.num_layers
    assert hidden_size(model) == model.bert.embeddings.word_embeddings.weight.shape[1] == shape.hidden_size
    assert model.classifier.out_features == 3 and model.config.problem_type == "single_label_classification"
    assert model.config._attn_implementation == "sdpa"


def test_build_model_seed_and_regression():
    state = torch.random.get_rng_state()
    assert model_fingerprint(tiny(seed=3)) == model_fingerprint(tiny(seed=3)) != model_fingerprint(tiny(seed=4))
    assert torch.equal(torch.random.get_rng_state(), state)  # seeding leaves the global RNG alone
    reg = build_model("tiny-1x64", num_labels=1, vocab_size=50, is_regression=True)
    assert reg.config.problem_type == "regression" and reg.classifier.out_features == 1
    with pytest.raises(ConfigError, match="num_labels=3"):
        build_model("tiny-1x64", num_labels=3, vocab_size=50, is_regression=True)


def test_unknown_preset_lists_presets():
    with pytest.raises(ConfigError, match="unknown model preset 'tiny-9x9'.*tiny-1x64.*bert-large"):
        build_model("tiny-9x9", num_labels=2, vocab_size=100)


def test_model_size_and_forward_flops_by_hand():
    model = tiny()
    h, i, c = 64, 256, 2
    layer = 4 * (h * h + h) + (h * i + i) + (i * h + h) + 2 * (2 * h)  # Q, K, V, O; FFN; 2 LayerNorms
    expected = 2 * h + layer + (h * h + h) + (h * c + c)  # embedding LayerNorm, 1 layer, pooler, classifier
    assert model_size(model) == expected
    flops = forward_flops(model, num_tokens=100, num_sequences=10, mean_seq_len=10.0)
    assert flops == 2 * expected * 100 + 4 * 1 * h * 10 * 10**2
    with pytest.raises(ConfigError):
        forward_flops(model, -1, 1, 1.0)


# --- layer maps and student initialisation ----------------------------------------------------


def test_default_layer_map():
    assert resolve_layer_map(2, 4) == ((1, 2), (2, 4))
    assert resolve_layer_map(6, 12) == tuple((j, 2 * j) for j in range(1, 7))
    assert resolve_layer_map(3, 4) == ((1, 1), (2, 3), (3, 4))
    assert resolve_layer_map(4, 6) == ((1, 2), (2, 3), (3, 5), (4, 6))
    assert resolve_layer_map(3, 3) == ((1, 1), (2, 2), (3, 3))


def test_explicit_layer_map_and_errors():
    assert resolve_layer_map(2, 4, [(0, 0), (2, 3)]) == ((0, 0), (2, 3))
    assert resolve_layer_map(4, 2, [(2, 1), (4, 2)]) == ((2, 1), (4, 2))  # deeper student: explicit is fine
    with pytest.raises(ModelError, match="student has 4 layers but the teacher only 2"):
        resolve_layer_map(4, 2)
    with pytest.raises(ModelError, match=r"\(1, 5\).*2-layer student and a 4-layer teacher"):
        resolve_layer_map(2, 4, [(1, 2), (1, 5)])
    with pytest.raises(ModelError, match=r"\(3, 1\)"):
        resolve_layer_map(2, 4, [(3, 1)])
    with pytest.raises(ModelError, match="empty"):
        resolve_layer_map(2, 4, [])


def assert_same_module(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize(("strategy", "copied"), [("first", (1, 2)), ("every-other", (2, 4))])
def test_student_init_copies_the_right_layers(strategy, copied):
    teacher = build_model("tiny-4x256", num_labels=2, vocab_size=120, seed=0)
    student = init_student_from_teacher(teacher, 2, strategy=strategy, num_labels=3, seed=1)
    assert type(student) is type(teacher) and num_layers(student) == len(student.bert.encoder.layer) == 2
    assert student.classifier.out_features == 3 and teacher.classifier.out_features == 2
    assert num_layers(teacher) == 4  # the teacher is untouched
    assert_same_module(student.bert.embeddings, teacher.bert.embeddings)
    assert_same_module(student.bert.pooler, teacher.bert.pooler)
    for j, t in enumerate(copied):
        assert_same_module(student.bert.encoder.layer[j], teacher.bert.encoder.layer[t - 1])
    other = next(k for k in range(4) if k + 1 not in copied)
    assert not torch.equal(
        student.bert.encoder.layer[0].output.dense.weight, teacher.bert.encoder.layer[other].output.dense.weight
    )


def test_student_init_errors():
    teacher = build_model("tiny-2x128", num_labels=2, vocab_size=50, seed=0)
    with pytest.raises(ModelError, match="2-layer teacher needs 1..2 layers, got num_layers=3"):
        init_student_from_teacher(teacher, 3)
    with pytest.raises(ConfigError, match="'every-third'"):
        init_student_from_teacher(teacher, 1, strategy="every-third")
    with pytest.raises(ModelError, match="model.bert.encoder.layer"):
        init_student_from_teacher(torch.nn.Linear(2, 2), 1)


# --- export, load and fingerprints ------------------------------------------------------------


def test_export_reload_gives_identical_logits(tmp_path, tokenizer, texts):
    model = tiny(preset="tiny-2x128", vocab_size=len(tokenizer))
    out = export_model(model, tokenizer, tmp_path / "export")
    reloaded = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert (out / "model.safetensors").is_file()
    reloaded_tok = AutoTokenizer.from_pretrained(out)
    assert torch.equal(logits(model, tokenizer, texts[:8]), logits(reloaded, reloaded_tok, texts[:8]))
    # a second export replaces the first and leaves no temporary directory behind
    other = tiny(preset="tiny-2x128", vocab_size=len(tokenizer), seed=7)
    export_model(other, tokenizer, out)
    assert model_fingerprint(AutoModelForSequenceClassification.from_pretrained(out)) == model_fingerprint(other)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_load_model_from_directory(tmp_path, tokenizer, texts):
    model = tiny(num_labels=3, vocab_size=len(tokenizer))
    out = export_model(model, tokenizer, tmp_path / "teacher")
    loaded, loaded_tok = load_model(out, num_labels=3, is_regression=False)
    assert loaded.dtype == torch.float32 and tokenizer_fingerprint(loaded_tok) == tokenizer_fingerprint(tokenizer)
    assert torch.equal(logits(model, tokenizer, texts[:4]), logits(loaded.eval(), loaded_tok, texts[:4]))


def test_load_model_label_mismatch(tmp_path, tokenizer):
    out = export_model(tiny(num_labels=3, vocab_size=len(tokenizer)), tokenizer, tmp_path / "mnli-teacher")
    with pytest.raises(ModelError, match=r"mnli-teacher was fine-tuned with 3 labels but task 'sst2' has 2.*train_"):
        load_model(out, num_labels=2, is_regression=False, task="sst2")


def test_load_model_without_head(tmp_path, tokenizer):
    encoder = BertModel(PRESETS["tiny-1x64"].config(vocab_size=len(tokenizer), num_labels=2))
    encoder.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(ModelError, match="no fine-tuned sequence-classification head"):
        load_model(tmp_path, num_labels=2, is_regression=False)
    model, _ = load_model(tmp_path, num_labels=1, is_regression=True, require_head=False)
    assert model.classifier.out_features == 1 and model.config.problem_type == "regression"
    assert torch.equal(model.bert.embeddings.word_embeddings.weight, encoder.embeddings.word_embeddings.weight)


def test_load_model_missing_config_and_presets(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelError, match="has no config.json.*model.safetensors"):
        load_model(tmp_path, num_labels=2, is_regression=False)
    with pytest.raises(ModelError, match="is a file"):
        load_model(tmp_path / "model.safetensors", num_labels=2, is_regression=False)
    with pytest.raises(ModelError, match="'tiny-1x64' is a model preset"):
        load_model("tiny-1x64", num_labels=2, is_regression=False)
    with pytest.raises(ModelError, match="runs/teachers/sst2 does not exist") as info:
        load_model(tmp_path / "runs/teachers/sst2", num_labels=2, is_regression=False)
    assert not isinstance(info.value, HubOfflineError)  # a path, never sent to the hub


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    """No cached hub models, whatever this machine's HF cache holds."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)


def test_hub_id_offline_env(monkeypatch, empty_hub_cache):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubOfflineError, match="'bert-base-uncased'.*HF_HUB_OFFLINE=1.*local checkpoint directory"):
        load_model("bert-base-uncased", num_labels=2, is_regression=False)


def test_hub_id_unreachable_host(monkeypatch, empty_hub_cache):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: connection refused at once
    with pytest.raises(HubOfflineError, match="cannot connect to 127.0.0.1:9"):
        load_model("some-org/some-model", num_labels=2, is_regression=False)


def test_model_fingerprint_tracks_weights():
    model = tiny()
    before = model_fingerprint(model)
    assert model_fingerprint(model) == before
    with torch.no_grad():
        model.bert.encoder.layer[0].output.dense.weight[0, 0] += 1e-3
    assert model_fingerprint(model) != before
    assert model_fingerprint(tiny().half()) != model_fingerprint(tiny())  # the dtype counts too
