"""Newton–Schulz polynomial iterations (matmul only): polar approximations and Kaon's chaos map."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from approximant.engine.spectral.common import (
    check_matrix,
    empty_result,
    from_wide,
    pow2_exponent,
    scaled_to,
    to_wide,
    work_dtype,
)
from approximant.engine.spectral.schedules import get_schedule


def odd_quintic_iteration(
    G: Tensor,
    coefficients: Sequence[tuple[float, float, float]],
    *,
    dtype: torch.dtype,
    eps: float = 1e-7,
    norm_safety: float = 1.0,
    s4_guard: float = 0.0,
    after_step: Callable[[int, Tensor], None] | None = None,
) -> Tensor:
    """Apply ``X ← aX + b(XXᵀ)X + c(XXᵀ)²X`` per row of ``coefficients`` to ``G/‖G‖_F``.

    Returns ``U p(Σ/‖G‖_F) Vᵀ`` in ``dtype`` (not ``U Vᵀ``: p is whatever the schedule makes
    of each normalised singular value). The arithmetic is exactly torch.optim.Muon's for 2-D
    input (same cast, same ``addmm`` calls in the same order), so a bf16 run matches it bit for
    bit; 3-D input runs as one batched ``baddbmm`` chain.

    G is first divided by the power of two that brings its largest entry into [½, 1): exact,
    so in the normal range every bit is as without it, while ‖G‖_F can no longer overflow
    (all-zero output at 1e30 in fp32) or underflow at any finite scale. ``eps`` floors the
    norm after that scaling, so it only guards the zero matrix (torch.optim.Muon's
    ``clamp(min=eps)`` leaves a gradient with ‖G‖_F < eps un-normalised).

    ``s4_guard`` θ > 0 normalises by ``max(‖G‖_F, θ‖G‖_S4)`` instead, ``‖G‖_S4 = ‖GGᵀ‖_F^½``
    (Kaon's rank-one guard): the Gram it needs is the first step's own, so it costs m² work.
    """
    e = pow2_exponent(G)
    X = scaled_to(G, e, dtype)
    X, transposed = to_wide(X)
    dims = None if X.ndim == 2 else (-2, -1)
    norm = X.norm() if dims is None else X.norm(dim=dims, keepdim=True)
    A: Tensor | None = None
    if s4_guard > 0:
        A = X @ X.mT
        s4 = (A.norm() if dims is None else A.norm(dim=dims, keepdim=True)).sqrt()
        norm = torch.maximum(norm, s4_guard * s4)
    if norm_safety != 1.0:
        norm = norm * norm_safety
    norm = norm.clamp(min=eps)
    X = X / norm
    if A is not None:
        A = A / (norm * norm)
    mm = torch.addmm if X.ndim == 2 else torch.baddbmm
    for i, (a, b, c) in enumerate(coefficients):
        if A is None:
            A = X @ X.mT
        B = mm(A, A, A, beta=b, alpha=c)
        X = mm(X, B, X, beta=a)
        A = None
        if after_step is not None:  # the lab watches every iterate; training passes None
            after_step(i, from_wide(X, transposed))
    return from_wide(X, transposed)


@dataclass(frozen=True)
class QuinticPlan:
    """What a matmul-only map applies: rows, input normalisation, output divisor, S4 guard.
    The lab steps through the same plan, so its iterates are the map's own."""

    rows: list[tuple[float, float, float]]
    norm_safety: float = 1.0
    out_scale: float = 1.0
    s4_guard: float = 0.0

    def run(self, G: Tensor, dtype: torch.dtype, eps: float = 1e-7,
            after_step: Callable[[int, Tensor], None] | None = None) -> Tensor:
        Y = odd_quintic_iteration(G, self.rows, dtype=dtype, eps=eps,
                                  norm_safety=self.norm_safety, s4_guard=self.s4_guard,
                                  after_step=after_step)
        return Y / self.out_scale if self.out_scale != 1.0 else Y


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
    ``dtype``: for "keller" S′ lies in about [0.68, 1.13] for σ/σ_max ∈ [1e-2, 1]; convergent
    schedules drive S′ to 1 on their design interval. bf16 is allowed (matmul only); a
    schedule without the margin for the dtype's rounding runs with it added (CANS outside
    fp64, see ``NSSchedule.plan``). Scale-invariant over the dtype's whole finite range.
    """
    check_matrix(G)
    d = work_dtype(G, dtype, allow_half=True)
    plan = newton_schulz_plan(schedule, steps, d)
    if (empty := empty_result(G, d)) is not None:
        return empty
    return plan.run(G, d, eps)


def newton_schulz_plan(schedule: str, steps: int | None, dtype: torch.dtype) -> QuinticPlan:
    """The plan ``newton_schulz`` runs in ``dtype``: ``steps`` rows (default: the schedule's
    own length, checked to lie in [1, 100]) with the rounding margin the dtype needs."""
    sched = get_schedule(schedule)
    n = int(sched.params.get("steps", len(sched.rows))) if steps is None else int(steps)
    if not 1 <= n <= 100:
        raise ValueError(f"steps: must be in [1, 100] (got {n})")
    rows, norm_safety = sched.plan(n, dtype)
    return QuinticPlan(rows, norm_safety)


def newton_schulz_rows(schedule: str, steps: int | None) -> list[tuple[float, float, float]]:
    """The table's rows for ``steps`` steps (default: the schedule's own length), before any
    dtype margin: how many steps a run takes and what the table says."""
    return get_schedule(schedule).coefficients(len(newton_schulz_plan(schedule, steps,
                                                                      torch.float64).rows))


KAON_GAIN = 4.1
# Top of the invariant interval of s ↦ 4.1 s (1 − s²)², reached at s = 1/√5 (1.1735…); dividing
# by the slightly larger 1.175 keeps every output singular value strictly below 1.
KAON_OUT_SCALE = 1.175
# s = 1 is a root of the map, and σ/‖G‖_F = 1 exactly when G has rank one (a batch-1 linear
# layer's gradient): five steps then return ≈ 0. Normalising by max(‖G‖_F, 1.1·‖G‖_S4) puts a
# rank-one G at s = 1/1.1, whose five-step image is 0.676 (slope −5 at s, a flat start; bf16's
# rounding of later steps still moves it, 0.87 measured), and changes nothing while
# ‖G‖_F ≥ 1.1·‖G‖_S4, e.g. whenever the two largest singular values are equal.
KAON_S4_GUARD = 1.1


def kaon_chaos(G: Tensor, *, steps: int = 5, dtype: torch.dtype | None = None,
               eps: float = 1e-7) -> Tensor:
    """Kaon's chaotic map: ``X₀ = G/N``, ``steps``× ``X ← 4.1 (I − XXᵀ)² X``, then /1.175.

    ``4.1 (I − A)² X = 4.1 X − 8.2 A X + 4.1 A² X`` is an odd quintic, so it runs on the
    Newton–Schulz kernel at Muon's cost. Returns ``U s(Σ) Vᵀ`` with every s in [0, 0.999]:
    deterministic, but not monotone in σ (noise-like singular values).

    ``N = max(‖G‖_F, 1.1·‖G‖_S4)``: the published ``‖G‖_F`` unless G is nearly rank one,
    where σ/‖G‖_F → 1 is a root of the map and the update would vanish; a rank-one G gets
    s = 0.676 (``KAON_S4_GUARD``).
    """
    check_matrix(G)
    d = work_dtype(G, dtype, allow_half=True)
    plan = kaon_plan(steps)
    if (empty := empty_result(G, d)) is not None:
        return empty
    return plan.run(G, d, eps)


def kaon_plan(steps: int) -> QuinticPlan:
    """The plan of ``kaon_chaos``: ``steps`` (in [1, 100]) times 4.1(1 − s²)² as (a, b, c)."""
    if not 1 <= steps <= 100:
        raise ValueError(f"steps: must be in [1, 100] (got {steps})")
    rows = [(KAON_GAIN, -2 * KAON_GAIN, KAON_GAIN)] * steps
    return QuinticPlan(rows, out_scale=KAON_OUT_SCALE, s4_guard=KAON_S4_GUARD)
