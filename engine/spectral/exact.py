"""Exact references: SVD (any f) and the Gram eigendecomposition on the smaller side.

These are the slow, obvious paths every approximation is tested against. Zero singular values
are mapped to zero by the power maps (the pseudo-inverse convention), never to inf/NaN.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from engine.spectral.common import check_matrix, from_wide, to_wide, work_dtype


def null_mask(s: Tensor) -> Tensor:
    """Singular values that are zero to working precision (relative to the largest)."""
    tol = s.amax(dim=-1, keepdim=True) * max(s.shape[-1], 1) * torch.finfo(s.dtype).eps
    return s <= tol


def svd_map(G: Tensor, *, f: Callable[[Tensor], Tensor], dtype: torch.dtype | None = None
            ) -> Tensor:
    """``U f(Σ) Vᵀ`` from a thin SVD computed in ``dtype``; returns that dtype, ``G``'s shape.

    ``f`` maps the singular-value vector (descending, shape ``(..., r)``) to new values.
    """
    check_matrix(G)
    d = work_dtype(G, dtype)
    U, s, Vh = torch.linalg.svd(G.to(d), full_matrices=False)
    return (U * f(s).unsqueeze(-2)) @ Vh


def _power_values(s: Tensor, c: float, delta: float) -> Tensor:
    """σ (σ² + δ²)^(−c), with 0 for numerically-zero σ when there is no floor."""
    out = s * (s * s + delta * delta).pow(-c)
    if delta == 0 and c > 0:
        out = torch.where(null_mask(s), torch.zeros_like(s), out)
    return out


def spectral_power(G: Tensor, *, c: float, delta: float = 0.0,
                   dtype: torch.dtype | None = None) -> Tensor:
    """``(G Gᵀ + δ² I)^(−c) G = U σ(σ² + δ²)^(−c) Vᵀ`` by SVD (zero σ ↦ 0 when δ = 0).

    ``c = 0`` returns G, ``c = ½`` the polar factor U Vᵀ, ``c > ½`` inverts the σ order.
    """
    _check_c(c)
    _check_delta(delta)
    return svd_map(G, f=lambda s: _power_values(s, c, delta), dtype=dtype)


def polar_svd(G: Tensor, *, dtype: torch.dtype | None = None) -> Tensor:
    """The polar factor ``U Vᵀ`` by SVD (the partial isometry ``U_r V_rᵀ`` if rank-deficient)."""
    return spectral_power(G, c=0.5, dtype=dtype)


def gram_eigh(G: Tensor, *, c: float, delta: float = 0.0,
              dtype: torch.dtype | None = None) -> Tensor:
    """``(G Gᵀ + δ² I)^(−c) G`` through ``eigh`` of the smaller Gram; returns ``dtype``.

    Forming the Gram squares the condition number: eigenvalues below ≈ eps·λ_max are noise, so
    for c ≥ ½ the result is only as good as κ² allows (measured in benchmarks/bench_maps.py).
    Numerically-zero eigenvalues map to zero when δ = 0.
    """
    _check_c(c)
    _check_delta(delta)
    check_matrix(G)
    d = work_dtype(G, dtype)
    X, transposed = to_wide(G.to(d))
    A = X @ X.mT  # (..., m, m), the small side
    w, Q = torch.linalg.eigh(A)
    w = w.clamp_min(0)
    f = (w + delta * delta).pow(-c)
    if delta == 0 and c > 0:
        tol = w.amax(dim=-1, keepdim=True) * w.shape[-1] * torch.finfo(d).eps
        f = torch.where(w <= tol, torch.zeros_like(f), f)
    Y = (Q * f.unsqueeze(-2)) @ (Q.mT @ X)
    return from_wide(Y, transposed)


def truncated_sgd(G: Tensor, *, fraction: float = 0.1, dtype: torch.dtype | None = None
                  ) -> Tensor:
    """``G`` with its top ``floor(fraction · min(m, n))`` singular values set to zero (by SVD)."""
    if not 0 <= fraction < 1:
        raise ValueError(f"fraction: must be in [0, 1) (got {fraction})")

    def f(s: Tensor) -> Tensor:
        k = int(fraction * s.shape[-1])
        out = s.clone()
        out[..., :k] = 0
        return out

    return svd_map(G, f=f, dtype=dtype)


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

    def f(s: Tensor) -> Tensor:
        u = torch.rand(s.shape, generator=generator, dtype=torch.float64)
        if distribution == "uniform":
            draw = low + (high - low) * u
        else:
            lo, hi = torch.log(torch.tensor(low, dtype=torch.float64)), torch.log(
                torch.tensor(high, dtype=torch.float64))
            draw = torch.exp(lo + (hi - lo) * u)
        draw = draw.to(device=s.device, dtype=s.dtype)
        return torch.where(null_mask(s), torch.zeros_like(s), draw)

    return svd_map(G, f=f, dtype=dtype)


def _check_c(c: float) -> None:
    if not 0 <= c <= 1:
        raise ValueError(f"c: must be in [0, 1] (got {c})")


def _check_delta(delta: float) -> None:
    if not delta >= 0:
        raise ValueError(f"delta: must be >= 0 (got {delta})")
