"""Matrices with controlled spectra and error metrics: tests, benchmarks, lab cases (no I/O)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class SpectrumCase:
    """``G = U diag(s) Vᵀ`` built in fp64, with its exact factors (s descending)."""

    G: Tensor
    U: Tensor
    s: Tensor
    V: Tensor

    def apply(self, f_values: Tensor) -> Tensor:
        """``U diag(f_values) Vᵀ`` in fp64: the exact target for a map with those values."""
        return (self.U * f_values) @ self.V.mT


def controlled_matrix(
    m: int, n: int, lower: float, *, rank: int | None = None, seed: int = 0,
    dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu",
) -> SpectrumCase:
    """An m×n matrix whose nonzero singular values are log-uniform on [lower, 1].

    The largest is exactly 1 and the smallest exactly ``lower`` (so κ = 1/lower); ``rank``
    below min(m, n) leaves the rest exactly zero. Built in fp64 from Haar-random factors,
    then cast to ``dtype`` (the factors stay fp64, describing the fp64 matrix).
    """
    g = torch.Generator().manual_seed(seed)
    r = min(m, n)
    k = r if rank is None else rank
    U, _ = torch.linalg.qr(torch.randn(m, r, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(n, r, generator=g, dtype=torch.float64))
    s = torch.zeros(r, dtype=torch.float64)
    if k > 0:
        s[:k] = loguniform_values(k, g, lower)
    G = (U * s) @ V.mT
    tm = SpectrumCase(G, U, s, V)
    if dtype != torch.float64 or torch.device(device).type != "cpu":
        tm = SpectrumCase(G.to(device=device, dtype=dtype), U.to(device), s.to(device),
                        V.to(device))
    return tm


def loguniform_values(k: int, g: torch.Generator, lower: float) -> Tensor:
    """k values log-uniform on [lower, 1], descending, fp64, with both ends hit exactly (so
    κ = 1/lower); one draw of k uniforms from ``g``."""
    expo = torch.rand(k, generator=g, dtype=torch.float64) * math.log10(lower)
    expo[0] = 0.0
    if k > 1:
        expo[-1] = math.log10(lower)
    return torch.sort(10.0**expo, descending=True).values


def relative_spectral_error(Y: Tensor, ref: Tensor) -> float:
    """``‖Y − ref‖₂ / ‖ref‖₂`` in fp64 (0 when both are zero)."""
    ref = ref.to(torch.float64)
    diff = torch.linalg.matrix_norm(Y.to(ref.device, torch.float64) - ref, ord=2).max()
    base = torch.linalg.matrix_norm(ref, ord=2).max()
    if base == 0:
        return float(diff)
    return float(diff / base)
