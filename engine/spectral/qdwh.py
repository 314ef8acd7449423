"""QDWH polar iteration (Nakatsukasa, Bai & Gygi 2010): QR form, then Cholesky once safe."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from approximant.engine.spectral.common import (
    check_matrix,
    check_null,
    drop_null,
    empty_result,
    from_wide,
    map_errors,
    pow2_exponent,
    safe_scale,
    scaled_to,
    stacked_q,
    to_wide,
    work_dtype,
)

# The Cholesky form squares the condition of I + c XᵀX; below this c it loses at most a few
# digits (Nakatsukasa & Higham 2013 use the same switch).
CHOLESKY_SWITCH = 100.0


def qdwh_coefficients(lo: float) -> tuple[float, float, float]:
    """Dynamically weighted (a, b, c) for the lower bound ``lo`` on the normalised σ (closed form).

    ``σ ↦ σ(a + bσ²)/(1 + cσ²)`` is the best type-(3, 2) rational approximation of sign on
    [lo, 1] scaled to max 1; it maps [lo, 1] into [φ(lo), 1].
    """
    lo = min(max(lo, 1e-30), 1.0)
    l2 = lo * lo
    d = (4.0 * (1.0 - l2) / (l2 * l2)) ** (1.0 / 3.0)
    sq = math.sqrt(1.0 + d)
    a = sq + 0.5 * math.sqrt(max(8.0 - 4.0 * d + 8.0 * (2.0 - l2) / (l2 * sq), 0.0))
    b = (a - 1.0) ** 2 / 4.0
    c = a + b - 1.0
    return a, b, c


@dataclass
class QDWHInfo:
    """What the iteration did: factorisations by kind and the scalar lower bound per step."""

    qr_steps: int = 0
    cholesky_steps: int = 0
    lower_bounds: list[float] = field(default_factory=list)

    @property
    def iterations(self) -> int:
        return self.qr_steps + self.cholesky_steps


def qdwh_polar(
    G: Tensor,
    *,
    l0: float | None = None,
    dtype: torch.dtype | None = None,
    max_iter: int = 10,
    null: str = "keep",
) -> tuple[Tensor, QDWHInfo]:
    """The polar factor of ``G`` by QDWH, in ``dtype``, with the iteration record.

    ``l0`` must be a lower bound on σ_min/‖G‖₂ (default: eps/20 of the dtype, which costs
    6 iterations in fp64); components below it converge only partially, and exact zeros
    stay zero. Stops once the scalar bound is within 10·eps of 1, i.e. at working accuracy.

    ``null``: what happens to G's numerically-null directions (σ ≤ max(m, n)·eps·σ_max, e.g.
    the rounding noise of a rank-deficient matrix). "keep" (default): whatever the iteration
    makes of them, anywhere in [0, 1] (≈ 1 once σ ≥ l0; a κ = 1e16 matrix is "rank
    deficient" by that threshold and still gets its full polar factor). "zero": projected
    out, as ``svd_polar`` does (one extra m×m eigh, see ``common.drop_null``).
    G is divided by a power of two first, so any finite scale works.
    """
    check_matrix(G)
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        # Fewer than one step returns the scaled input, which is not a polar factor.
        raise ValueError(f"max_iter: must be an integer >= 1 (got {max_iter!r})")
    check_null(null)
    d = work_dtype(G, dtype)
    eps = torch.finfo(d).eps
    # eps/20: covers κ up to ≈ 1/eps after the 1.05 safety of the scale, still ≤ 6 steps.
    lo = eps / 20 if l0 is None else float(l0)
    if not 0 < lo <= 1:
        raise ValueError(f"l0: must be in (0, 1] (got {l0})")
    if (empty := empty_result(G, d)) is not None:
        return empty, QDWHInfo()
    # Exact, and before the cast: the norm estimate squares G (it overflowed from ‖G‖₂ ≈ 1e10
    # in fp32 and the iteration then ran unscaled).
    X, transposed = to_wide(scaled_to(G, pow2_exponent(G), d))
    with map_errors("qdwh", G):
        T, info = _iterate(X.mT, lo, eps, max_iter)
    Y = T.mT
    if null == "zero":
        Y = drop_null(X, Y, 0.5)
    return from_wide(Y, transposed), info


def _iterate(T: Tensor, lo: float, eps: float, max_iter: int) -> tuple[Tensor, QDWHInfo]:
    """QDWH on the tall (…, n, m) ``T`` (max-abs ≈ 1): QR steps, then Cholesky once safe."""
    T = T / safe_scale(T)
    m = T.shape[-1]
    eye = torch.eye(m, dtype=T.dtype, device=T.device)
    info = QDWHInfo()
    while 1.0 - lo > 10 * eps and info.iterations < max_iter:
        a, b, c = qdwh_coefficients(lo)
        if c > CHOLESKY_SWITCH:
            # [√c T; I] = [Q₁; Q₂] R  ⇒  T (I + c TᵀT)⁻¹ = Q₁ Q₂ᵀ / √c, never forming TᵀT.
            Q = stacked_q(T.mT, math.sqrt(c))
            Q1, Q2 = Q[..., :-m, :], Q[..., -m:, :]
            T = (b / c) * T + ((a - b / c) / math.sqrt(c)) * (Q1 @ Q2.mT)
            info.qr_steps += 1
        else:
            Z = eye + c * (T.mT @ T)
            L = torch.linalg.cholesky(Z)
            T = (b / c) * T + (a - b / c) * torch.cholesky_solve(T.mT, L).mT
            info.cholesky_steps += 1
        lo = min(lo * (a + b * lo * lo) / (1.0 + c * lo * lo), 1.0)
        info.lower_bounds.append(lo)
    return T, info


def qdwh(G: Tensor, *, l0: float | None = None, dtype: torch.dtype | None = None,
         max_iter: int = 10, null: str = "keep") -> Tensor:
    """The polar factor ``U Vᵀ`` of ``G`` by QDWH (see :func:`qdwh_polar`); returns ``dtype``."""
    return qdwh_polar(G, l0=l0, dtype=dtype, max_iter=max_iter, null=null)[0]
