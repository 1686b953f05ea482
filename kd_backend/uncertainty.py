"""How uncertain the student is about each instance, and which instances are the most uncertain.

Every score is computed from student logits at temperature 1 under ``torch.no_grad()`` and is
returned detached: the scores only *weight* or *select* instances and must never carry gradient
(the original code let gradient leak through its weights in two of its modes).
"""

from __future__ import annotations

import math

import torch

from kd_backend.errors import ConfigError
from kd_backend.plan import SELECTION_RULES

ROUNDINGS = ("floor", "round")


def _class_probs(logits: torch.Tensor, score: str) -> torch.Tensor:
    """(B, C) float32 probabilities at temperature 1, after checking that C >= 2."""
    if logits.dim() != 2:
        raise ValueError(f"{score}: logits shape {tuple(logits.shape)} must be (B, C)")
    if logits.shape[1] < 2:
        raise ConfigError(
            f"{score}: logits shape {tuple(logits.shape)} has {logits.shape[1]} class; uncertainty needs class "
            "probabilities (C >= 2). For a regression task use selection='random', teacher_mode='fixed' and "
            "objective='static'"
        )
    return torch.softmax(logits.detach().float(), dim=-1)


def normalized_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the student's distribution divided by ``log C``: 0 = certain, 1 = uniform.

    :param logits: (B, C) student logits, C >= 2.
    :return: (B,) float32 scores in [0, 1], detached.
    """
    with torch.no_grad():
        p = _class_probs(logits, "normalized_entropy")
        entropy = -torch.special.xlogy(p, p).sum(dim=-1)  # xlogy: 0 * log 0 = 0
        return (entropy / math.log(p.shape[1])).clamp_(0.0, 1.0)


def margin(logits: torch.Tensor) -> torch.Tensor:
    """Top-1 minus top-2 probability; a *smaller* margin means a *more* uncertain student.

    :param logits: (B, C) student logits, C >= 2.
    :return: (B,) float32 margins in [0, 1], detached.
    """
    with torch.no_grad():
        top2 = _class_probs(logits, "margin").topk(2, dim=-1).values
        return top2[:, 0] - top2[:, 1]


def least_confidence(logits: torch.Tensor) -> torch.Tensor:
    """One minus the top probability (the original code's ``confidence`` rule).

    :param logits: (B, C) student logits, C >= 2.
    :return: (B,) float32 scores in [0, 1 - 1/C], detached.
    """
    with torch.no_grad():
        return 1.0 - _class_probs(logits, "least_confidence").max(dim=-1).values


def uncertainty_scores(
    logits: torch.Tensor, rule: str, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Scores where HIGHER means MORE uncertain, whatever the rule, so selection is one sort.

    ``entropy`` is the normalised entropy, ``margin`` is ``1 - margin``, ``least-confidence`` is
    ``1 - max p`` and ``random`` (the control) draws uniform [0, 1) from ``generator``. ``random``
    reads only the batch size, so it also serves regression tasks.

    :param logits: (B, C) student logits; for ``random`` any tensor whose first axis is B.
    :param rule: one of :data:`kd_backend.plan.SELECTION_RULES` but ``kd-loss``.
    :param generator: source of the ``random`` scores (seed it for reproducible runs); the draw is
        made on the generator's device and moved to the logits' device.
    :return: (B,) float32 scores on the logits' device, detached.
    """
    if rule == "entropy":
        return normalized_entropy(logits)
    if rule == "margin":
        return 1.0 - margin(logits)
    if rule == "least-confidence":
        return least_confidence(logits)
    if rule == "random":
        device = generator.device if generator is not None else torch.device("cpu")
        return torch.rand(logits.shape[0], generator=generator, device=device).to(logits.device)
    if rule == "kd-loss":
        raise ConfigError(
            "selection rule 'kd-loss' ranks by the KD loss to the teachers, which student logits alone do not "
            "give; compute it with kd_backend.objective.teacher_kd_terms (the Distiller does)"
        )
    raise ConfigError(f"uncertainty rule={rule!r} is not one of {list(SELECTION_RULES)}")


def num_selected(n: int, fraction: float, rounding: str = "floor") -> int:
    """How many of ``n`` instances a fraction keeps: ``max(1, floor(n * r))`` or ``max(1, round(n * r))``.

    ``floor`` is the paper's per-batch rule; ``round`` (half up) suits a whole-epoch pool, where
    flooring would bias every small fraction downwards. Never 0, so the KD loss is never the mean of
    an empty tensor (the original code's NaN on small final batches). A ``1e-9`` slack absorbs
    float error such as ``100 * 0.29 == 28.999999999999996``.

    :param n: number of candidates, >= 1.
    :param fraction: r in (0, 1].
    :param rounding: ``floor`` or ``round``.
    """
    if n < 1:
        raise ValueError(f"num_selected: n={n} must be >= 1; there is nothing to select from")
    if not isinstance(fraction, (int, float)) or not 0.0 < fraction <= 1.0:
        raise ConfigError(f"fraction={fraction!r} must be in (0, 1]")
    if rounding not in ROUNDINGS:
        raise ConfigError(f"rounding={rounding!r} is not one of {list(ROUNDINGS)}")
    offset = 0.5 if rounding == "round" else 0.0
    return min(n, max(1, math.floor(n * fraction + offset + 1e-9)))


def select_most_uncertain(scores: torch.Tensor, fraction: float, rounding: str = "floor") -> torch.Tensor:
    """Indices of the ``k = num_selected(B, fraction, rounding)`` highest scores.

    Ties are broken deterministically by a stable sort: the lower index comes first.

    :param scores: (B,) scores where higher = more uncertain (see :func:`uncertainty_scores`).
    :param fraction: r in (0, 1].
    :param rounding: ``floor`` (per batch, the paper) or ``round`` (a whole-epoch pool).
    :return: (k,) long indices on the scores' device, most uncertain first; never empty.
    """
    if scores.dim() != 1:
        raise ValueError(f"select_most_uncertain: scores shape {tuple(scores.shape)} must be (B,)")
    k = num_selected(scores.shape[0], fraction, rounding)
    order = torch.sort(scores.detach(), descending=True, stable=True).indices
    return order[:k]
