"""What each registered map must return, as data the property tests read from the registry.

A :class:`MapCase` is one configuration of a map and its exact answer as a function of the
input's singular values: ``values(σ, dtype, size, options)`` gives the target ``f(σ)`` (fp64,
σ of shape (…, r), descending; ``size`` = max(m, n)) such that the map must return
``U f(Σ) Vᵀ``. Tolerances are relative spectral-norm errors against that target built from an
independent fp64 SVD of the exact input the map received, per working dtype, on spectra whose
nonzero singular values span at most ``kappa`` with relative gaps of ≥ 10 % (so singular
vectors are determined to eps/gap and the tolerance can be a constant). docs/lab.md lists
them and why. A dtype missing from ``tol`` is not a promise; ``math.inf`` means "finite, of
the right shape and dtype, zero for a zero input", without a value check.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from approximant.engine.spectral.exact import null_mask, truncation_count
from approximant.engine.spectral.newton_schulz import (
    KAON_GAIN,
    KAON_OUT_SCALE,
    KAON_S4_GUARD,
    newton_schulz_plan,
)

Values = Callable[[Tensor, torch.dtype, int, Mapping[str, Any]], Tensor]

F64, F32, BF16 = torch.float64, torch.float32, torch.bfloat16


@dataclass(frozen=True)
class MapCase:
    """One configuration a map is held to (see the module docstring).

    ``scaled`` names options in G's units (Freon's δ): the tests scale them with G, and then
    the answer scales as ``scale^degree``. ``rank_deficient``: whether inputs with exactly
    zero singular values (numerically null once rounded to the dtype) are in its domain.
    """

    options: Mapping[str, Any]
    values: Values
    tol: Mapping[torch.dtype, float]
    degree: float = 0.0
    scaled: tuple[str, ...] = ()
    kappa: float = 1e2
    rank_deficient: bool = True
    note: str = ""


def polar_values(s: Tensor, dtype: torch.dtype, size: int, options: Mapping[str, Any]
                 ) -> Tensor:
    """1 on the range, 0 on the numerical null space (σ ≤ max(m, n)·eps·σ_max)."""
    return torch.where(null_mask(s, size, dtype), 0.0, 1.0).to(torch.float64)


def power_values(s: Tensor, dtype: torch.dtype, size: int, options: Mapping[str, Any]
                 ) -> Tensor:
    """σ(σ² + δ²)^(−c); with no floor, 0 on the numerical null space."""
    c, delta = float(options["c"]), float(options.get("delta", 0.0))
    out = s * (s * s + delta * delta).clamp_min(1e-300).pow(-c)
    if delta == 0 and c > 0:
        out = torch.where(null_mask(s, size, dtype), 0.0, out)
    return out


def gram_values(s: Tensor, dtype: torch.dtype, size: int, options: Mapping[str, Any]
                ) -> Tensor:
    """``power_values`` with the Gram's own null space: λ = σ² ≤ r·eps·λ_max (no floor)."""
    out = power_values(s, F64, size, options)
    if float(options.get("delta", 0.0)) == 0:
        lam = s * s
        tol = lam.amax(dim=-1, keepdim=True) * s.shape[-1] * torch.finfo(dtype).eps
        out = torch.where(lam <= tol, 0.0, out)
    return out


def newton_schulz_values(s: Tensor, dtype: torch.dtype, size: int,
                         options: Mapping[str, Any]) -> Tensor:
    """The schedule's composed odd quintic on σ/(‖σ‖₂·safety), as run in ``dtype``."""
    plan = newton_schulz_plan(options.get("schedule", "keller"), options.get("steps"), dtype)
    x = s / (s.norm(dim=-1, keepdim=True).clamp_min(1e-300) * plan.norm_safety)
    for a, b, c in plan.rows:
        x = a * x + b * x**3 + c * x**5
    return x


def kaon_values(s: Tensor, dtype: torch.dtype, size: int, options: Mapping[str, Any]
                ) -> Tensor:
    """s ↦ 4.1 s(1 − s²)² ``steps`` times on σ/max(‖σ‖₂, 1.1‖σ‖₄), then /1.175."""
    norm = torch.maximum(s.norm(dim=-1, keepdim=True),
                         KAON_S4_GUARD * s.norm(p=4, dim=-1, keepdim=True)).clamp_min(1e-300)
    x = s / norm
    for _ in range(int(options.get("steps", 5))):
        x = KAON_GAIN * x * (1 - x * x) ** 2
    return x / KAON_OUT_SCALE


def kaon_iid_values(s: Tensor, dtype: torch.dtype, size: int, options: Mapping[str, Any]
                    ) -> Tensor:
    """The same draws as the map (a generator in the same state), 0 on the null space."""
    low, high = float(options.get("low", 0.5)), float(options.get("high", 1.5))
    u = torch.rand(s.shape, generator=options["generator"], dtype=torch.float64)
    return torch.where(null_mask(s, size, dtype), 0.0, low + (high - low) * u)


