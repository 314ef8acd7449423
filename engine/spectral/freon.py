"""Freon's rational iteration: ``(G Gᵀ + δ² I)^(−c) G`` without an SVD and without squaring κ.

Notation (wide orientation, X is m×n with m ≤ n, A = X Xᵀ): each step applies
``u(A) = (aI + bA)(I + gA)⁻¹`` with coefficients from engine/spectral/freon_coefficients.py and
drives the Gram by ``A ← A u(A)^p``. Everything is a function of A₀, so everything commutes and

    A₀^(−c) X₀ = F · C · A_T^(−c) · X₁,

where the QR phase moves ``X ← u(A)^(p/2) X`` and accumulates ``F = ∏ u^(p(2c−1)/2)`` (±1 per
step for the supported c), and the Cholesky phase, on the m×m Gram of X₁, accumulates
``C = ∏ u^(cp)``. The exponents are integers by the choice of p per c, so the identity holds for
*any* coefficients: coefficient quality buys speed, never correctness. ``A_T`` ends within the
stopping tolerance of a multiple of I and its ``−c`` power is a 3-term binomial series.

The QR phase never forms X Xᵀ: with ``[√g Xᵀ; I] = [Q₁; Q₂] R`` one has ``(I + gA)⁻¹ = Q₂ Q₂ᵀ``
and ``(I + gA)⁻ʲ X = Q₂ (Q₂ᵀ Q₂)^(j−1) Q₁ᵀ / √g``. The floor δ is exact: the iteration runs on
``[X, δI]`` (whose Gram is A + δ²I) and the first n columns are kept. ``c = 1`` is one
least-squares QR. ``c = 0`` is the identity. Derivation and measurements: docs/freon.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import torch
from torch import Tensor

from engine.spectral.common import check_matrix, from_wide, safe_scale, to_wide, work_dtype
from engine.spectral.freon_coefficients import ORDERS, FreonStep, freon_schedule

SUPPORTED_C = (Fraction(0), *sorted(ORDERS), Fraction(1))

# Default lower bounds on σ_min/σ_max (the user's assertion about the input): components below
# them are only partly converged, which acts as a soft floor. Default stopping tolerances on
# 1 − L keep the binomial finish's error (≈ (1 − L)³/8) below the dtype's resolution.
_DEFAULT_L0 = {torch.float32: 1e-6, torch.float64: 1e-10}
_DEFAULT_TOL = {torch.float32: 1e-3, torch.float64: 1e-5}
# Below this Gram lower bound the QR form is used: the Cholesky form needs cond(A) ≲ 1e3.
QR_SWITCH = 1e-3


@dataclass(frozen=True)
class FreonInfo:
    """Factorisations used (the cost driver) and the coefficient schedule that was applied."""

    qr_steps: int
    cholesky_steps: int
    schedule: tuple[FreonStep, ...]

    @property
    def factorisations(self) -> int:
        return self.qr_steps + self.cholesky_steps


def as_fraction(c: float | Fraction) -> Fraction:
    """``c`` as one of the supported fractions, or ``ValueError`` naming them."""
    frac = Fraction(c).limit_denominator(12)
    if abs(float(frac) - float(c)) > 1e-9 or frac not in SUPPORTED_C:
        allowed = ", ".join(str(k) for k in SUPPORTED_C)
        raise ValueError(f"c: the rational iteration supports {allowed} (got {c})")
    return frac


def _quantise_l0(l0: float) -> float:
    """Round ℓ₀ *down* to the grid 10^(k/4): still a lower bound, and the cache key repeats."""
    return 10.0 ** (math.floor(4.0 * math.log10(l0)) / 4.0)


def freon_power(
    G: Tensor,
    *,
    c: float | Fraction,
    delta: float = 0.0,
    l0: float | None = None,
    dtype: torch.dtype | None = None,
    tol: float | None = None,
    max_steps: int = 8,
    norm_bound: float | None = None,
) -> tuple[Tensor, FreonInfo]:
    """``(G Gᵀ + δ² I)^(−c) G`` in ``dtype`` (G's shape) and the iteration record.

    ``l0`` is a lower bound on σ_min/σ_max of ``[G, δI]`` (default 1e-6 in fp32, 1e-10 in fp64);
    ``max_steps`` caps the factorisations. ``δ = 0`` with c > ½ on a rank-deficient G is
    undefined; the QR phase then maps null directions through u's finite slope, so pass δ > 0.

    ``norm_bound``: a caller-known upper bound on ‖G‖_F (1 after Frobenius prescaling). Then
    the scale is ``√(norm_bound² + mδ²)`` with no power iteration and, when δ > 0 and ``l0`` is
    None, ``l0`` is the rigorous ``δ / scale``: everything is known from shapes, no host sync.
    """
    check_matrix(G)
    if not delta >= 0:
        raise ValueError(f"delta: must be >= 0 (got {delta})")
    if not 1 <= max_steps <= 50:
        raise ValueError(f"max_steps: must be in [1, 50] (got {max_steps})")
    frac = as_fraction(c)
    d = work_dtype(G, dtype)
    X, transposed = to_wide(G.to(d))
    m, n = X.shape[-2], X.shape[-1]
    eye = torch.eye(m, dtype=d, device=X.device)
    if frac == 0:
        return from_wide(X, transposed), FreonInfo(0, 0, ())
    if delta > 0:
        X = torch.cat([X, delta * eye.expand(*X.shape[:-2], m, m)], dim=-1)  # Gram: A + δ²I
    if frac == 1:
        Y = _inverse_by_qr(X)
        return from_wide(Y[..., :n], transposed), FreonInfo(1, 0, ())

    if norm_bound is not None:
        alpha: Tensor | float = _bound_scale(norm_bound, delta, m)
    else:
        alpha = safe_scale(X)
    Xt = X / alpha
    schedule, L0 = _schedule_for(frac, m, d, delta, l0, tol, max_steps, norm_bound)
    cf = float(frac)

    F: Tensor | None = None  # ∏ u^(±1) from the QR phase
    qr_steps = 0
    for st in schedule:
        if st.kind != "qr":
            break
        k = st.p // 2
        s = k * (2 * frac - 1)
        beta, dd, rg = st.b / st.g, st.a - st.b / st.g, math.sqrt(st.g)
        stack = torch.cat([rg * Xt.mT, eye.expand(*Xt.shape[:-2], m, m)], dim=-2)
        Q, _ = torch.linalg.qr(stack)  # (…, n′+m, m)
        Q1, Q2 = Q[..., :-m, :], Q[..., -m:, :]
        Xt = beta**k * Xt + _q2_poly(Q2, k, beta, dd) @ (Q1.mT / rg)
        if s != 0:
            u = beta * eye + dd * (Q2 @ Q2.mT)
            if s == 1:
                F = u if F is None else F @ u
            else:
                Lu = torch.linalg.cholesky(u)
                F = torch.cholesky_solve(eye if F is None else F, Lu)
        qr_steps += 1

    A = Xt @ Xt.mT
    A = 0.5 * (A + A.mT)
    C: Tensor | None = None
    chol_steps = 0
    chol = schedule[qr_steps:]
    for idx, st in enumerate(chol):
        beta, dd = st.b / st.g, st.a - st.b / st.g
        Lc = torch.linalg.cholesky(eye + st.g * A)
        # cholesky_solve against I, not cholesky_inverse: the latter is ~25× slower on CPU
        # (measured at 512², torch 2.13) for the same result.
        U = beta * eye + dd * torch.cholesky_solve(eye.expand_as(A), Lc)
        U = 0.5 * (U + U.mT)
        cp = int(frac * st.p)
        powers = _powers(U, {st.p, cp})
        if idx < len(chol) - 1 or not _finish_is_trivial(st.L_next, cf, d):
            A = A @ powers[st.p]
            A = 0.5 * (A + A.mT)
        C = powers[cp] if C is None else C @ powers[cp]
        chol_steps += 1

    # Finish: A_T ≈ s I with s the middle of its bound [L_T, 1]; (sI + sE)^(−c) by a short
    # binomial series (nothing beyond the scalar when E is below the dtype's resolution).
    L_T = schedule[-1].L_next if schedule else L0
    mid = 0.5 * (1.0 + L_T)
    if _finish_is_trivial(L_T, cf, d):
        W: Tensor | None = C * mid**-cf if C is not None else None
        scale = mid**-cf if C is None else 1.0
    else:
        E = A / mid - eye
        W = mid**-cf * (eye - cf * E + 0.5 * cf * (cf + 1) * (E @ E))
        if C is not None:
            W = C @ W
        scale = 1.0
    if F is not None:
        W = F if W is None else F @ W
    Y = Xt if W is None else W @ Xt
    Y = Y * (scale * alpha ** (1 - 2 * cf))
    return from_wide(Y[..., :n], transposed), FreonInfo(qr_steps, chol_steps, schedule)


def _q2_poly(Q2: Tensor, k: int, beta: float, dd: float) -> Tensor:
    """``Q₂ · P(Q₂ᵀQ₂)`` with ``P(Z) = Σ_{j=1..k} C(k, j) β^(k−j) d^j Z^(j−1)`` (Horner in Z,
    starting from the top two coefficients so no GEMM multiplies by a multiple of I)."""
    coef = [math.comb(k, j) * beta ** (k - j) * dd**j for j in range(1, k + 1)]  # Z^0 … Z^(k−1)
    if k == 1:
        return coef[0] * Q2
    Z = Q2.mT @ Q2
    eye = torch.eye(Z.shape[-1], dtype=Z.dtype, device=Z.device)
    P = coef[-1] * Z + coef[-2] * eye
    for j in range(k - 3, -1, -1):
        P = P @ Z + coef[j] * eye
    return Q2 @ P


def _powers(U: Tensor, wanted: set[int]) -> dict[int, Tensor]:
    """``{e: U^e}`` for the exponents in ``wanted`` (1–4), sharing the square."""
    out = {1: U}
    if max(wanted) >= 2:
        out[2] = U @ U
    if 3 in wanted:
        out[3] = out[2] @ U
    if 4 in wanted:
        out[4] = out[2] @ out[2]
    return out


def _finish_is_trivial(L_T: float, c: float, d: torch.dtype) -> bool:
    """Whether A_T = s(I + E), ‖E‖ ≤ (1 − L_T)/(1 + L_T), has ``(I + E)^(−c)`` within the
    dtype's resolution of I, so neither the final Gram nor the series is needed."""
    return c * (1.0 - L_T) / (1.0 + L_T) <= torch.finfo(d).eps


def _bound_scale(norm_bound: float, delta: float, m: int) -> float:
    if not norm_bound > 0:
        raise ValueError(f"norm_bound: must be > 0 (got {norm_bound})")
    # 1e-6 of slack absorbs rounding in a caller's Frobenius prescaling.
    return math.sqrt(norm_bound**2 + m * delta**2) * (1 + 1e-6)


def _schedule_for(
    frac: Fraction, m: int, d: torch.dtype, delta: float, l0: float | None,
    tol: float | None, max_steps: int, norm_bound: float | None,
) -> tuple[tuple[FreonStep, ...], float]:
    """The cached schedule for these options and its starting Gram bound L0 (a lookup once
    warm: pure Python, never touching the tensor)."""
    if l0 is None and delta > 0 and norm_bound is not None:
        lo = delta / _bound_scale(norm_bound, delta, m)
    else:
        lo = l0 if l0 is not None else _DEFAULT_L0[d]
    if not 0 < lo <= 1:
        raise ValueError(f"l0: must be in (0, 1] (got {l0})")
    tol_ = tol if tol is not None else _DEFAULT_TOL[d]
    if not 0 < tol_ < 1:
        raise ValueError(f"tol: must be in (0, 1) (got {tol})")
    L0 = _quantise_l0(lo) ** 2
    return freon_schedule(frac, L0, tol_, QR_SWITCH, max_steps), L0


def warm_freon(
    shape: tuple[int, ...],
    *,
    c: float | Fraction,
    delta: float = 0.0,
    l0: float | None = None,
    dtype: torch.dtype | None = None,
    tol: float | None = None,
    max_steps: int = 8,
    norm_bound: float | None = None,
) -> None:
    """Solve and cache the schedule a call with these options on ``shape`` will use.

    Optimizers call this at construction so that a training step only looks the schedule up.
    Schedules that depend on the data (no ``norm_bound`` with δ > 0 still uses ``l0``) are
    covered too, because the schedule never depends on the values of G, only on options.
    """
    frac = as_fraction(c)
    if frac in (0, 1):
        return
    d = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    m = min(shape[-2], shape[-1])
    _schedule_for(frac, m, d, delta, l0, tol, max_steps, norm_bound)


def _inverse_by_qr(X: Tensor) -> Tensor:
    """``(X Xᵀ)⁻¹ X`` for wide X by one least-squares QR: ``Xᵀ = Q R`` ⇒ it is ``R⁻¹ Qᵀ``."""
    Q, R = torch.linalg.qr(X.mT)
    return torch.linalg.solve_triangular(R, Q.mT, upper=True)


def freon(
    G: Tensor,
    *,
    c: float,
    delta: float = 0.0,
    l0: float | None = None,
    dtype: torch.dtype | None = None,
    tol: float | None = None,
    max_steps: int = 8,
    norm_bound: float | None = None,
) -> Tensor:
    """``(G Gᵀ + δ² I)^(−c) G`` by Freon's rational iteration (see :func:`freon_power`)."""
    return freon_power(G, c=c, delta=delta, l0=l0, dtype=dtype, tol=tol, max_steps=max_steps,
                       norm_bound=norm_bound)[0]
