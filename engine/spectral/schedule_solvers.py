"""Generators of the Newton–Schulz coefficient tables in engine/spectral/schedules.py.

Offline only: tests call these to regenerate the pinned tables from their definitions; nothing
imports them at start-up or in a training step (the tables stay literal data).

Both CANS and Polar Express are *greedy minimax compositions*: step t applies the odd quintic
``p(x) = a x + b x³ + c x⁵`` that best approximates 1 in the max norm on the current interval
[ℓ, u] of singular values, then the interval becomes ``[p(ℓ), 2 − p(ℓ)]`` (the equioscillating
p maps [ℓ, u] into [p(ℓ), 2 − p(ℓ)]). Polar Express adds two changes for finite precision
(Amsel, Persson, Musco & Gower 2025, appendix "code for constructing polynomials"): a cushion
(the quintic is fitted on ``[max(ℓ, cushion·u), u]``, then rescaled so that p(ℓ) and p(u) are
symmetric about 1) and a safety factor (every row but the last is applied to x/(1 + ε)).
"""

from __future__ import annotations

import math

import torch


def minimax_odd_quintic(lo: float, hi: float, *, max_iter: int = 100
                        ) -> tuple[float, float, float]:
    """The odd quintic with the smallest ``max |1 − p(x)|`` on [lo, hi] (Remez exchange).

    The error equioscillates on lo, q, r, hi with q < r the interior critical points of p
    (roots of ``a + 3b x² + 5c x⁴``); each pass solves the 4×4 equioscillation system in fp64
    and moves q, r to the new critical points. Near lo = hi the optimum is the Taylor quintic
    of x^(−1/2)·x around hi, returned in closed form (the system is singular there).
    """
    if not 0 < lo <= hi:
        raise ValueError(f"lo, hi: need 0 < lo <= hi (got lo={lo}, hi={hi})")
    if lo / hi >= 1 - 5e-6:
        return 15 / 8 / hi, -10 / 8 / hi**3, 3 / 8 / hi**5
    q, r = (3 * lo + hi) / 4, (lo + 3 * hi) / 4
    sign = torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=torch.float64)
    a = b = c = 0.0
    for _ in range(max_iter):
        t = torch.tensor([lo, q, r, hi], dtype=torch.float64)
        A = torch.stack([t, t**3, t**5, sign], dim=1)
        a, b, c, _ = torch.linalg.solve(A, torch.ones(4, dtype=torch.float64)).tolist()
        disc2 = 9 * b * b - 20 * a * c
        if disc2 < 0 or c <= 0:  # no interior extrema: the interval is already near a point
            break
        disc = math.sqrt(disc2)
        q_new, r_new = (math.sqrt((-3 * b + s * disc) / (10 * c)) for s in (-1, 1))
        done = abs(q_new - q) <= 1e-15 * hi and abs(r_new - r) <= 1e-15 * hi
        q, r = q_new, r_new
        if done:
            break
    return a, b, c


def _quintic(x: float, row: tuple[float, float, float]) -> float:
    a, b, c = row
    return a * x + b * x**3 + c * x**5


def greedy_composition(
    lower: float,
    steps: int,
    *,
    cushion: float = 0.0,
    safety_eps: float = 0.0,
    safety_in_recursion: bool = False,
) -> list[tuple[float, float, float]]:
    """Rows ``(a, b, c)`` of the greedy minimax composition from [lower, 1].

    ``cushion``: fit on ``[max(ℓ, cushion·u), u]`` and rescale so that ``p(ℓ) + p(u) = 2``.
    ``safety_eps``: divide row t's coefficients by ``(1 + ε)^(1, 3, 5)`` for every row but the
    last (p(x/(1 + ε))). ``safety_in_recursion``: whether the interval is propagated through
    the scaled polynomial (True) or the unscaled one, with the scaling applied afterwards
    (False) — published tables differ on this.
    """
    if not 0 < lower <= 1:
        raise ValueError(f"lower: must be in (0, 1] (got {lower})")
    if steps < 1:
        raise ValueError(f"steps: must be >= 1 (got {steps})")
    lo, hi = lower, 1.0
    rows = []
    for t in range(steps):
        row = minimax_odd_quintic(max(lo, cushion * hi), hi)
        if cushion * hi > lo:
            k = 2 / (_quintic(lo, row) + _quintic(hi, row))
            row = (row[0] * k, row[1] * k, row[2] * k)
        scaled = row
        if safety_eps and t < steps - 1:
            s = 1 + safety_eps
            scaled = (row[0] / s, row[1] / s**3, row[2] / s**5)
        rows.append(scaled)
        lo = _quintic(lo, scaled if safety_in_recursion else row)
        hi = 2 - lo
    return rows
