"""The KD objective of one training step as pure functions: student outputs and teacher targets in,
the mean KD and hidden-state terms out.

:meth:`kd_backend.distiller.Distiller._train_step` does the orchestration (forward pass, data
selection, teacher weights, fetching teacher targets from a :mod:`kd_backend.teacher_source`,
backward, optimizer); this module holds the math in between, so that it can be tested on tiny
hand-made tensors without a distiller.

Shapes: ``B`` instances in the batch, ``S <= B`` of them selected for KD (all of them unless
batch-scope selection is on), ``K`` teachers (smallest first), ``C`` classes, ``R_k <= S`` rows
teacher ``k`` is read on, ``L_s`` aligned student layers, ``L_k`` layer pairs of teacher ``k``,
``H_s``/``H_k`` the student's and teacher ``k``'s hidden widths.

Per selected instance ``i`` the KD term is ``sum_k w_ik * kd(z_i, t_ik)`` and the hidden term
``sum_k w_ik * hid(P_k(h_i), g_ik)``; each is weighted per instance (the uncertainty objective)
and averaged over the selected instances or over the whole batch (``EpochPlan.selection_norm``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from kd_backend import losses
from kd_backend.plan import KD_LOSSES, SELECTION_NORMS


@dataclass(frozen=True)
class TeacherBatch:
    """One teacher's targets for the selected instances of a step, as a teacher source returns them.

    A cached source reads every selected row (``rows=None``, weight 0 where the teacher is not
    adopted: no host sync on CUDA); an online source runs the teacher only on its adopted rows.
    """

    logits: torch.Tensor
    """(R, C) teacher logits (a target: never receives gradient)."""
    hidden: torch.Tensor | None
    """(R, L_k, H_k) teacher [CLS] states of the mapped layers, or None when not requested."""
    weight: torch.Tensor
    """(R,) this teacher's weight on each of its rows (a column of the teacher-weight matrix)."""
    rows: torch.Tensor | None = None
    """(R,) long positions of the rows among the S selected instances; None = all S, in order."""
    forwards: int = 0
    """Teacher forward passes (instances) spent on this batch: 0 for a cache."""
    flops: float = 0.0
    """Teacher FLOPs spent on this batch: 0 for a cache."""


def selection_denominator(selection_norm: str, batch_size: int, selected: int) -> int:
    """What the summed KD / hidden terms are divided by.

    :param selection_norm: ``selected`` (the paper: the mean over the S selected instances) or
        ``batch`` (over all B, so each selected instance keeps its full-KD weight).
    :param batch_size: B.
    :param selected: S.
    """
    if selection_norm not in SELECTION_NORMS:
        raise ValueError(f"selection_norm={selection_norm!r} must be one of {list(SELECTION_NORMS)}")
    return batch_size if selection_norm == "batch" else selected


def aligned_student_hidden(
    student_hidden: torch.Tensor,
    layers: Sequence[int],
    projection: Sequence[Callable[[torch.Tensor], torch.Tensor]] | None,
) -> torch.Tensor:
    """The student's [CLS] states paired with one teacher's layers, projected to its width.

    :param student_hidden: (R, L_s, H_s) student [CLS] states of every aligned student layer.
    :param layers: L_k positions into the ``L_s`` axis, one per (student, teacher) layer pair.
    :param projection: L_k maps ``(R, H_s) -> (R, H_k)`` (one per pair), or None when ``H_s == H_k``.
    :return: (R, L_k, H_k) float32 (a projection may run in its own dtype).
    """
    s = student_hidden[:, list(layers)].float()
    if projection is not None:
        if len(projection) != s.shape[1]:
            raise ValueError(f"{len(projection)} projections for {s.shape[1]} layer pairs; give one per pair")
        s = torch.stack([p(s[:, j]) for j, p in enumerate(projection)], dim=1)
    return s


def teacher_kd_terms(
    student_logits: torch.Tensor,
    targets: Sequence[TeacherBatch | None],
    kd_loss: str = "kl",
    temperature: float = 1.0,
) -> torch.Tensor:
    """Each instance's KD loss summed over its teachers, ``kd_i = sum_k w_ik * kd(z_i, t_ik)``.

    This is the KD term of :func:`kd_objective` before instance weights and averaging, and the
    score of ``selection='kd-loss'`` (computed there without gradient).

    :param student_logits: (S, C) student logits (float32).
    :param targets: K entries, one per teacher; None = teacher not read, which adds nothing.
    :param kd_loss: ``kl`` (``T^2 * KL``) or ``mse``.
    :param temperature: T of the ``kl`` loss.
    :return: (S,) float32 per-instance KD losses (gradient flows to the student logits).
    """
    if kd_loss not in KD_LOSSES:
        raise ValueError(f"kd_loss={kd_loss!r} must be one of {list(KD_LOSSES)}")
    kd_i = student_logits.new_zeros(student_logits.shape[0])
    for target in targets:
        if target is None:
            continue
        rows = target.rows
        z_k = student_logits if rows is None else student_logits[rows]
        if kd_loss == "mse":
            term = losses.kd_mse_loss(z_k, target.logits)
        else:
            term = losses.kd_kl_loss(z_k, target.logits, temperature)
        kd_i = kd_i + target.weight * term if rows is None else kd_i.index_add(0, rows, target.weight * term)
    return kd_i


