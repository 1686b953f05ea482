"""Tokenized splits in flat arrays, length-grouped batches and dynamic padding.

A split is tokenized once per tokenizer and kept as one flat ``int32`` array plus offsets, so
making a batch is a handful of numpy slices — no per-step tokenization, no Python objects per
token. Batches group instances of similar length (as Hugging Face's ``group_by_length``) and are
padded only to their own longest member, which on SST-2 cuts the tokens per batch ~5x against
padding to 128.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class EncodedSplit:
    """One split tokenized by one tokenizer, unpadded.

    :param ids: all token ids of the split, concatenated, ``(total_tokens,)`` int32.
    :param offsets: start of instance ``i`` is ``offsets[i]``, end ``offsets[i + 1]``; ``(N + 1,)``.
    :param type_ids: token-type ids aligned with ``ids`` (``(total_tokens,)`` int8) or None for
        single-sentence tasks.
    :param pad_id: the tokenizer's padding id.
    """

    ids: np.ndarray
    offsets: np.ndarray
    type_ids: np.ndarray | None
    pad_id: int

    @classmethod
    def from_lists(
        cls, ids: Sequence[np.ndarray], type_ids: Sequence[np.ndarray] | None, pad_id: int
    ) -> EncodedSplit:
        """Pack per-instance arrays into the flat layout."""
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        offsets = np.zeros(len(ids) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat = np.concatenate(ids).astype(np.int32) if len(ids) else np.zeros(0, np.int32)
        flat_types = None
        if type_ids is not None and len(type_ids):
            flat_types = np.concatenate(type_ids).astype(np.int8)
            if not flat_types.any():  # all zeros: a single-sentence task, no need to carry them
                flat_types = None
        return cls(ids=flat, offsets=offsets, type_ids=flat_types, pad_id=int(pad_id))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        """Tokens per instance, ``(N,)``."""
        return np.diff(self.offsets)

    def collate(self, indices: np.ndarray, pad_to: int | None = None) -> dict[str, torch.Tensor]:
        """Build a padded CPU batch for ``indices``.

        :param indices: instance indices, ``(B,)``.
        :param pad_to: pad every row to this length (the paper's static padding); None pads to
            the longest row of the batch (dynamic padding).
        :return: ``input_ids`` and ``attention_mask`` ``(B, L)`` int64 (and ``token_type_ids``).
        """
        starts = self.offsets[indices]
        lens = self.offsets[indices + 1] - starts
        width = int(lens.max()) if pad_to is None else int(pad_to)
        # Gather every token with one fancy index: position j of row b reads ids[start_b + j].
        cols = np.arange(width)
        mask = cols[None, :] < lens[:, None]
        gather = np.where(mask, starts[:, None] + cols[None, :], 0)
        input_ids = np.where(mask, self.ids[gather], self.pad_id)
        batch = {
            "input_ids": torch.from_numpy(input_ids.astype(np.int64)),
            "attention_mask": torch.from_numpy(mask.astype(np.int64)),
        }
        if self.type_ids is not None:
            batch["token_type_ids"] = torch.from_numpy(np.where(mask, self.type_ids[gather], 0).astype(np.int64))
        return batch

    def num_tokens(self, indices: np.ndarray, pad_to: int | None = None) -> tuple[int, int]:
        """(real tokens, padded tokens) of a batch — the padded count is what the model computes on."""
        lens = self.lengths[indices]
        width = int(lens.max()) if pad_to is None else int(pad_to)
        return int(lens.sum()), width * len(indices)


def length_grouped_batches(
    lengths: np.ndarray,
    batch_size: int,
    rng: np.random.Generator | None,
    *,
    mega_factor: int = 50,
) -> list[np.ndarray]:
    """Split positions ``0..N-1`` into batches of similar length.

    With an ``rng`` (training): shuffle, cut into mega-batches of ``mega_factor * batch_size``,
    sort each by length, cut into batches and shuffle the batch order — random but with little
    padding. Without one (evaluation, scoring): sort everything by length, longest first.

    :param lengths: ``(N,)`` tokens per instance.
    :param batch_size: instances per batch (the last batch may be smaller).
    :return: a list of index arrays into ``lengths``.
    """
    n = len(lengths)
    if n == 0:
        return []
    if rng is None:
        order = np.argsort(-lengths, kind="stable")
        return [order[i : i + batch_size] for i in range(0, n, batch_size)]
    perm = rng.permutation(n)
    mega = mega_factor * batch_size
    batches: list[np.ndarray] = []
    for start in range(0, n, mega):
        chunk = perm[start : start + mega]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    order = rng.permutation(len(batches))
    return [batches[i] for i in order]
