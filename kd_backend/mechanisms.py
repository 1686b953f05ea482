"""The paper's dynamic mechanisms as pure functions of the student's uncertainty.

Teacher adoption (:func:`teacher_weights`) and objective weighting (:func:`objective_weights`)
turn per-instance uncertainties ``u`` in [0, 1] (1 = most uncertain, see
:mod:`kd_backend.uncertainty`) into instance weights. Data selection is
:func:`kd_backend.uncertainty.select_most_uncertain`. Every weight is computed without gradient.

Teachers are ordered by size, SMALLEST FIRST (index 0 = BERT-base, 1 = BERT-large in the paper).
The paper defines adoption for two teachers; DynaKD generalises it to K teachers so that K = 2
gives exactly the paper's rule:

- ``hard``: sort the batch by ``u`` descending (stable, lower index first on ties); sorted
  position ``p`` (0 = most uncertain) goes to teacher ``g`` where
  ``floor(g*B/K) <= p < floor((g+1)*B/K)``. For K = 2 the ``floor(B/2)`` most uncertain instances
  learn from the small teacher and the rest from the large one; groups may be empty when B < K.
- ``soft``: the batch mean ``u_bar`` places the student at ``s = (1 - u_bar) * (K - 1)`` on the line
  of teachers small -> large, and teacher ``k`` gets the triangular kernel weight
  ``max(0, 1 - |k - s|)``: at most two neighbouring teachers share the weight and the row sums
  to 1. For K = 2 this is ``(u_bar, 1 - u_bar)``; a maximally uncertain student gets the smallest
  teacher, a fully confident one the largest.
- ``soft-instance``: the same kernel with each instance's own ``u_i``.
"""

from __future__ import annotations

import torch

from kd_backend.errors import ConfigError
from kd_backend.plan import OBJECTIVE_MODES, TEACHER_MODES


def _check_uncertainty(uncertainty: torch.Tensor, where: str, check_range: bool = True) -> torch.Tensor:
    """The detached (B,) floating uncertainty after checking its shape and (optionally) its range.

    The range check reads the values back to the host, which on CUDA is a device synchronisation;
    the training loop, whose uncertainties come from :func:`normalized_entropy`, skips it.
    """
    if uncertainty.dim() != 1:
        raise ValueError(f"{where}: uncertainty shape {tuple(uncertainty.shape)} must be (B,)")
    u = uncertainty.detach()
    if not u.is_floating_point():
        u = u.float()
    if check_range and not bool(((u >= 0) & (u <= 1)).all()):
        raise ValueError(
            f"{where}: uncertainty values must lie in [0, 1] (got min {u.min().item()}, max {u.max().item()}); "
            "use kd_backend.uncertainty.uncertainty_scores"
        )
    return u


def _triangular_weights(position: torch.Tensor, num_teachers: int) -> torch.Tensor:
    """(B, K) weights ``max(0, 1 - |k - s|)`` for positions ``s`` (B,) in [0, K-1]."""
    k = torch.arange(num_teachers, device=position.device, dtype=position.dtype)
    return (1.0 - (k[None, :] - position[:, None]).abs()).clamp(min=0.0)


