"""One forward pass that returns what KD needs: logits and the [CLS] states of chosen layers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn


def forward_logits_cls(
    model: nn.Module,
    batch: Mapping[str, torch.Tensor],
    layers: Sequence[int] = (),
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run a sequence classifier and pick the [CLS] vector of ``layers``.

    :param model: a Hugging Face sequence-classification model.
    :param batch: ``input_ids``, ``attention_mask`` (and ``token_type_ids``), each ``(B, L)``.
    :param layers: indices into ``hidden_states`` (0 = embeddings, i = output of layer i);
        empty to skip hidden states entirely (cheaper).
    :return: logits ``(B, C)`` and [CLS] states ``(B, len(layers), H)`` or None.
    """
    out = model(**batch, output_hidden_states=bool(layers))
    if not layers:
        return out.logits, None
    cls = torch.stack([out.hidden_states[i][:, 0] for i in layers], dim=1)
    return out.logits, cls


def move_batch(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Copy a CPU batch to ``device`` (pinned, non-blocking on CUDA)."""
    if device.type == "cpu":
        return dict(batch)
    return {k: v.pin_memory().to(device, non_blocking=True) for k, v in batch.items()}
