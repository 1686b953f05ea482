"""A built-in binary sentiment task whose label follows a compositional rule.

Sentences look like short movie reviews (``the plot of the film is not very funny , but the cast
is charming``). Their label is drawn from a rule that a bag of words cannot express:

* a sentiment word carries a polarity of +1 or -1;
* an intensifier right before it doubles it (``very funny`` = +2);
* a negator right before the word or its intensifier flips it (``not very funny`` = -2); negators
  elsewhere (``i never expected ...``) do nothing;
* the clause after ``but`` counts ``but_weight`` times (default twice);
* ``P(positive) = sigmoid(sharpness * total)``, then a uniform ``label_noise`` flips labels.

Instances vary in difficulty: sentences with several same-polarity words are easy, sentences whose
total is near 0 have labels close to a coin flip, and a few labels are plain noise. Seeing that a
sentiment word is negated, and on which side of ``but`` it stands, needs attention across words,
so a small one-layer student is clearly beaten by a deeper one, and the student's uncertainty is
informative for data selection. :func:`rule_score` recomputes the rule's total from any sentence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from kd_backend.errors import ConfigError
from kd_backend.splits import TextSplit
from kd_backend.tasks import SYNTHETIC_TASK, TaskSpec

POSITIVE_WORDS = (
    "good", "great", "excellent", "wonderful", "brilliant", "charming", "delightful", "superb",
    "lovely", "enjoyable", "fun", "moving", "clever", "funny", "beautiful", "gripping", "fresh",
    "engaging", "solid", "smart", "touching", "stunning", "fantastic", "memorable", "witty", "warm",
    "inspired", "compelling", "pleasant", "terrific",
)  # fmt: skip
NEGATIVE_WORDS = (
    "bad", "awful", "terrible", "boring", "dull", "weak", "poor", "tedious", "bland", "clumsy",
    "messy", "lazy", "flat", "stale", "silly", "painful", "forgettable", "annoying", "predictable",
    "shallow", "sloppy", "horrible", "dreadful", "lifeless", "tiresome", "mediocre",
    "disappointing", "confusing", "cheap", "ugly",
)  # fmt: skip
NEGATORS = ("not", "never", "hardly")
INTENSIFIERS = ("very", "really", "truly", "extremely", "incredibly", "remarkably", "so")
CONTRAST = "but"

_DETERMINERS = ("the", "this", "that", "its", "the", "the")
_NOUNS = (
    "film", "movie", "plot", "story", "acting", "cast", "script", "score", "ending", "director",
    "pacing", "dialogue", "soundtrack", "humor", "premise", "performance", "sequel", "camera work",
    "lead", "villain", "hero", "editing", "visuals", "music", "finale", "opening", "screenplay",
    "production", "setting", "romance", "mystery", "comedy", "drama", "documentary", "animation",
)  # fmt: skip
_VERBS = ("is", "was", "feels", "seems", "looks", "remains", "sounds", "felt", "seemed", "turns out")
_NEUTRAL_ADJECTIVES = (
    "long", "short", "new", "old", "french", "recent", "familiar", "quiet", "loud", "british",
    "modern", "slow-paced", "colorful", "dark", "ambitious", "personal", "political", "low-budget",
)  # fmt: skip
_OPENERS = ("overall ,", "honestly ,", "frankly ,", "in the end ,", "at times ,", "for me ,", "still ,")
_PREPOSITIONS = ("of", "in", "behind", "for", "with")
_TAILS = (
    "for a movie about the war", "even if i never cared for the genre", "and i did not expect that",
    "by the second hour", "from start to finish", "with no real villain", "for most of the running time",
    "though i never saw the first one", "on a rainy night", "as far as sequels go",
    "and it does not end there", "in its own way", "for a film of this kind", "most of the time",
)  # fmt: skip

_POLARITY = {**{w: 1 for w in POSITIVE_WORDS}, **{w: -1 for w in NEGATIVE_WORDS}}


@dataclass(frozen=True)
class SyntheticConfig:
    """How the synthetic task is generated. The same config always gives the same data."""

    num_train: int = 6000
    """Training sentences generated (``load_task`` carves the ``ctrl`` split out of them)."""
    num_dev: int = 1000
    """Dev sentences, drawn from an independent random stream (so they do not move with num_train)."""
    seed: int = 0
    """Seed of the generator."""
    label_noise: float = 0.03
    """Probability that a label is flipped whatever the sentence says (pure noise)."""
    min_words: int = 4
    """Shortest sentence, in whitespace-separated tokens."""
    max_words: int = 24
    """Longest sentence, in whitespace-separated tokens."""
    contrast_prob: float = 0.35
    """Probability that a sentence has a second clause after ``but``."""
    but_weight: float = 2.0
    """How much the clause after ``but`` counts relative to the first clause."""
    negation_prob: float = 0.3
    """Probability that a sentiment phrase is negated (its word then has the opposite polarity)."""
    intensifier_prob: float = 0.25
    """Probability that a sentiment phrase is intensified (counts double)."""
    max_phrases: int = 3
    """Most sentiment phrases in one clause."""
    sharpness: float = 1.5
    """Slope of ``P(positive) = sigmoid(sharpness * total)``: larger makes labels more deterministic."""

    def __post_init__(self) -> None:
        for name in ("num_train", "num_dev", "min_words", "max_phrases"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"SyntheticConfig.{name}={value!r} must be an integer >= 1")
        if not isinstance(self.seed, int):
            raise ConfigError(f"SyntheticConfig.seed={self.seed!r} must be an integer")
        if not isinstance(self.max_words, int) or self.max_words < max(self.min_words, 8):
            raise ConfigError(
                f"SyntheticConfig.max_words={self.max_words!r} must be an integer >= max(min_words, 8) "
                f"(min_words={self.min_words}); shorter sentences cannot hold the rule"
            )
        for name in ("label_noise", "contrast_prob", "negation_prob", "intensifier_prob"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ConfigError(f"SyntheticConfig.{name}={value!r} must be a probability in [0, 1]")
        for name in ("but_weight", "sharpness"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ConfigError(f"SyntheticConfig.{name}={value!r} must be a finite number > 0")


def rule_score(sentence: str, but_weight: float = 2.0) -> float:
    """The rule's total for one sentence: positive means positive sentiment, 0 means a coin flip.

    :param sentence: a sentence of the synthetic task (lower case, tokens separated by spaces).
    :param but_weight: weight of the clause after ``but`` (:attr:`SyntheticConfig.but_weight`).
    """
    tokens = sentence.split()
    weight, total = 1.0, 0.0
    for i, token in enumerate(tokens):
        if token == CONTRAST:
            weight = but_weight
            continue
        value = _POLARITY.get(token)
        if value is None:
            continue
        j = i - 1
        if j >= 0 and tokens[j] in INTENSIFIERS:
            value, j = 2 * value, j - 1
        if j >= 0 and tokens[j] in NEGATORS:
            value = -value
        total += weight * value
    return total


def positive_probability(sentence: str, config: SyntheticConfig | None = None) -> float:
    """``P(label = positive)`` under the rule before label noise: the instance's intrinsic ambiguity."""
    config = config or SyntheticConfig()
    return 1.0 / (1.0 + math.exp(-config.sharpness * rule_score(sentence, config.but_weight)))


