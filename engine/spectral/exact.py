"""Exact references: SVD (any f) and the Gram eigendecomposition on the smaller side.

These are the slow, obvious paths every approximation is tested against. Zero singular values
are mapped to zero by the power maps (the pseudo-inverse convention), never to inf/NaN: a
singular value is zero when σ ≤ max(m, n)·eps·σ_max (:func:`null_mask`).

Every map here divides G by a power of two first (exact, ``pow2_exponent``), works on singular
values of order one, and puts the scale back at the end, so its answer is the same at 1e±30 in
fp32 or 1e±300 in fp64 as at 1 wherever that answer is representable.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from approximant.engine.spectral.common import (
    check_matrix,
    empty_result,
    from_wide,
    map_errors,
    null_tolerance,
    pow2,
    pow2_exponent,
    scale_pow2,
    scaled_to,
    times_pow2,
    to_wide,
    work_dtype,
)


def null_mask(s: Tensor, size: int | None = None, dtype: torch.dtype | None = None) -> Tensor:
    """Singular values (descending or not, shape (…, r)) that are zero to working precision:
    σ ≤ size·eps·σ_max, ``size`` = max(m, n) of the matrix (default r), eps of ``dtype``
    (default s's: a reference in fp64 for an fp32 matrix passes fp32)."""
    top = s.amax(dim=-1, keepdim=True) if s.shape[-1] else s
    return s <= null_tolerance(top, size or s.shape[-1], 1, dtype or s.dtype)


def _svd(name: str, G: Tensor, dtype: torch.dtype | None
         ) -> Tensor | tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(U, ŝ, Vh, e)`` with ``G·2^(−e) = U diag(ŝ) Vh`` computed in the working dtype (e
    shaped (…, 1)), after the shared checks; or the answer itself when G is empty.

    The power of two is taken in G's own dtype, so an fp64 G too large for fp32 still works in
    fp32 (its singular values are ``ŝ·2^e``, whatever their magnitude)."""
    check_matrix(G)
    d = work_dtype(G, dtype)
    if (empty := empty_result(G, d)) is not None:
        return empty
    e = pow2_exponent(G)
    with map_errors(name, G):
        U, s, Vh = torch.linalg.svd(scaled_to(G, e, d), full_matrices=False)
    return U, s, Vh, e[..., 0]


def _assemble(U: Tensor, v: Tensor, Vh: Tensor, e_extra: Tensor | int = 0) -> Tensor:
    """``U diag(v·2^e_extra) Vh`` in U's dtype, for fp64 values ``v`` (…, r) of any magnitude.

    The values are brought to max ≈ 1 by a power of two first and the scale is applied to the
    product in two halves, so nothing overflows or underflows in between unless the answer
    itself does."""
    ev = pow2_exponent(v.unsqueeze(-2))[..., 0]  # (…, 1)
    vs = scale_pow2(v, -ev).to(U.dtype)
    return times_pow2((U * vs.unsqueeze(-2)) @ Vh, (ev + e_extra)[..., None])


def svd_map(G: Tensor, *, f: Callable[[Tensor], Tensor], dtype: torch.dtype | None = None
            ) -> Tensor:
    """``U f(Σ) Vᵀ`` from a thin SVD computed in ``dtype``; returns that dtype, ``G``'s shape.

    ``f`` maps the singular-value vector (descending, shape ``(..., r)``, in ``dtype``) to new
    values; it sees G's true singular values, so they must be representable in ``dtype``
    (the maps below work on scaled values instead).
    """
    parts = _svd("svd", G, dtype)
    if isinstance(parts, Tensor):
        return parts
    U, s, Vh, e = parts
    s = scale_pow2(s.double(), e).to(s.dtype)
    return _assemble(U, f(s).to(torch.float64), Vh)


def _power_values(s: Tensor, e: Tensor, c: float, delta: float, size: int
                  ) -> tuple[Tensor, Tensor]:
    """``(v, k)`` with ``v·2^k = σ(σ² + δ²)^(−c)`` for σ = ŝ·2^e (fp64 v, integer k (…, 1)).

    Both σ and δ are divided by the power of two t = 2^E just above the larger of σ_max and δ,
    so σ̃, δ̃ ≤ 1, and the value is ``r·m^(1−2c)·(1 + q²)^(−c)`` with m = max(σ̃, δ̃),
    r = σ̃/m, q = min(σ̃, δ̃)/m: no square of anything large or tiny is ever formed. With no
    floor, numerically-zero σ map to 0.
    """
    s64 = s.double()
    top = s64[..., :1]
    E = torch.frexp(top).exponent + e  # σ_max < 2^E
    if delta > 0:
        E = torch.maximum(E, torch.full_like(E, math.frexp(delta)[1]))
    st = scale_pow2(s64, e - E)
    dt = delta * pow2(-E, torch.float64)
    big = torch.maximum(st, dt)
    small = torch.minimum(st, dt)
    safe = torch.where(big > 0, big, torch.ones_like(big))
    v = (st / safe) * safe.pow(1 - 2 * c) * (1 + (small / safe) ** 2).pow(-c)
    v = torch.where(big > 0, v, torch.zeros_like(v))
    if delta == 0 and c > 0:
        v = torch.where(null_mask(s, size), torch.zeros_like(v), v)
    # 2^(E(1−2c)): the integer part stays an exponent, the fraction rides on the values.
    scale = E.double() * (1 - 2 * c)
    k = torch.floor(scale)
    return v * torch.exp2(scale - k), k.to(E.dtype)


def spectral_power(G: Tensor, *, c: float, delta: float = 0.0,
                   dtype: torch.dtype | None = None) -> Tensor:
    """``(G Gᵀ + δ² I)^(−c) G = U σ(σ² + δ²)^(−c) Vᵀ`` by SVD (zero σ ↦ 0 when δ = 0).

    ``c = 0`` returns G, ``c = ½`` the polar factor U Vᵀ, ``c > ½`` inverts the σ order.
    Scale-safe: huge or tiny G (and δ) give the answer wherever it is representable.
    """
    return _power("spectral_power", G, c, delta, dtype)


def _power(name: str, G: Tensor, c: float, delta: float, dtype: torch.dtype | None) -> Tensor:
    _check_c(c)
    _check_delta(delta)
    parts = _svd(name, G, dtype)
    if isinstance(parts, Tensor):
        return parts
    U, s, Vh, e = parts
    v, k = _power_values(s, e, c, delta, max(G.shape[-2:]))
    return _assemble(U, v, Vh, k)


def polar_svd(G: Tensor, *, dtype: torch.dtype | None = None) -> Tensor:
    """The polar factor ``U Vᵀ`` by SVD (the partial isometry ``U_r V_rᵀ`` if rank-deficient:
    σ ≤ max(m, n)·eps·σ_max counts as zero)."""
    return _power("svd_polar", G, 0.5, 0.0, dtype)


def gram_eigh(G: Tensor, *, c: float, delta: float = 0.0,
              dtype: torch.dtype | None = None) -> Tensor:
    """``(G Gᵀ + δ² I)^(−c) G`` through ``eigh`` of the smaller Gram; returns ``dtype``.

    Forming the Gram squares the condition number: eigenvalues below ≈ eps·λ_max are noise, so
    for c ≥ ½ the result is only as good as κ² allows (measured in benchmarks/bench_maps.py).
    Numerically-zero eigenvalues (λ ≤ m·eps·λ_max, i.e. σ ≤ √(m·eps)·σ_max) map to zero when
    δ = 0. G and δ are divided by one power of two first, so the Gram never overflows.
    """
    _check_c(c)
    _check_delta(delta)
    check_matrix(G)
    d = work_dtype(G, dtype)
    if (empty := empty_result(G, d)) is not None:
        return empty
    e = pow2_exponent(G, delta)  # max(max|G|, δ) ∈ [2^(e−1), 2^e)
    X, transposed = to_wide(scaled_to(G, e, d))
    A = X @ X.mT  # (..., m, m), the small side
    with map_errors("gram_eigh", G):
        w, Q = torch.linalg.eigh(A)
    w = w.clamp_min(0).double()
    dd = delta * pow2(-e[..., 0], torch.float64)  # δ/2^e ≤ 1, (…, 1)
    base = w + dd * dd
    f = torch.where(base > 0, base, torch.ones_like(base)).pow(-c)
    f = torch.where(base > 0, f, torch.zeros_like(f))
    if delta == 0 and c > 0:
        tol = w.amax(dim=-1, keepdim=True) * w.shape[-1] * torch.finfo(d).eps
        f = torch.where(w <= tol, torch.zeros_like(f), f)
    # (GGᵀ + δ²)^(−c)G = 2^(e(1−2c)) (XXᵀ + δ̂²)^(−c) X: the integer part of the exponent
    # is applied exactly at the end, its fraction rides on f.
    scale = e[..., 0].double() * (1 - 2 * c)
    k = torch.floor(scale)
    f = f * torch.exp2(scale - k)
    fe = pow2_exponent(f.unsqueeze(-2))[..., 0]
    Y = (Q * scale_pow2(f, -fe).to(d).unsqueeze(-2)) @ (Q.mT @ X)
    return from_wide(times_pow2(Y, (fe + k.to(fe.dtype))[..., None]), transposed)


def truncation_count(r: int, fraction: float) -> int:
    """How many of the r top singular values :func:`truncated_sgd` zeroes: ⌊fraction·r⌋
    (rounded with a 1e-9 allowance, so 0.29·100 is 29), but at least one when fraction > 0
    and r > 1, and never all r (a 1×n gradient keeps its only direction)."""
    if fraction <= 0 or r <= 1:
        return 0
    return min(r - 1, max(1, math.floor(fraction * r + 1e-9)))


def truncated_sgd(G: Tensor, *, fraction: float = 0.1, dtype: torch.dtype | None = None
                  ) -> Tensor:
    """``G`` with its top :func:`truncation_count` singular values set to zero (by SVD)."""
    if not 0 <= fraction < 1:
        raise ValueError(f"fraction: must be in [0, 1) (got {fraction})")
    parts = _svd("truncated_sgd", G, dtype)
    if isinstance(parts, Tensor):
        return parts
    U, s, Vh, e = parts
    v = s.double()
    v[..., :truncation_count(s.shape[-1], fraction)] = 0
    return _assemble(U, v, Vh, e)


def kaon_iid(G: Tensor, *, low: float = 0.5, high: float = 1.5, distribution: str = "uniform",
             generator: torch.Generator | None = None, dtype: torch.dtype | None = None
             ) -> Tensor:
    """``U S Vᵀ`` with S i.i.d. from ``distribution`` on [low, high], fresh at every call.

    Draws come from ``generator`` (on the CPU, then moved), so a seeded run is reproducible on
    any device. Directions with σ = 0 (the null space) stay zero: noise there would not be a
    function of G.
    """
    if not 0 < low <= high:
        raise ValueError(f"low, high: need 0 < low <= high (got low={low}, high={high})")
    if distribution not in ("uniform", "loguniform"):
        raise ValueError(
            f"distribution: must be 'uniform' or 'loguniform' (got {distribution!r})"
        )
    parts = _svd("kaon_iid", G, dtype)
    if isinstance(parts, Tensor):
        return parts
    U, s, Vh, _ = parts
    u = torch.rand(s.shape, generator=generator, dtype=torch.float64)
    if distribution == "uniform":
        draw = low + (high - low) * u
    else:
        lo, hi = (torch.log(torch.tensor(x, dtype=torch.float64)) for x in (low, high))
        draw = torch.exp(lo + (hi - lo) * u)
    draw = draw.to(device=s.device)
    return _assemble(U, torch.where(null_mask(s, max(G.shape[-2:])), 0.0, draw), Vh)


def _check_c(c: float) -> None:
    if not 0 <= c <= 1:
        raise ValueError(f"c: must be in [0, 1] (got {c})")


def _check_delta(delta: float) -> None:
    if not delta >= 0:
        raise ValueError(f"delta: must be >= 0 (got {delta})")
