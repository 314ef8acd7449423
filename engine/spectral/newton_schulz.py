"""Newton–Schulz polynomial iterations (matmul only): polar approximations and Kaon's chaos map."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from engine.spectral.common import check_matrix, from_wide, to_wide, work_dtype
from engine.spectral.schedules import get_schedule


def odd_quintic_iteration(
    G: Tensor,
    coefficients: Sequence[tuple[float, float, float]],
    *,
    dtype: torch.dtype,
    eps: float = 1e-7,
    norm_safety: float = 1.0,
    after_step: Callable[[int, Tensor], None] | None = None,
) -> Tensor:
    """Apply ``X ← aX + b(XXᵀ)X + c(XXᵀ)²X`` per row of ``coefficients`` to ``G/‖G‖_F``.

    Returns ``U p(Σ/‖G‖_F) Vᵀ`` in ``dtype`` (not ``U Vᵀ``: p is whatever the schedule makes
    of each normalised singular value). The arithmetic is exactly torch.optim.Muon's for 2-D
    input (same cast, same ``addmm`` calls in the same order), so a bf16 run matches it bit for
    bit; 3-D input runs as one batched ``baddbmm`` chain.
    """
    X = G.to(dtype)  # may alias G: everything below is out of place
    X, transposed = to_wide(X)
    norm = X.norm() if X.ndim == 2 else X.norm(dim=(-2, -1), keepdim=True)
    if norm_safety != 1.0:
        norm = norm * norm_safety
    X = X / norm.clamp(min=eps)
    mm = torch.addmm if X.ndim == 2 else torch.baddbmm
    for i, (a, b, c) in enumerate(coefficients):
        A = X @ X.mT
        B = mm(A, A, A, beta=b, alpha=c)
        X = mm(X, B, X, beta=a)
        if after_step is not None:  # the lab watches every iterate; training passes None
            after_step(i, from_wide(X, transposed))
    return from_wide(X, transposed)


def newton_schulz(
    G: Tensor,
    *,
    schedule: str = "keller",
    steps: int | None = None,
    dtype: torch.dtype | None = None,
    eps: float = 1e-7,
) -> Tensor:
    """Newton–Schulz polar approximation with a named schedule (engine.spectral.schedules).

    ``steps`` defaults to the schedule's own length parameter. Returns roughly ``U S′ Vᵀ`` in
    ``dtype``: for "keller" S′ lies in about [0.68, 1.13] for σ/σ_max ∈ [1e-3, 1]; convergent
    schedules drive S′ to 1 on their design interval. bf16 is allowed (matmul only).
    """
    check_matrix(G)
    sched = get_schedule(schedule)
    d = work_dtype(G, dtype, allow_half=True)
    return odd_quintic_iteration(
        G, newton_schulz_rows(schedule, steps), dtype=d, eps=eps, norm_safety=sched.norm_safety
    )


def newton_schulz_rows(schedule: str, steps: int | None) -> list[tuple[float, float, float]]:
    """The (a, b, c) rows ``newton_schulz`` applies: ``steps`` of them (default: the
    schedule's own length), checked to lie in [1, 100]."""
    sched = get_schedule(schedule)
    n = int(sched.params.get("steps", len(sched.rows))) if steps is None else int(steps)
    if not 1 <= n <= 100:
        raise ValueError(f"steps: must be in [1, 100] (got {n})")
    return sched.coefficients(n)


KAON_GAIN = 4.1
# Top of the invariant interval of s ↦ 4.1 s (1 − s²)², reached at s = 1/√5 (1.1735…); dividing
# by the slightly larger 1.175 keeps every output singular value strictly below 1.
KAON_OUT_SCALE = 1.175


def kaon_chaos(G: Tensor, *, steps: int = 5, dtype: torch.dtype | None = None,
               eps: float = 1e-7) -> Tensor:
    """Kaon's chaotic map: ``X₀ = G/‖G‖_F``, ``steps``× ``X ← 4.1 (I − XXᵀ)² X``, then /1.175.

    ``4.1 (I − A)² X = 4.1 X − 8.2 A X + 4.1 A² X`` is an odd quintic, so it runs on the
    Newton–Schulz kernel at Muon's cost. Returns ``U s(Σ) Vᵀ`` with every s in [0, 0.999]:
    deterministic, but not monotone in σ (noise-like singular values).
    """
    check_matrix(G)
    d = work_dtype(G, dtype, allow_half=True)
    return odd_quintic_iteration(G, kaon_rows(steps), dtype=d, eps=eps) / KAON_OUT_SCALE


def kaon_rows(steps: int) -> list[tuple[float, float, float]]:
    """The rows of ``kaon_chaos``: ``steps`` times 4.1(1 − s²)² as (a, b, c), steps in [1, 100]."""
    if not 1 <= steps <= 100:
        raise ValueError(f"steps: must be in [1, 100] (got {steps})")
    return [(KAON_GAIN, -2 * KAON_GAIN, KAON_GAIN)] * steps
