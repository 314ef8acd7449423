"""Newton–Schulz schedules: regenerate what has a closed form, pin the documented behaviour.

All figures are composed scalar polynomials on a dense log grid of σ ∈ [1e-3, 1] in fp64.
"""

from __future__ import annotations

import math

import pytest
import torch

from engine.spectral.schedules import SCHEDULES, get_schedule

GRID = torch.logspace(-3, 0, 200001, dtype=torch.float64)


def _compose(name: str, steps: int, x: torch.Tensor = GRID) -> torch.Tensor:
    sched = get_schedule(name)
    x = x / sched.norm_safety
    for a, b, c in sched.coefficients(steps):
        x = a * x + b * x**3 + c * x**5
    return x


def test_classical_regenerated_from_taylor_series() -> None:
    # x·(1 − t)^(−1/2) with t = 1 − x², truncated after t²: x(1 + t/2 + 3t²/8).
    t = 1 - GRID**2
    taylor = GRID * (1 + t / 2 + 3 * t**2 / 8)
    assert torch.allclose(_compose("classical", 1), taylor, rtol=1e-14, atol=1e-15)
    # Convergent: monotone towards 1 and never above it on [0, 1].
    y = _compose("classical", 40)
    assert y.max() <= 1 + 1e-12 and y.min() > 0.999


def _minimax_odd_quintic(lo: float, hi: float) -> tuple[float, float, float]:
    """Remez exchange: the odd quintic with the smallest max |1 − p| on [lo, hi]."""
    t = torch.tensor([lo, lo * (hi / lo) ** (1 / 3), lo * (hi / lo) ** (2 / 3), hi],
                     dtype=torch.float64)
    sign = torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=torch.float64)
    for _ in range(100):
        A = torch.stack([t, t**3, t**5, sign], dim=1)
        a, b, c, _ = torch.linalg.solve(A, torch.ones(4, dtype=torch.float64)).tolist()
        # Interior extrema of the error: p′(x) = a + 3b x² + 5c x⁴ = 0, a quadratic in x².
        disc = math.sqrt(9 * b * b - 20 * a * c)
        roots = sorted(math.sqrt((-3 * b + s * disc) / (10 * c)) for s in (-1, 1))
        new = torch.tensor([lo, roots[0], roots[1], hi], dtype=torch.float64)
        if torch.allclose(new, t, rtol=1e-14, atol=0):
            break
        t = new
    return a, b, c


def test_cans_regenerated_by_greedy_remez() -> None:
    sched = get_schedule("cans")
    lo, hi = sched.params["lower"], sched.params["upper"]
    for row in sched.rows:
        a, b, c = _minimax_odd_quintic(lo, hi)
        assert (a, b, c) == pytest.approx(row, abs=1e-4)
        lo = a * lo + b * lo**3 + c * lo**5
        hi = 2 - lo


def test_keller_band() -> None:
    # Anchor in SCIENCE.md/issue 6: "σ ∈ [1e-3, 1] ends in about [0.68, 1.13]". Measured: after
    # 5 steps the bottom of [1e-3, 1] only reaches 0.47 (0.68 needs 6 steps, or σ ≥ 3e-3);
    # the [0.68, 1.13] band is what 5 steps give on [1e-2, 1].
    y = _compose("keller", 5)
    assert y.min() == pytest.approx(0.4705, abs=1e-3)
    assert y.max() == pytest.approx(1.2024, abs=1e-3)
    y = _compose("keller", 5, torch.logspace(-2, 0, 200001, dtype=torch.float64))
    assert y.min() == pytest.approx(0.68, abs=5e-3) and y.max() == pytest.approx(1.13, abs=5e-3)
    assert _compose("keller", 6).min() == pytest.approx(0.68, abs=5e-3)


def test_polar_express_worst_case_error() -> None:
    # Our measured worst |φ − 1| on [1e-3, 1]: 0.16 (5 steps), 6.5e-3 (6), < 1e-12 (8).
    # SCIENCE.md reports 0.14, 3.3e-3 and 2.4e-6 for "a" Polar Express table (tables differ).
    err = {k: (_compose("polar_express", k) - 1).abs().max().item() for k in (5, 6, 8)}
    assert err[5] < 0.17
    assert err[6] < 7e-3
    assert err[8] < 1e-12


def test_cans_five_steps_band() -> None:
    y = _compose("cans", 5)
    assert y.min() > 0.88 and y.max() < 1.12


def test_tables_carry_their_generator() -> None:
    for s in SCHEDULES.values():
        assert s.generator and s.source and s.rows
        assert all(len(r) == 3 for r in s.rows)
    assert get_schedule("polar_express").params["eps"] == 0.01
    assert get_schedule("polar_express").norm_safety == 1.01


def test_coefficients_repeat_last_row_and_validate() -> None:
    k = get_schedule("keller")
    assert k.coefficients(3) == [k.rows[0]] * 3
    pe = get_schedule("polar_express")
    assert pe.coefficients(10)[-1] == pe.rows[-1]
    with pytest.raises(ValueError, match="steps"):
        pe.coefficients(0)
    with pytest.raises(ValueError, match="allowed"):
        get_schedule("nope")
