"""The loss terms of a KD run as pure functions: tensors in, one loss per instance out.

Every function returns shape ``(B,)`` with ``reduction='none'`` semantics, so that the mechanisms
(teacher adoption, objective weighting) can weight instances before the caller averages. Teacher
tensors are targets: they are detached here, so no gradient ever reaches a teacher.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kd_backend.errors import ConfigError

_NORM_EPS = 1e-12


def _check_same_shape(name: str, student: torch.Tensor, teacher: torch.Tensor, ndim: int) -> None:
    if student.dim() != ndim or student.shape != teacher.shape:
        raise ValueError(
            f"{name}: student shape {tuple(student.shape)} and teacher shape {tuple(teacher.shape)} must be "
            f"equal and {ndim}-D; project or slice the student outputs to the teacher's shape first"
        )


def ce_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on gold labels, per instance.

    :param logits: (B, C) student logits.
    :param labels: (B,) long class indices in [0, C).
    :return: (B,) cross-entropy of each instance.
    """
    if logits.dim() != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(
            f"ce_loss: logits shape {tuple(logits.shape)} must be (B, C) and labels shape {tuple(labels.shape)} (B,)"
        )
    return F.cross_entropy(logits, labels.long(), reduction="none")


def regression_loss(preds: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Squared error on gold scores (STS-B), per instance.

    :param preds: (B, 1) or (B,) student predictions.
    :param targets: (B,) float targets.
    :return: (B,) squared error ``(pred - target)^2``.
    """
    flat = preds[:, 0] if preds.dim() == 2 and preds.shape[1] == 1 else preds
    if flat.dim() != 1 or flat.shape != targets.shape:
        raise ValueError(
            f"regression_loss: preds shape {tuple(preds.shape)} must be (B, 1) or (B,) with B matching "
            f"targets shape {tuple(targets.shape)}"
        )
    return (flat - targets.to(flat.dtype)) ** 2


def kd_kl_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton KD: ``T^2 * KL(softmax(t/T) || softmax(z/T))``, summed over classes, per instance.

    The ``T^2`` factor keeps the gradient scale independent of ``T``. Both sides go through
    ``log_softmax`` so large logits do not overflow; the teacher side is detached.

    :param student_logits: (B, C) student logits z.
    :param teacher_logits: (B, C) teacher logits t.
    :param temperature: T > 0 (the paper used 1).
    :return: (B,) KD loss of each instance.
    """
    _check_same_shape("kd_kl_loss", student_logits, teacher_logits, 2)
    if not math.isfinite(temperature) or temperature <= 0:
        raise ConfigError(f"kd_kl_loss: temperature={temperature!r} must be a finite number > 0")
    log_p_student = F.log_softmax(student_logits / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.detach() / temperature, dim=-1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="none", log_target=True).sum(dim=-1)
    return kl * temperature**2


def kd_mse_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """MSE between student and teacher logits (the original scripts' default), per instance.

    :param student_logits: (B, C) student logits.
    :param teacher_logits: (B, C) teacher logits (detached).
    :return: (B,) mean over classes of the squared difference.
    """
    _check_same_shape("kd_mse_loss", student_logits, teacher_logits, 2)
    return ((student_logits - teacher_logits.detach()) ** 2).mean(dim=-1)


def hidden_mse_loss(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor) -> torch.Tensor:
    """PKD-style normalised MSE between [CLS] vectors of mapped layer pairs, per instance.

    Each vector is L2-normalised over the hidden axis (``eps``-safe, so an all-zero vector stays
    zero instead of becoming NaN); the loss is the squared distance summed over H, averaged over
    the L layer pairs. The one definition serves every objective mode, unlike the original code.

    :param student_hidden: (B, L, H) student [CLS] states, already projected to the teacher width H.
    :param teacher_hidden: (B, L, H) teacher [CLS] states of the mapped layers (detached).
    :return: (B,) loss of each instance, in [0, 4].
    """
    _check_same_shape("hidden_mse_loss", student_hidden, teacher_hidden, 3)
    student = F.normalize(student_hidden, p=2.0, dim=-1, eps=_NORM_EPS)
    teacher = F.normalize(teacher_hidden.detach(), p=2.0, dim=-1, eps=_NORM_EPS)
    return ((student - teacher) ** 2).sum(dim=-1).mean(dim=-1)