def teacher_weights(
    mode: str,
    uncertainty: torch.Tensor | None,
    num_teachers: int,
    fixed: tuple[float, ...] | None = None,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    check_range: bool = True,
) -> torch.Tensor:
    """Per-instance teacher weights for dynamic teacher adoption (see the module docstring).

    :param mode: one of :data:`kd_backend.plan.TEACHER_MODES`.
    :param uncertainty: (B,) student uncertainty in [0, 1], higher = more uncertain; required by
        every mode but ``fixed``.
    :param num_teachers: K >= 1, teachers ordered smallest first.
    :param fixed: weights for ``mode='fixed'``, normalised to sum 1; None = uniform.
    :param batch_size: B when ``uncertainty`` is None (``fixed`` mode needs one of the two).
    :param device: where the weights live when ``uncertainty`` is None (default CPU); otherwise
        they follow ``uncertainty``.
    :param check_range: raise if an uncertainty lies outside [0, 1] (a host sync on CUDA; the
        training loop turns it off for its own entropies).
    :return: (B, K) detached weights; every row sums to 1. K = 1 gives all ones.
    """
    if mode not in TEACHER_MODES:
        raise ConfigError(f"teacher_mode={mode!r} is not one of {list(TEACHER_MODES)}")
    if not isinstance(num_teachers, int) or num_teachers < 1:
        raise ConfigError(f"num_teachers={num_teachers!r} must be an integer >= 1")
    if mode != "fixed" and uncertainty is None:
        raise ConfigError(
            f"teacher_mode={mode!r} needs the student's uncertainty; pass uncertainty scores "
            "or use teacher_mode='fixed'"
        )
    with torch.no_grad():
        if uncertainty is not None:  # fixed mode reads only B and the device
            u = _check_uncertainty(uncertainty, "teacher_weights", check_range) if mode != "fixed" else uncertainty.detach()
            num_rows, device = u.shape[0], u.device
            dtype = u.dtype if u.is_floating_point() else torch.float32
        elif batch_size is not None:
            num_rows, dtype = batch_size, torch.float32
        else:
            raise ValueError("teacher_weights: pass uncertainty or batch_size so the weights have one row per instance")

        if mode == "fixed":
            if fixed is None:
                row = torch.full((num_teachers,), 1.0 / num_teachers, device=device, dtype=dtype)
            else:
                if len(fixed) != num_teachers:
                    raise ConfigError(
                        f"teacher_weights={tuple(fixed)!r} has {len(fixed)} weights but there are {num_teachers} "
                        "teachers; give one weight per teacher (smallest first)"
                    )
                if any(not w >= 0 for w in fixed) or sum(fixed) <= 0:
                    raise ConfigError(f"teacher_weights={tuple(fixed)!r} must be >= 0 with a positive sum")
                row = torch.tensor([float(w) for w in fixed], device=device, dtype=dtype)
                row = row / row.sum()
            return row.expand(num_rows, num_teachers).clone()

        if num_teachers == 1:
            return torch.ones(num_rows, 1, device=device, dtype=dtype)
        if mode == "hard":
            weights = torch.zeros(num_rows, num_teachers, device=device, dtype=dtype)
            order = torch.sort(u, descending=True, stable=True).indices
            for g in range(num_teachers):
                start, stop = g * num_rows // num_teachers, (g + 1) * num_rows // num_teachers
                weights[order[start:stop], g] = 1.0
            return weights
        if mode == "soft":
            u = u.mean().expand(num_rows)
        return _triangular_weights((1.0 - u) * (num_teachers - 1), num_teachers)


def objective_weights(
    mode: str,
    uncertainty: torch.Tensor | None,
    batch_size: int,
    device: torch.device | str | None = None,
    check_range: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-instance weights of the KD and hidden-alignment losses (dynamic objective weighting).

    ``static`` gives (1, 1); ``uncertainty`` gives (1 - u, u): confident instances lean on the
    output distribution, uncertain ones on hidden-state alignment; ``uncertainty-r`` swaps them.

    :param mode: one of :data:`kd_backend.plan.OBJECTIVE_MODES`.
    :param uncertainty: (B,) student uncertainty in [0, 1]; required unless ``mode='static'``.
    :param batch_size: B.
    :param device: where the ``static`` weights live when ``uncertainty`` is None (default CPU).
    :param check_range: raise if an uncertainty lies outside [0, 1] (see :func:`teacher_weights`).
    :return: ``(kd_weight, hidden_weight)``, each (B,) and detached.
    """
    if mode not in OBJECTIVE_MODES:
        raise ConfigError(f"objective={mode!r} is not one of {list(OBJECTIVE_MODES)}")
    with torch.no_grad():
        if mode == "static":
            device = uncertainty.device if uncertainty is not None else device
            ones = torch.ones(batch_size, device=device)
            return ones, ones.clone()
        if uncertainty is None:
            raise ConfigError(
                f"objective={mode!r} needs the student's uncertainty; pass uncertainty scores or use objective='static'"
            )
        u = _check_uncertainty(uncertainty, "objective_weights", check_range)
        if u.shape[0] != batch_size:
            raise ValueError(f"objective_weights: uncertainty has {u.shape[0]} values but batch_size={batch_size}")
        return (1.0 - u, u.clone()) if mode == "uncertainty" else (u.clone(), 1.0 - u)