def kd_objective(
    student_logits: torch.Tensor,
    targets: Sequence[TeacherBatch | None],
    kd_instance_weights: torch.Tensor,
    hidden_instance_weights: torch.Tensor,
    *,
    batch_size: int,
    selection_norm: str = "selected",
    kd_loss: str = "kl",
    temperature: float = 1.0,
    with_kd: bool = True,
    student_hidden: torch.Tensor | None = None,
    hidden_layers: Sequence[Sequence[int]] | None = None,
    projections: Sequence[Sequence[Callable[[torch.Tensor], torch.Tensor]] | None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean KD and hidden-state terms of one step over its S selected instances.

    Teachers are summed in order ``k = 0..K-1`` into per-instance terms (cached targets add
    ``w * term`` on every row, online ones ``index_add`` on their rows: the same values, as the
    unadopted rows of a cache have weight 0).

    :param student_logits: (S, C) student logits of the selected instances (float32).
    :param targets: K entries, one per teacher; None = teacher not read this step (a fixed weight
        of 0, or no adopted row), which adds nothing.
    :param kd_instance_weights: (S,) per-instance weight of the KD term (all ones unless the
        objective is uncertainty-weighted; detached).
    :param hidden_instance_weights: (S,) per-instance weight of the hidden term (detached).
    :param batch_size: B, the instances in the whole batch (for ``selection_norm='batch'``).
    :param selection_norm: ``selected`` or ``batch`` (see :func:`selection_denominator`).
    :param kd_loss: ``kl`` (``T^2 * KL``, :func:`kd_backend.losses.kd_kl_loss`) or ``mse``
        (:func:`kd_backend.losses.kd_mse_loss`; the caller passes ``mse`` for regression tasks).
    :param temperature: T of the ``kl`` loss.
    :param with_kd: compute the KD term (False when its plan weight is 0: it then stays 0).
    :param student_hidden: (S, L_s, H_s) student [CLS] states of the selected instances, or None
        to skip the hidden term (it then stays 0).
    :param hidden_layers: per teacher, its L_k positions into the ``L_s`` axis (needed with
        ``student_hidden``).
    :param projections: per teacher, its L_k projections to ``H_k``, or None where the widths match.
    :return: ``(kd, hidden)`` scalar tensors: ``sum_i kd_w_i * kd_i / denom`` and
        ``sum_i hid_w_i * hid_i / denom``, with gradient to the student (and the projections).
    """
    if student_logits.dim() != 2:
        raise ValueError(f"student_logits shape {tuple(student_logits.shape)} must be (S, C)")
    n = student_logits.shape[0]
    for name, w in (("kd_instance_weights", kd_instance_weights), ("hidden_instance_weights", hidden_instance_weights)):
        if w.shape != (n,):
            raise ValueError(f"{name} shape {tuple(w.shape)} must be (S,) = ({n},), one weight per selected instance")
    if kd_loss not in KD_LOSSES:
        raise ValueError(f"kd_loss={kd_loss!r} must be one of {list(KD_LOSSES)}")
    if student_hidden is not None:
        if student_hidden.dim() != 3 or student_hidden.shape[0] != n:
            raise ValueError(f"student_hidden shape {tuple(student_hidden.shape)} must be (S, L_s, H_s) with S = {n}")
        if hidden_layers is None or len(hidden_layers) != len(targets):
            raise ValueError("hidden_layers must give one sequence of layer positions per teacher")
    denom = selection_denominator(selection_norm, batch_size, n)
    kd_i = teacher_kd_terms(student_logits, targets, kd_loss, temperature) if with_kd else student_logits.new_zeros(n)
    hid_i = student_logits.new_zeros(n)
    for k, target in enumerate(targets if student_hidden is not None else ()):
        if target is None:
            continue
        if target.hidden is None:
            raise ValueError(f"teacher {k} has no hidden targets but the hidden term is on; ask the source for them")
        rows = target.rows
        h = student_hidden if rows is None else student_hidden[rows]
        s = aligned_student_hidden(h, hidden_layers[k], None if projections is None else projections[k])
        term = target.weight * losses.hidden_mse_loss(s, target.hidden.float())
        hid_i = hid_i + term if rows is None else hid_i.index_add(0, rows, term)
    return (kd_instance_weights * kd_i).sum() / denom, (hidden_instance_weights * hid_i).sum() / denom


def combine_terms(
    ce: torch.Tensor,
    kd: torch.Tensor,
    hidden: torch.Tensor,
    *,
    ce_weight: float,
    kd_weight: float,
    hidden_weight: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The step's loss ``ce_weight*ce + kd_weight*kd + hidden_weight*hidden`` and its logged terms.

    :param ce: scalar mean CE (MSE for regression) on gold labels.
    :param kd: scalar mean KD term (from :func:`kd_objective`).
    :param hidden: scalar mean hidden-state term.
    :return: the total (with gradient) and every term unweighted (``ce``, ``kd``, ``hidden``),
        weighted (``ce_w``, ``kd_w``, ``hidden_w``) and the ``total``, all detached.
    """
    total = ce_weight * ce + kd_weight * kd + hidden_weight * hidden
    terms = {
        "ce": ce.detach(), "kd": kd.detach(), "hidden": hidden.detach(),
        "ce_w": ce_weight * ce.detach(), "kd_w": kd_weight * kd.detach(),
        "hidden_w": hidden_weight * hidden.detach(), "total": total.detach(),
    }
    return total, terms
