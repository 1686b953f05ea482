"""One split of a task's data: texts and gold labels, as an immutable, fingerprinted value.

Its own module so that the data loaders (:mod:`kd_backend.data`) and the synthetic generator
(:mod:`kd_backend.synthetic`) can both build splits without importing each other;
``from kd_backend.data import TextSplit`` keeps working (a re-export).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from kd_backend.errors import DataError

UNLABELLED = -1
"""The label of a training row without a gold label (class tasks; regression uses NaN)."""


def _hash_texts(h: Any, texts: tuple[str, ...]) -> None:
    for text in texts:
        raw = text.encode("utf-8")
        h.update(len(raw).to_bytes(8, "little"))
        h.update(raw)


@dataclass(frozen=True, eq=False)
class TextSplit:
    """One split of a task: texts and gold labels, immutable. Equal splits have equal fingerprints."""

    text_a: tuple[str, ...]
    """First (or only) text of each instance."""
    text_b: tuple[str, ...] | None
    """Second text of each instance for sentence-pair tasks; None for single sentences."""
    labels: np.ndarray
    """Gold labels, shape ``(N,)``: int64 class ids, or float32 for regression. Read-only."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "text_a", tuple(self.text_a))
        if self.text_b is not None:
            object.__setattr__(self, "text_b", tuple(self.text_b))
        for name in ("text_a", "text_b"):
            texts = getattr(self, name)
            if texts is not None and not all(isinstance(t, str) for t in texts):
                bad = next(i for i, t in enumerate(texts) if not isinstance(t, str))
                raise DataError(f"TextSplit.{name}[{bad}]={texts[bad]!r} is not a string")
        labels = np.asarray(self.labels)
        if np.issubdtype(labels.dtype, np.integer):
            labels = labels.astype(np.int64)
        elif np.issubdtype(labels.dtype, np.floating):
            labels = labels.astype(np.float32)
        else:
            raise DataError(f"TextSplit.labels has dtype {labels.dtype}; use integer class ids or floats (regression)")
        if labels.shape != (len(self.text_a),):
            raise DataError(
                f"TextSplit.labels has shape {labels.shape} but there are {len(self.text_a)} texts; "
                "pass one label per instance"
            )
        if self.text_b is not None and len(self.text_b) != len(self.text_a):
            raise DataError(f"TextSplit has {len(self.text_a)} text_a but {len(self.text_b)} text_b; they must pair up")
        labels = labels.copy()
        labels.setflags(write=False)
        object.__setattr__(self, "labels", labels)

    def __len__(self) -> int:
        return len(self.text_a)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TextSplit) and self.fingerprint == other.fingerprint

    def __hash__(self) -> int:
        return hash(self.fingerprint)

    @property
    def is_pair(self) -> bool:
        """Whether instances are sentence pairs."""
        return self.text_b is not None

    @property
    def is_regression(self) -> bool:
        """Whether the labels are real numbers."""
        return self.labels.dtype == np.float32

    @cached_property
    def fingerprint(self) -> str:
        """SHA-256 hex digest of the texts and labels (computed once); keys caches of model outputs."""
        h = hashlib.sha256()
        _hash_texts(h, self.text_a)
        h.update(b"|b" if self.text_b is not None else b"|-")
        if self.text_b is not None:
            _hash_texts(h, self.text_b)
        h.update(self.labels.dtype.str.encode())
        h.update(np.ascontiguousarray(self.labels).tobytes())
        return h.hexdigest()

    @property
    def labelled(self) -> np.ndarray:
        """Which instances have a gold label, shape ``(N,)`` bool: unlabelled transfer rows carry
        :data:`UNLABELLED` (class tasks) or NaN (regression)."""
        if self.is_regression:
            return np.isfinite(self.labels)
        return self.labels != UNLABELLED

    def unlabelled(self) -> TextSplit:
        """The same texts with every gold label removed (a transfer set for KD)."""
        fill = np.nan if self.is_regression else UNLABELLED
        return TextSplit(self.text_a, self.text_b, np.full(len(self), fill, dtype=self.labels.dtype))

    def concat(self, other: TextSplit) -> TextSplit:
        """This split followed by ``other`` (same text columns and label kind)."""
        if other.is_pair != self.is_pair or other.is_regression != self.is_regression:
            raise DataError("TextSplit.concat: the splits differ in text columns or label kind")
        return TextSplit(
            self.text_a + other.text_a,
            None if self.text_b is None else self.text_b + other.text_b,
            np.concatenate([self.labels, other.labels]),
        )

    def select(self, indices: np.ndarray | list[int]) -> TextSplit:
        """The instances at ``indices``, in that order."""
        idx = np.asarray(indices, dtype=np.int64)
        return TextSplit(
            text_a=tuple(self.text_a[i] for i in idx),
            text_b=None if self.text_b is None else tuple(self.text_b[i] for i in idx),
            labels=self.labels[idx],
        )
