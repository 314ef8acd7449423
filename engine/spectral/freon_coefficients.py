"""Per-step minimax coefficients for Freon's rational iteration, solved numerically and cached.

One step maps the Gram eigenvalues λ ∈ [L, 1] by ``h(λ) = λ u(λ)^p`` with
``u(λ) = (a + bλ)/(1 + gλ)``. The coefficients are chosen so that h([L, 1]) ⊂ [L′, 1] with L′
as large as possible: the best relative type-(1, 1) approximation of λ^(−1/p) on [L, 1]. The
optimum equioscillates: h(L) = h(x₂) = L′ and h(x₁) = h(1) = 1, where x₁ < x₂ are the interior
critical points, roots of ``b g λ² + ((1 + p) b + (1 − p) a g) λ + a = 0``. Fixing h(1) = 1 by
``g = a + b − 1`` leaves two equations in (log a, log b), solved by damped Newton with
homotopy in p from the closed-form QDWH optimum (p = 2). Near L = 1 the [1/1] Padé of λ^(−1/p) at
√L is used directly.

Any (a, b, g) gives a *correct* iteration (the invariant in engine/spectral/freon.py is exact
for every coefficient choice); optimality only buys speed. So a failed solve falls back to the
Padé guess, renormalised, rather than raising. Derivation: docs/freon.md.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from fractions import Fraction

from approximant.engine.spectral.qdwh import qdwh_coefficients


def _log_h(lam: float, a: float, b: float, g: float, p: int) -> float:
    return math.log(lam) + p * (math.log(a + b * lam) - math.log1p(g * lam))


def _critical_points(a: float, b: float, g: float, p: int) -> tuple[float, float] | None:
    """The interior critical points x₁ < x₂ of h, or None when h is monotone."""
    A2, A1, A0 = b * g, (1 + p) * b + (1 - p) * a * g, a
    disc = A1 * A1 - 4 * A2 * A0
    if A2 <= 0 or A1 >= 0 or disc <= 0:
        return None
    q = 0.5 * (-A1 + math.sqrt(disc))  # the larger-magnitude root form, no cancellation
    return A0 / q, q / A2


def pade_guess(L: float, p: int) -> tuple[float, float, float]:
    """[1/1] Padé of λ^(−1/p) at λ₀ = √L, as (a, b, g) with the denominator's constant 1."""
    s = 1.0 / p
    r = (1 + s) / (1 - s)
    lam0 = math.sqrt(L)
    return r, 1.0 / lam0, r / lam0


def normalise(a: float, b: float, g: float, p: int, L: float) -> tuple[float, float, float, float]:
    """Scale u so that max h on [L, 1] is 1; return ``(a, b, g, L′)`` with L′ = min h.

    The extremes of h are at L, 1 and the interior critical points, so this is exact.
    """
    pts = [L, 1.0]
    crit = _critical_points(a, b, g, p)
    if crit is not None:
        pts += [x for x in crit if L < x < 1.0]
    logs = [_log_h(x, a, b, g, p) for x in pts]
    top = max(logs)
    k = math.exp(-top / p)
    return a * k, b * k, g, math.exp(min(logs) - top)


def _residual(theta: tuple[float, float], p: int, L: float) -> tuple[float, float] | None:
    a, b = math.exp(theta[0]), math.exp(theta[1])
    g = a + b - 1.0
    if g <= 0:
        return None
    crit = _critical_points(a, b, g, p)
    if crit is None or not (L < crit[0] < crit[1] < 1.0):
        return None
    x1, x2 = crit
    return _log_h(x1, a, b, g, p), _log_h(L, a, b, g, p) - _log_h(x2, a, b, g, p)


def _newton(theta: tuple[float, float], p: int, L: float, iters: int = 50
            ) -> tuple[float, float] | None:
    """Damped Newton with a forward-difference Jacobian; None if it does not converge."""
    F = _residual(theta, p, L)
    if F is None:
        return None
    for _ in range(iters):
        norm = math.hypot(*F)
        if norm < 1e-12:
            return theta
        h = 1e-7
        J = []
        for j in range(2):
            t = list(theta)
            t[j] += h
            Fj = _residual((t[0], t[1]), p, L)
            if Fj is None:
                return None
            J.append(((Fj[0] - F[0]) / h, (Fj[1] - F[1]) / h))
        # J[j] is the column for unknown j.
        det = J[0][0] * J[1][1] - J[1][0] * J[0][1]
        if det == 0:
            return None
        d0 = (-F[0] * J[1][1] + F[1] * J[1][0]) / det
        d1 = (-F[1] * J[0][0] + F[0] * J[0][1]) / det
        step = 1.0
        while step > 1e-4:
            cand = (theta[0] + step * d0, theta[1] + step * d1)
            Fc = _residual(cand, p, L)
            if Fc is not None and math.hypot(*Fc) < norm:
                theta, F = cand, Fc
                break
            step *= 0.5
        else:
            return None
    return theta if math.hypot(*F) < 1e-9 else None


