"""The synthetic compositional sentiment task: rule, determinism, difficulty mix, noise."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression

from kd_backend.data import load_task
from kd_backend.errors import ConfigError
from kd_backend.synthetic import (
    SyntheticConfig,
    make_synthetic_task,
    positive_probability,
    rule_score,
)
from kd_backend.tasks import SYNTHETIC_TASK


@pytest.fixture(scope="module")
def default_task():
    return make_synthetic_task(SyntheticConfig())


@pytest.mark.parametrize(
    ("sentence", "score"),
    [
        ("the film is good", 1),
        ("the film is not good", -1),
        ("the film is very good", 2),
        ("the film is not very good", -2),
        ("the plot is dull and hardly funny", -2),
        ("the plot is dull , but the cast is charming", -1 + 2),
        ("the plot is very dull , but the cast is charming", 0),
        ("the plot is great even if i never cared for the genre", 1),  # a negator elsewhere does nothing
        ("the film is long", 0),
    ],
)
def test_rule_score(sentence: str, score: float) -> None:
    assert rule_score(sentence) == score


def test_positive_probability_follows_the_sharpness() -> None:
    assert positive_probability("the film is long") == pytest.approx(0.5)
    assert positive_probability("the film is good", SyntheticConfig(sharpness=2.0)) == pytest.approx(1 / (1 + np.exp(-2)))


def test_shape_and_spec(default_task) -> None:
    spec, train, dev = default_task
    assert spec == SYNTHETIC_TASK
    assert (len(train), len(dev)) == (6000, 1000)
    assert train.text_b is None and train.labels.dtype == np.int64
    lengths = [len(t.split()) for t in train.text_a + dev.text_a]
    assert 4 <= min(lengths) and max(lengths) <= 24
    vocab = {w for t in train.text_a for w in t.split()}
    assert 150 <= len(vocab) <= 300


def test_deterministic_by_seed() -> None:
    config = SyntheticConfig(num_train=300, num_dev=100)
    _, train, dev = make_synthetic_task(config)
    _, train2, dev2 = make_synthetic_task(config)
    assert train.fingerprint == train2.fingerprint and dev.fingerprint == dev2.fingerprint
    _, other, _ = make_synthetic_task(SyntheticConfig(num_train=300, num_dev=100, seed=1))
    assert other.fingerprint != train.fingerprint
    # dev comes from its own stream: it does not move when the training set grows
    assert make_synthetic_task(SyntheticConfig(num_train=50, num_dev=100))[2] == dev


def test_balanced_labels_mixed_difficulty_and_noise(default_task) -> None:
    _, train, _ = default_task
    assert 0.46 < train.labels.mean() < 0.54
    scores = np.array([rule_score(t) for t in train.text_a])
    assert 0.05 < np.mean(scores == 0) < 0.25  # ambiguous: labels are coin flips
    assert np.mean(np.abs(scores) >= 3) > 0.2  # easy: several same-polarity words
    easy = np.abs(scores) >= 4  # P(label follows the rule) > 0.997 before noise
    disagree = np.mean((scores[easy] > 0) != (train.labels[easy] == 1))
    assert 0.015 < disagree < 0.06
    _, clean, _ = make_synthetic_task(SyntheticConfig(label_noise=0.0))
    clean_scores = np.array([rule_score(t) for t in clean.text_a])
    clean_easy = np.abs(clean_scores) >= 4
    assert np.mean((clean_scores[clean_easy] > 0) != (clean.labels[clean_easy] == 1)) < 0.01


def test_bag_of_words_cannot_learn_the_rule(default_task) -> None:
    """Word counts miss negation and the 'but' clause: the rule needs interactions between words."""
    _, train, dev = default_task
    rule_accuracy = np.mean((np.array([rule_score(t) for t in dev.text_a]) > 0) == (dev.labels == 1))
    vectorizer = CountVectorizer(token_pattern=r"[^ ]+")
    model = LogisticRegression(max_iter=2000).fit(vectorizer.fit_transform(train.text_a), train.labels)
    bow_accuracy = model.score(vectorizer.transform(dev.text_a), dev.labels)
    assert rule_accuracy > 0.75
    assert bow_accuracy < rule_accuracy - 0.1


def test_load_task_carves_ctrl_out_of_train(default_task) -> None:
    config = SyntheticConfig(num_train=500, num_dev=100, seed=3)
    _, full_train, dev = make_synthetic_task(config)
    data = load_task("synthetic", synthetic=config, ctrl_fraction=0.2, seed=5)
    assert (len(data.train), len(data.ctrl)) == (400, 100)
    assert Counter(data.train.text_a) + Counter(data.ctrl.text_a) == Counter(full_train.text_a)
    assert data.dev == dev
    assert load_task("synthetic", synthetic=config, ctrl_fraction=0.2, seed=5).fingerprint == data.fingerprint
    assert load_task("synthetic", synthetic=config, ctrl_fraction=0.2, seed=6).ctrl != data.ctrl
    # without a config, the seed also seeds the generator
    assert load_task("synthetic", seed=1).dev != default_task[2]


@pytest.mark.parametrize(
    ("field", "value"),
    [("num_train", 0), ("label_noise", 1.5), ("max_words", 5), ("sharpness", 0.0), ("but_weight", float("nan"))],
)
def test_config_validation(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field):
        SyntheticConfig(**{field: value})


def test_impossible_length_range_is_an_error() -> None:
    with pytest.raises(ConfigError, match="min_words=60"):
        make_synthetic_task(SyntheticConfig(num_train=5, num_dev=5, min_words=60, max_words=70))