def _pick(rng: np.random.Generator, words: tuple[str, ...]) -> str:
    return words[int(rng.integers(len(words)))]


def _phrase(rng: np.random.Generator, sign: int, config: SyntheticConfig) -> list[str]:
    """A sentiment phrase whose value has ``sign``; negation flips the surface word's polarity."""
    negated = rng.random() < config.negation_prob
    intensified = rng.random() < config.intensifier_prob
    word_sign = -sign if negated else sign
    words = [_pick(rng, NEGATORS)] if negated else []
    if intensified:
        words.append(_pick(rng, INTENSIFIERS))
    words.append(_pick(rng, POSITIVE_WORDS if word_sign > 0 else NEGATIVE_WORDS))
    return words


def _clause(rng: np.random.Generator, sign: int, num_phrases: int, config: SyntheticConfig) -> list[str]:
    # Purity: how often a phrase agrees with the clause's sign; low purity makes mixed, hard clauses.
    purity = (1.0, 1.0, 0.75, 0.5)[int(rng.integers(4))]
    words = [_pick(rng, _DETERMINERS), _pick(rng, _NOUNS)]
    if rng.random() < 0.3:
        words += [_pick(rng, _PREPOSITIONS), _pick(rng, _DETERMINERS), _pick(rng, _NOUNS)]
    words.append(_pick(rng, _VERBS))
    if num_phrases == 0:
        words.append(_pick(rng, _NEUTRAL_ADJECTIVES))
    for k in range(num_phrases):
        if k > 0:
            words.append("and" if k == num_phrases - 1 else ",")
        words += _phrase(rng, sign if rng.random() < purity else -sign, config)
    if rng.random() < 0.25:
        words.append(_pick(rng, _TAILS))
    return words


