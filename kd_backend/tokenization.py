"""Local WordPiece tokenizers and fast batch encoding.

The hub is not reachable in every setting DynaKD runs in, so a BERT-style tokenizer can be trained
from the task's own text with the ``tokenizers`` library. It is wrapped as a transformers fast
tokenizer, so it saves next to a model and reloads with ``AutoTokenizer.from_pretrained`` offline.
"""

from __future__ import annotations

import hashlib
import heapq
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence

import numpy as np
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from kd_backend.errors import ConfigError, DataError

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
"""BERT's special tokens, in id order: ``[PAD]`` is id 0 (the models' ``pad_token_id``)."""
SUBWORD_PREFIX = "##"


def _learn_wordpiece_vocab(word_counts: Counter[str], vocab_size: int) -> list[str]:
    """BPE-style WordPiece vocabulary learning, as ``tokenizers.trainers.WordPieceTrainer``.

    Ours exists because the Rust trainer breaks ties between equally frequent pairs by ids that
    depend on hash-map order, so two runs on the same text give different vocabularies. Here ties
    go to the lexicographically smallest pair, and the result depends on the word counts only.

    :param word_counts: pre-tokenized words and their frequencies.
    :param vocab_size: largest vocabulary size, special tokens included.
    :return: the vocabulary in id order: special tokens, characters, ``##``-characters, merges.
    """
    ordered = sorted(word_counts)
    words = [[w[0], *(SUBWORD_PREFIX + c for c in w[1:])] for w in ordered]
    counts = [word_counts[w] for w in ordered]
    vocab = list(SPECIAL_TOKENS)
    vocab += sorted({c for w in word_counts for c in w} - set(vocab))
    vocab += sorted({s for w in words for s in w[1:]})
    known = set(vocab)

    pair_count: defaultdict[tuple[str, str], int] = defaultdict(int)
    where: defaultdict[tuple[str, str], set[int]] = defaultdict(set)
    for i, (w, n) in enumerate(zip(words, counts)):
        for pair in zip(w, w[1:]):
            pair_count[pair] += n
            where[pair].add(i)
    heap = [(-n, pair) for pair, n in pair_count.items()]  # max count first, then smallest pair
    heapq.heapify(heap)
    while len(vocab) < vocab_size and heap:
        neg_count, pair = heapq.heappop(heap)
        if pair_count.get(pair) != -neg_count:
            continue  # stale entry: the pair's count changed after it was pushed
        a, b = pair
        merged = a + b.removeprefix(SUBWORD_PREFIX)
        if merged not in known:
            known.add(merged)
            vocab.append(merged)
        del pair_count[pair]
        changed = set()
        for i in where.pop(pair):
            w, n = words[i], counts[i]
            for p in zip(w, w[1:]):
                if p != pair:
                    pair_count[p] -= n
                    changed.add(p)
            out, j = [], 0
            while j < len(w):
                if j + 1 < len(w) and w[j] == a and w[j + 1] == b:
                    out.append(merged)
                    j += 2
                else:
                    out.append(w[j])
                    j += 1
            words[i] = out
            for p in zip(out, out[1:]):
                pair_count[p] += n
                where[p].add(i)
                changed.add(p)
        for p in changed:
            if pair_count[p] > 0:
                heapq.heappush(heap, (-pair_count[p], p))
            else:
                del pair_count[p]
                where.pop(p, None)
    return vocab


