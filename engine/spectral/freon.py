"""Freon's rational iteration: ``(G Gᵀ + δ² I)^(−c) G`` without an SVD and without squaring κ.

Notation (wide orientation, X is m×n with m ≤ n, A = X Xᵀ): each step applies
``u(A) = (aI + bA)(I + gA)⁻¹`` with coefficients from engine/spectral/freon_coefficients.py and
drives the Gram by ``A ← A u(A)^p``. Everything is a function of A₀, so everything commutes and

    A₀^(−c) X₀ = F · C · A_T^(−c) · X₁,

where the QR phase moves ``X ← u(A)^(p/2) X`` and accumulates ``F = ∏ u^(p(2c−1)/2)`` (±1 per
step for the supported c), and the Cholesky phase, on the m×m Gram of X₁, accumulates
``C = ∏ u^(cp)`` (for c = ½ it may move X instead). The exponents are integers by the choice of
p per c, so the identity holds for *any* coefficients: coefficient quality buys speed, never
correctness. ``A_T`` ends within the stopping tolerance of a multiple of I and its ``−c`` power
is a binomial series with as many terms as the dtype needs.

The QR phase never forms X Xᵀ: with ``[√g Xᵀ; I] = [Q₁; Q₂] R`` one has ``(I + gA)⁻¹ = Q₂ Q₂ᵀ``
and ``(I + gA)⁻ʲ X = Q₂ (Q₂ᵀ Q₂)^(j−1) Q₁ᵀ / √g``. The floor δ is exact: the iteration runs on
``[X, δI]`` (whose Gram is A + δ²I) and the first n columns are kept. ``c = 1`` is one
least-squares QR. ``c = 0`` is the identity. Derivation and measurements: docs/freon.md.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from fractions import Fraction

import torch
from torch import Tensor

from engine.spectral.common import check_matrix, from_wide, safe_scale, to_wide, work_dtype
from engine.spectral.freon_coefficients import ORDERS, FreonStep, freon_schedule, minimax_step

SUPPORTED_C = (Fraction(0), *sorted(ORDERS), Fraction(1))

# Default lower bounds on σ_min/σ_max (the user's assertion about the input): components below
# them are only partly converged, which acts as a soft floor. Default stopping tolerances on
# 1 − L: the series finish then needs at most 4 terms (fp32) or 2 (fp64) to reach the dtype's
# resolution, which is cheaper than the Cholesky step it replaces.
_DEFAULT_L0 = {torch.float32: 1e-6, torch.float64: 1e-10}
_DEFAULT_TOL = {torch.float32: 5e-2, torch.float64: 1e-5}
# The series finish costs J − 1 GEMMs of m×m, a Cholesky step about six: past this order a
# further step is cheaper (and a caller's loose ``tol`` is only served this far).
_MAX_FINISH_ORDER = 6
# Below this Gram lower bound the QR form is used: the Cholesky form needs cond(A) ≲ 1e3.
QR_SWITCH = 1e-3


@dataclass(frozen=True)
class FreonInfo:
    """Factorisations used (the cost driver) and the coefficient schedule that was applied."""

    qr_steps: int
    cholesky_steps: int
    schedule: tuple[FreonStep, ...]
    probes: int = 0  # fp64 Cholesky factorisations spent certifying a larger ℓ₀

    @property
    def factorisations(self) -> int:
        return self.qr_steps + self.cholesky_steps + self.probes


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
    probe: bool = True,
) -> tuple[Tensor, FreonInfo]:
    """``(G Gᵀ + δ² I)^(−c) G`` in ``dtype`` (G's shape) and the iteration record.

    ``l0`` is a lower bound on σ_min/σ_max of ``[G, δI]`` (default 1e-6 in fp32, 1e-10 in fp64);
    ``max_steps`` caps the factorisations. ``δ = 0`` with c > ½ on a rank-deficient G is
    undefined; the QR phase then maps null directions through u's finite slope, so pass δ > 0.

    ``norm_bound``: a caller-known upper bound on ‖G‖_F (1 after Frobenius prescaling). Then
    the scale is ``√(norm_bound² + mδ²)`` with no power iteration and, when δ > 0 and ``l0`` is
    None, ``l0`` is the rigorous ``δ / scale``: everything is known from shapes, no host sync.

    ``probe``: when ℓ₀ would be the default, first try to certify the larger bound that lets a
    single QR step reach the Cholesky phase, by one Cholesky of the fp64 Gram shifted by ten
    times that bound (success proves it, up to the Gram's rounding, ≈ 1e-14, far below the
    margin). It costs one fp64 GEMM and Cholesky, saves a QR step when it succeeds (κ up to
    ≈ 1e4–1e5, by c), is counted in ``factorisations``, and is skipped when ``max_steps``
    leaves no room for it. One host sync; pass ``probe=False`` for a data-independent path.
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
    schedule, L0, alts = _plan(frac, m, d, delta, l0, tol, max_steps, norm_bound, probe)
    probes = 0
    if alts:
        X64 = Xt.to(torch.float64)
        A64 = X64 @ X64.mT  # (…, m, m), shared by the probes
        for alt, L in alts:  # smallest bound first: once one fails, larger ones would too
            probes += 1
            if not _certifies(A64, L):
                break
            schedule, L0 = alt, L
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
            u = _add_diag(dd * (Q2 @ Q2.mT), beta)
            if s == 1:
                F = u if F is None else F @ u
            else:
                inv = torch.cholesky_inverse(torch.linalg.cholesky(u))
                F = inv if F is None else F @ inv
        qr_steps += 1

    # Only lower triangles feed the Cholesky factorisations, so the Grams below are never
    # symmetrised (the rounding asymmetry of a GEMM is harmless there and in the finish).
    A = Xt @ Xt.mT
    C: Tensor | None = None
    chol_steps = 0
    chol = schedule[qr_steps:]
    # c = ½ (QDWH) needs no accumulated factor if X itself moves (X ← U X, A = XXᵀ afresh):
    # two m×m×n′ GEMMs a step instead of three m×m×m ones plus a final W·X, cheaper while
    # n′ < 2m.
    move_x = frac == Fraction(1, 2) and Xt.shape[-1] < 2 * m
    for idx, st in enumerate(chol):
        beta, dd = st.b / st.g, st.a - st.b / st.g
        Lc = torch.linalg.cholesky(_add_diag(st.g * A, 1.0))
        # cholesky_inverse (LAPACK potri), not cholesky_solve against I: 3.2× faster at 1024²
        # and 512² on the development CPU (1 and 2 threads, torch 2.13).
        K = torch.cholesky_inverse(Lc)  # (I + gA)⁻¹, symmetric: potri fills both triangles
        U = _add_diag(dd * K, beta)
        need_A = idx < len(chol) - 1 or _finish_order(st.L_next, cf, d) > 0
        if move_x:
            Xt = U @ Xt
            if need_A:
                A = Xt @ Xt.mT
        else:
            cp = int(frac * st.p)
            powers = _powers(U, {st.p - 1, cp})
            if need_A:
                # A·U = βA + (d/g)(I − K) needs no GEMM (A K = (I − K)/g); the cancellation in
                # I − K costs ≤ eps·(1 + gL)/(gL) relative, ≤ 15 eps for these schedules
                # (gL ≥ 0.08 in every Cholesky step; tested).
                AU = _add_diag(beta * A - (dd / st.g) * K, dd / st.g)
                A = AU @ powers[st.p - 1] if st.p > 1 else AU
            C = powers[cp] if C is None else C @ powers[cp]
        chol_steps += 1

    # Finish: A_T = s(I + E) with s the middle of its bound [L_T, 1]; (I + E)^(−c) by its
    # binomial series, as many terms as the dtype needs (none when E is below its resolution).
    L_T = schedule[-1].L_next if schedule else L0
    mid = 0.5 * (1.0 + L_T)
    W: Tensor | None = C
    J = _finish_order(L_T, cf, d)
    if J > 0:
        E = _add_diag(A / mid, -1.0)
        coef = [_binom(-cf, j) for j in range(J + 1)]
        S = _add_diag(coef[J] * E, coef[J - 1])  # Horner in E
        for j in range(J - 2, -1, -1):
            S = _add_diag(S @ E, coef[j])
        W = S if W is None else W @ S
    if F is not None:
        W = F if W is None else F @ W
    Y = Xt if W is None else W @ Xt
    Y = Y * (mid**-cf * alpha ** (1 - 2 * cf))
    return from_wide(Y[..., :n], transposed), FreonInfo(qr_steps, chol_steps, schedule, probes)


def _add_diag(M: Tensor, s: float) -> Tensor:
    """``M + s·I`` in place on a fresh ``M`` (one pass over the diagonal, not over M)."""
    M.diagonal(dim1=-2, dim2=-1).add_(s)
    return M


def _q2_poly(Q2: Tensor, k: int, beta: float, dd: float) -> Tensor:
    """``Q₂ · P(Q₂ᵀQ₂)`` with ``P(Z) = Σ_{j=1..k} C(k, j) β^(k−j) d^j Z^(j−1)`` (Horner in Z,
    starting from the top two coefficients so no GEMM multiplies by a multiple of I)."""
    coef = [math.comb(k, j) * beta ** (k - j) * dd**j for j in range(1, k + 1)]  # Z^0 … Z^(k−1)
    if k == 1:
        return coef[0] * Q2
    Z = Q2.mT @ Q2
    P = _add_diag(coef[-1] * Z, coef[-2])
    for j in range(k - 3, -1, -1):
        P = _add_diag(P @ Z, coef[j])
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


def _binom(x: float, j: int) -> float:
    """The generalised binomial coefficient C(x, j) for real x."""
    out = 1.0
    for i in range(j):
        out *= (x - i) / (i + 1)
    return out


def _finish_order(L_T: float, c: float, d: torch.dtype) -> int:
    """Terms J of the series for ``(I + E)^(−c)``, ‖E‖ ≤ e = (1 − L_T)/(1 + L_T), so that the
    remainder ``|C(−c, J+1)| e^(J+1)/(1 − e)`` is within the dtype's resolution (0: the
    scalar alone is)."""
    e = (1.0 - L_T) / (1.0 + L_T)
    eps = torch.finfo(d).eps
    for J in range(_MAX_FINISH_ORDER + 1):
        if abs(_binom(-c, J + 1)) * e ** (J + 1) / (1.0 - e) <= eps:
            return J
    return _MAX_FINISH_ORDER


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


def _plan(
    frac: Fraction, m: int, d: torch.dtype, delta: float, l0: float | None,
    tol: float | None, max_steps: int, norm_bound: float | None, probe: bool,
) -> tuple[tuple[FreonStep, ...], float, tuple[tuple[tuple[FreonStep, ...], float], ...]]:
    """``(schedule, L0, alternatives)``: each alternative ``(schedule, L)`` is what a probe
    proving ``λ_min ≥ L`` buys, smallest L first; empty when no probe applies or pays."""
    schedule, L0 = _schedule_for(frac, m, d, delta, l0, tol, max_steps, norm_bound)
    default_l0 = l0 is None and not (delta > 0 and norm_bound is not None)
    if not (probe and default_l0):
        return schedule, L0, ()
    ladder = sorted({*PROBE_LADDER, one_qr_step_bound(ORDERS[frac][0], QR_SWITCH)})
    budget = max_steps - len(ladder)  # every probe may be spent before the iteration starts
    if len(schedule) > budget:
        return schedule, L0, ()
    tol_ = tol if tol is not None else _DEFAULT_TOL[d]
    qr = sum(st.kind == "qr" for st in schedule)
    alts = []
    for L in ladder:
        alt = freon_schedule(frac, L, tol_, QR_SWITCH, budget)
        if L > L0 and sum(st.kind == "qr" for st in alt) < qr:
            alts.append((alt, L))
    return schedule, L0, tuple(alts)


@functools.lru_cache(maxsize=16)
def one_qr_step_bound(p: int, switch: float) -> float:
    """The smallest L on the grid 10^(k/4) from which one order-p QR step reaches ``switch``
    (the Cholesky phase). Solved on first use, never at import."""
    for k in range(-80, 1):
        L = 10.0 ** (k / 4)
        if minimax_step(p, L)[3] >= switch:
            return L
    return 1.0


# The probe shifts the Gram by this multiple of the bound it certifies: the margin covers the
# fp64 Gram's rounding (≈ √n·eps₆₄ relative, ~1e-14) many times over at the bounds used
# (≥ 5e-12).
PROBE_MARGIN = 10.0
# Bounds tried after the one-QR-step bound of the order, if that one holds. L = 1e-6 (κ ≲ 300)
# leaves one QR step that lands the Gram well inside the Cholesky phase (L ≈ 0.03–0.06),
# which keeps fp32 accurate to ≈ 1e-5; the one-step bound lands it at L ≈ 1e-3, where fp32
# ends near 3e-4.
PROBE_LADDER = (1e-6,)


def _certifies(A64: Tensor, L: float) -> bool:
    """Whether every Gram in ``A64`` (fp64) has eigenvalues ≥ L: a Cholesky of it shifted by
    ``PROBE_MARGIN·L`` succeeds only if its smallest eigenvalue exceeds the shift."""
    info = torch.linalg.cholesky_ex(_add_diag(A64.clone(), -PROBE_MARGIN * L)).info
    return bool((info == 0).all())


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
    probe: bool = True,
) -> None:
    """Solve and cache the schedules a call with these options on ``shape`` may use.

    Optimizers call this at construction so that a training step only looks the schedule up.
    Schedules that depend on the data (no ``norm_bound`` with δ > 0 still uses ``l0``) are
    covered too, because the schedule never depends on the values of G, only on options.
    """
    frac = as_fraction(c)
    if frac in (0, 1):
        return
    d = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    m = min(shape[-2], shape[-1])
    _plan(frac, m, d, delta, l0, tol, max_steps, norm_bound, probe)


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
    probe: bool = True,
) -> Tensor:
    """``(G Gᵀ + δ² I)^(−c) G`` by Freon's rational iteration (see :func:`freon_power`)."""
    return freon_power(G, c=c, delta=delta, l0=l0, dtype=dtype, tol=tol, max_steps=max_steps,
                       norm_bound=norm_bound, probe=probe)[0]