def _sentence(rng: np.random.Generator, config: SyntheticConfig) -> str:
    sign = 1 if rng.random() < 0.5 else -1
    words = [_pick(rng, _OPENERS)] if rng.random() < 0.15 else []
    if rng.random() < config.contrast_prob:
        first = int(rng.integers(1, min(2, config.max_phrases) + 1))
        second = int(rng.integers(1, min(2, config.max_phrases) + 1))
        other = -sign if rng.random() < 0.8 else sign  # "but" usually marks a contrast
        words += _clause(rng, other, first, config) + [",", CONTRAST] + _clause(rng, sign, second, config)
    else:
        neutral = rng.random() < 0.08  # a few sentences carry no sentiment at all: pure coin flips
        words += _clause(rng, sign, 0 if neutral else int(rng.integers(1, config.max_phrases + 1)), config)
    return " ".join(words)


def _generate(num: int, rng: np.random.Generator, config: SyntheticConfig) -> TextSplit:
    texts: list[str] = []
    for _ in range(100 * num):  # sentences outside [min_words, max_words] are redrawn
        text = _sentence(rng, config)
        if config.min_words <= len(text.split()) <= config.max_words:
            texts.append(text)
            if len(texts) == num:
                break
    else:
        raise ConfigError(
            f"SyntheticConfig: hardly any sentence has between min_words={config.min_words} and "
            f"max_words={config.max_words} words; widen the range (sentences have 4 to about 30 words)"
        )
    totals = np.array([rule_score(t, config.but_weight) for t in texts])
    labels = (rng.random(num) < 1.0 / (1.0 + np.exp(-config.sharpness * totals))).astype(np.int64)
    noisy = rng.random(num) < config.label_noise
    labels[noisy] = 1 - labels[noisy]
    return TextSplit(text_a=tuple(texts), text_b=None, labels=labels)


def make_synthetic_transfer(config: SyntheticConfig, num: int) -> TextSplit:
    """``num`` more sentences of the task from a third independent stream (labels kept; the caller drops them)."""
    return _generate(num, np.random.default_rng([config.seed, 2]), config)


def make_synthetic_task(config: SyntheticConfig | None = None) -> tuple[TaskSpec, TextSplit, TextSplit]:
    """Generate the synthetic task.

    :param config: generation settings; None uses :class:`SyntheticConfig`'s defaults.
    :return: ``(spec, train, dev)``; :func:`kd_backend.data.load_task` carves ``ctrl`` out of train.
    """
    config = config or SyntheticConfig()
    train = _generate(config.num_train, np.random.default_rng([config.seed, 0]), config)
    dev = _generate(config.num_dev, np.random.default_rng([config.seed, 1]), config)
    return SYNTHETIC_TASK, train, dev