def train_wordpiece_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 8000,
    lowercase: bool = True,
    model_max_length: int = 512,
) -> PreTrainedTokenizerFast:
    """Train a BERT-style WordPiece tokenizer on ``texts``; deterministic for the same texts.

    The vocabulary can come out smaller than ``vocab_size`` on a small corpus: size models with
    ``len(tokenizer)``, not with ``vocab_size``.

    :param texts: training sentences (for pair tasks, both sides).
    :param vocab_size: largest vocabulary size, special tokens included.
    :param lowercase: lowercase and strip accents, as the uncased BERT models.
    :param model_max_length: longest sequence the models accept (their ``max_position_embeddings``).
    :return: a fast tokenizer that adds ``[CLS] A [SEP]`` / ``[CLS] A [SEP] B [SEP]`` with
        ``token_type_ids`` 0 for A and 1 for B.
    """
    if not isinstance(vocab_size, int) or vocab_size <= len(SPECIAL_TOKENS):
        raise ConfigError(f"vocab_size={vocab_size!r} must be an integer > {len(SPECIAL_TOKENS)} (the special tokens)")
    if not isinstance(model_max_length, int) or model_max_length < 3:
        raise ConfigError(f"model_max_length={model_max_length!r} must be an integer >= 3")
    corpus = [t for t in texts if isinstance(t, str) and t.strip()]
    if not corpus:
        raise DataError("train_wordpiece_tokenizer got no non-empty text; pass the training sentences of the task")

    normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    word_counts: Counter[str] = Counter()
    for text, n in Counter(corpus).items():
        for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)):
            word_counts[word] += n
    vocab = _learn_wordpiece_vocab(word_counts, vocab_size)

    tok = Tokenizer(
        WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]", continuing_subword_prefix=SUBWORD_PREFIX)
    )
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.post_processor = processors.BertProcessing(
        ("[SEP]", tok.token_to_id("[SEP]")), ("[CLS]", tok.token_to_id("[CLS]"))
    )
    tok.decoder = decoders.WordPiece(prefix=SUBWORD_PREFIX)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=model_max_length,
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """sha256 of the tokenizer's pipeline (vocabulary, normaliser, post-processor) and settings.

    The backend's transient truncation/padding state is left out: every encode call sets it, so it
    says nothing about which ids a text maps to. Stable across ``save_pretrained`` / reload.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        pipeline = json.loads(backend.to_str())
        pipeline.pop("truncation", None)
        pipeline.pop("padding", None)
    else:  # a pure-Python tokenizer: its vocabulary and added tokens define it
        pipeline = {"vocab": sorted(tokenizer.get_vocab().items())}
    settings = {
        "model_max_length": tokenizer.model_max_length,
        "padding_side": tokenizer.padding_side,
        "truncation_side": tokenizer.truncation_side,
        "special_tokens": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
        "model_input_names": list(tokenizer.model_input_names),
    }
    blob = json.dumps({"pipeline": pipeline, "settings": settings}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def encode_texts(
    tokenizer: PreTrainedTokenizerBase,
    text_a: Sequence[str],
    text_b: Sequence[str] | None,
    max_seq_length: int,
) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
    """Encode sentences (or sentence pairs) in one batched fast-tokenizer call, unpadded.

    :param tokenizer: a (fast) transformers tokenizer.
    :param text_a: first sentences, N of them.
    :param text_b: second sentences (N) for pair tasks, or None.
    :param max_seq_length: longest encoding, special tokens included; pairs are truncated
        longest-first.
    :return: ``input_ids`` (N int32 arrays) and ``token_type_ids`` (N int8 arrays; None without
        ``text_b``).
    """
    min_len = 3 if text_b is not None else 2
    if not isinstance(max_seq_length, int) or max_seq_length < min_len:
        raise ConfigError(
            f"max_seq_length={max_seq_length!r} must be an integer >= {min_len} "
            f"(room for the special tokens of a {'pair' if text_b is not None else 'single sentence'})"
        )
    text_a = list(text_a)
    if text_b is not None:
        text_b = list(text_b)
        if len(text_b) != len(text_a):
            raise DataError(f"encode_texts got {len(text_a)} first sentences but {len(text_b)} second sentences")
    if not text_a:
        return [], ([] if text_b is not None else None)
    enc = tokenizer(
        text_a,
        text_b,
        add_special_tokens=True,
        truncation="longest_first",
        max_length=max_seq_length,
        padding=False,
        return_attention_mask=False,
        return_token_type_ids=text_b is not None,
    )
    input_ids = [np.asarray(ids, dtype=np.int32) for ids in enc["input_ids"]]
    if text_b is None:
        return input_ids, None
    return input_ids, [np.asarray(tt, dtype=np.int8) for tt in enc["token_type_ids"]]
