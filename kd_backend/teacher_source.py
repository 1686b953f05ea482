"""Where a training step's teacher targets come from: a cache read or a teacher forward pass.

Both sources answer one question the same way, ``batch(k, ids, weight, use_hidden)``: teacher
``k``'s :class:`~kd_backend.objective.TeacherBatch` for the selected training instances ``ids``
whose weights for this teacher are ``weight``. They differ only in what they read:

- :class:`CachedTeachers` takes every row, weight 0 where teacher ``k`` is not adopted. Reading a
  cache costs nothing, and finding the adopted rows would be a host sync on CUDA.
- :class:`OnlineTeachers` runs the teacher on its adopted rows only (``weight > 0``), and says
  what that cost (forwards and FLOPs).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Protocol

import torch
from torch import nn

from kd_backend.batching import EncodedSplit
from kd_backend.cache import TeacherOutputs
from kd_backend.forward import forward_logits_cls, move_batch
from kd_backend.models import forward_flops
from kd_backend.objective import TeacherBatch


class TeacherSource(Protocol):
    """Teacher targets for the selected instances of one training step."""

    def batch(self, k: int, ids: torch.Tensor, weight: torch.Tensor, use_hidden: bool) -> TeacherBatch | None:
        """Teacher ``k``'s targets for training instances ``ids``.

        :param k: teacher index (smallest first).
        :param ids: (S,) long training-set indices of the selected instances, on the device.
        :param weight: (S,) teacher ``k``'s weight of each selected instance.
        :param use_hidden: also return the [CLS] states of the teacher's mapped layers.
        :return: the targets, or None when the teacher is read on no row at all.
        """
        ...


class CachedTeachers:
    """Targets read from each teacher's cached outputs on the training split (every row, no sync).

    :param outputs: per teacher, its :class:`~kd_backend.cache.TeacherOutputs` on the training
        split, on the device (held by reference: the cache's tensors, not a copy).
    """

    def __init__(self, outputs: Sequence[TeacherOutputs]) -> None:
        self.outputs = list(outputs)

    def batch(self, k: int, ids: torch.Tensor, weight: torch.Tensor, use_hidden: bool) -> TeacherBatch:
        out = self.outputs[k]
        hidden = out.hidden[ids] if use_hidden and out.hidden is not None else None
        return TeacherBatch(logits=out.logits[ids], hidden=hidden, weight=weight, rows=None)


class OnlineTeachers:
    """Targets from a no-grad teacher forward pass on the adopted rows (``weight > 0``) only.

    :param models: the frozen teachers, on ``device``, smallest first.
    :param encodings: per teacher, the training split in its tokenizer.
    :param layers: per teacher, the teacher layers of its (student, teacher) layer pairs.
    :param device: where the batches go.
    :param pad_to: pad each batch to this length (static padding), or None for dynamic padding.
    :param autocast: the context of a forward pass (the run's autocast, or a null context).
    """

    def __init__(
        self,
        models: Sequence[nn.Module],
        encodings: Sequence[EncodedSplit],
        layers: Sequence[Sequence[int]],
        device: torch.device,
        pad_to: int | None = None,
        autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    ) -> None:
        if not len(models) == len(encodings) == len(layers):
            raise ValueError(
                f"OnlineTeachers needs one encoding and one layer list per teacher: got {len(models)} models, "
                f"{len(encodings)} encodings and {len(layers)} layer lists"
            )
        self.models, self.encodings, self.layers = list(models), list(encodings), [list(m) for m in layers]
        self.device, self.pad_to, self.autocast = device, pad_to, autocast

    def batch(self, k: int, ids: torch.Tensor, weight: torch.Tensor, use_hidden: bool) -> TeacherBatch | None:
        rows = torch.nonzero(weight > 0).flatten()
        if len(rows) == 0:
            return None
        host = ids[rows].cpu().numpy()
        model, enc = self.models[k], self.encodings[k]
        batch = move_batch(enc.collate(host, self.pad_to), self.device)
        with torch.no_grad(), self.autocast():
            logits, cls = forward_logits_cls(model, batch, self.layers[k] if use_hidden else [])
        _, padded = enc.num_tokens(host, self.pad_to)
        # Hidden states at the cache's precision (fp16), so online and cached runs compute the same loss.
        return TeacherBatch(
            logits=logits.float(),
            hidden=None if cls is None else cls.to(torch.float16),
            weight=weight[rows],
            rows=rows,
            forwards=len(host),
            flops=forward_flops(model, padded, len(host), padded / len(host)),
        )