def truncated_values(s: Tensor, dtype: torch.dtype, size: int, options: Mapping[str, Any]
                     ) -> Tensor:
    out = s.clone()
    out[..., :truncation_count(s.shape[-1], float(options.get("fraction", 0.1)))] = 0
    return out


def sqrt_values(s: Tensor, dtype: torch.dtype, size: int, options: Mapping[str, Any]) -> Tensor:
    return s.sqrt()


# Tolerances (relative spectral error at κ ≤ 100, gaps ≥ 10 %), measured worst cases × 3–10.
# SVD maps are backward stable (fp32 ≈ 1e-6, fp64 ≈ 1e-14); the Gram squares κ; iterative
# maps stop at their own accuracy. A map that is not Lipschitz at scale 1 amplifies rounding
# by its slope: a floor δ by ≈ δ^(−2c) (δ is chosen here to keep that below 1e3), the
# Newton–Schulz composites by their slope at 0 (Keller ≈ 490, Polar Express ≈ 6400), the
# chaotic map by up to ≈ 9 per step. bf16 rounds the input to 2^-8 of its largest entry, so a
# direction 100× smaller is noise: bf16 is held to full-rank inputs with κ ≤ 10.
EXACT = {F32: 2e-5, F64: 1e-12}
ITERATIVE = {F32: 3e-4, F64: 1e-11}
INF = math.inf


def registry_cases() -> dict[str, tuple[MapCase, ...]]:
    """The cases of every registered map (the registry attaches them)."""
    return {
        "svd": (MapCase({"f": torch.sqrt}, sqrt_values, EXACT, degree=0.5,
                        rank_deficient=False, note="√ is not Lipschitz at 0: full rank"),),
        "svd_polar": (MapCase({}, polar_values, EXACT),),
        "spectral_power": (
            MapCase({"c": 0.25}, power_values, EXACT, degree=0.5),
            MapCase({"c": 0.75, "delta": 5e-2}, power_values, {F32: 1e-4, F64: 1e-12},
                    degree=-0.5, scaled=("delta",)),
        ),
        "gram_eigh": (
            MapCase({"c": 0.25}, gram_values, {F32: 1e-3, F64: 1e-11}, degree=0.5),
            MapCase({"c": 1.0, "delta": 1e-1}, gram_values, {F32: 1e-3, F64: 1e-11},
                    degree=-1.0, scaled=("delta",)),
        ),
        "newton_schulz": (
            MapCase({}, newton_schulz_values, {F32: 1e-4, F64: 1e-11}),
            MapCase({"schedule": "polar_express"}, newton_schulz_values,
                    {F32: 1e-3, F64: 1e-11}),
            MapCase({"schedule": "cans"}, newton_schulz_values, {F32: 1e-3, F64: 1e-10}),
            # bf16 against the same iteration in fp64, over this case's inputs (κ ≤ 10, up to
            # 24×24), 3 000 draws: Keller median 2.2e-2, p99 4.9e-2, max 8.1e-2 (5e-2 failed
            # ~1 % of draws); Polar Express, whose steps have smaller slopes, max 2.0e-2.
            MapCase({}, newton_schulz_values, {BF16: 1e-1}, kappa=10, rank_deficient=False),
            MapCase({"schedule": "polar_express"}, newton_schulz_values, {BF16: 5e-2},
                    kappa=10, rank_deficient=False),
            MapCase({"schedule": "cans"}, newton_schulz_values, {BF16: INF},
                    note="bf16: bounded only (its first step's slope of 26 at σ = 1 and "
                    "the added margin make it a few % off the fp64 composite)"),
        ),
        "qdwh": (
            MapCase({}, polar_values, ITERATIVE, rank_deficient=False),
            MapCase({"null": "zero"}, polar_values, ITERATIVE),
        ),
        "freon": (
            MapCase({"c": 1 / 3, "null": "zero"}, power_values, ITERATIVE, degree=1 / 3),
            MapCase({"c": 0.5}, power_values, ITERATIVE, rank_deficient=False),
            MapCase({"c": 2 / 3, "delta": 1e-2}, power_values, {F32: 3e-4, F64: 1e-11},
                    degree=-1 / 3, scaled=("delta",)),
            MapCase({"c": 0.25, "null": "zero"}, power_values, ITERATIVE, degree=0.5),
            MapCase({"c": 0.75}, power_values, ITERATIVE, degree=-0.5, rank_deficient=False),
            MapCase({"c": 1.0}, power_values, ITERATIVE, degree=-1.0, rank_deficient=False),
            MapCase({"c": 1.0, "delta": 1e-1}, power_values, {F32: 3e-4, F64: 1e-11},
                    degree=-1.0, scaled=("delta",)),
        ),
        "kaon_chaos": (
            MapCase({}, kaon_values, {F32: 1e-2, F64: 1e-8}),
            MapCase({}, kaon_values, {BF16: INF}, note="bf16: bounded only (chaotic)"),
        ),
        "kaon_iid": (MapCase({"low": 0.5, "high": 1.5}, kaon_iid_values, EXACT),),
        "truncated_sgd": (MapCase({"fraction": 0.25}, truncated_values, EXACT, degree=1.0),),
    }