def _qdwh_start(L: float) -> tuple[float, float, float]:
    """The closed-form QDWH coefficients at ℓ = √L: the exact p = 2 optimum (Nakatsukasa 2010)."""
    return qdwh_coefficients(math.sqrt(L))


# Above this L the optimum is within rounding of the Padé guess and Newton is ill-posed (x₁ and
# x₂ merge), so the closed form is used directly.
_PADE_ABOVE = 0.9


@functools.lru_cache(maxsize=4096)
def minimax_step(p: int, L: float) -> tuple[float, float, float, float]:
    """``(a, b, g, L′)`` for one step of order ``p`` on [L, 1]; cached per (p, L).

    Homotopy in p at fixed L: start from the closed-form QDWH optimum (p = 2) and raise p in
    adaptive steps (≤ ½) to the target, each Newton solve warm-started from the previous one
    (the equations hold for real p). Falls back to the renormalised Padé guess if Newton fails
    or does worse.
    """
    if not 0 < L <= 1:
        raise ValueError(f"L: must be in (0, 1] (got {L})")
    if p < 2:
        raise ValueError(f"p: must be >= 2 (got {p})")
    pade = normalise(*pade_guess(L, p), p, L)
    if L >= _PADE_ABOVE:
        return pade
    a, b, g = _qdwh_start(L)
    theta: tuple[float, float] | None = (math.log(a), math.log(b))
    q, dq = 2.0, 0.25
    while q < p:
        nxt = _newton(theta, min(q + dq, p), L)  # type: ignore[arg-type]
        if nxt is None:
            dq /= 2  # the extrema left [L, 1]: take a shorter homotopy step
            if dq < 1e-3:
                return pade
            continue
        theta, q, dq = nxt, min(q + dq, p), min(2 * dq, 0.5)
    a, b = math.exp(theta[0]), math.exp(theta[1])
    solved = normalise(a, b, a + b - 1.0, p, L)
    # Keep whichever contracts more: near L = 1 Newton can stall on merging extrema.
    return solved if solved[3] >= pade[3] else pade


@dataclass(frozen=True)
class FreonStep:
    """One step: ``kind`` "qr" or "chol", order p, coefficients, interval before and after."""

    kind: str
    p: int
    a: float
    b: float
    g: float
    L: float
    L_next: float


# Driving orders per c (first the QR phase, whose p must be even, then the Cholesky phase):
# chosen so that c·p and p(2c − 1)/2 are integers, which makes the invariant exact.
ORDERS: dict[Fraction, tuple[int, int]] = {
    Fraction(1, 4): (4, 4),
    Fraction(1, 3): (6, 3),
    Fraction(1, 2): (2, 2),
    Fraction(2, 3): (6, 3),
    Fraction(3, 4): (4, 4),
}


@functools.lru_cache(maxsize=256)
def freon_schedule(c: Fraction, L0: float, tol: float, switch: float, max_steps: int
                   ) -> tuple[FreonStep, ...]:
    """The whole coefficient schedule for exponent c from the Gram lower bound L0.

    QR steps while L < ``switch`` (the Cholesky form needs a well-conditioned Gram), Cholesky
    steps after, stopping once 1 − L ≤ ``tol`` or after ``max_steps``. Pure Python floats:
    computed once per key on first use (never at import), then a dictionary lookup.
    """
    if c not in ORDERS:
        allowed = ", ".join(str(k) for k in sorted(ORDERS))
        raise ValueError(f"c: the rational iteration supports {allowed} (got {c})")
    p_qr, p_chol = ORDERS[c]
    steps = []
    L = L0
    while tol < 1.0 - L and len(steps) < max_steps:
        kind, p = ("qr", p_qr) if switch > L else ("chol", p_chol)
        a, b, g, L_next = minimax_step(p, L)
        steps.append(FreonStep(kind, p, a, b, g, L, L_next))
        L = L_next
    return tuple(steps)
