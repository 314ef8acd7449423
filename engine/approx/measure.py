"""Measurements of an approximation against the fp64 SVD reference of its input.

Every map acts on each singular value separately, so with ``G = U Σ Vᵀ`` the exact answer is
``T = U f(Σ) Vᵀ`` and the diagonal of ``Uᵀ X V`` is the map's transfer function φ(σ) read off
the actual output (off-diagonal mass is error the scalar picture does not show; the norms
below include it). Errors are relative to ‖T‖₂ (the largest target value), so polar and power
targets, and huge or tiny inputs, share one scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from approximant.engine.spectral.exact import null_mask

CURVE_POINTS = 64  # points kept per transfer curve and per output spectrum


@dataclass(frozen=True)
class Reference:
    """The fp64 SVD of one input matrix (of the batch) and its target values."""

    U: Tensor
    s: Tensor
    Vh: Tensor
    f: Tensor  # target singular values, aligned with s
    T: Tensor  # U diag(f) Vh
    dtype: torch.dtype = torch.float64  # the input's: its eps sets the null threshold

    @property
    def null(self) -> Tensor:
        """The numerically-zero σ of this matrix (the registry's threshold, max(m, n)·eps of
        the dtype the method received it in: an fp32 matrix's rounding noise is null)."""
        return null_mask(self.s, max(self.T.shape), self.dtype)

    @property
    def scale(self) -> float:
        top = float(self.f.max()) if self.f.numel() else 0.0
        return top if top > 0 else 1.0


def target_values(s: Tensor, c: float, size: int | None = None,
                  dtype: torch.dtype | None = None) -> Tensor:
    """σ^(1−2c) with 0 on the null space (the pseudo-inverse convention of the registry;
    ``size`` = max(m, n) and ``dtype`` set its threshold). One power, so 1e300 inputs do not
    overflow."""
    out = s.clamp_min(torch.finfo(s.dtype).tiny).pow(1.0 - 2.0 * c) if c else s.clone()
    return torch.where(null_mask(s, size, dtype), torch.zeros_like(s), out)


def references(G: Tensor, c: float) -> list[Reference]:
    """One reference per matrix of ``G`` (2-D: one; 3-D: one per batch member), in fp64 on CPU."""
    mats = [G] if G.ndim == 2 else list(G)
    out = []
    for M in mats:
        M64 = M.detach().to("cpu", torch.float64)
        U, s, Vh = torch.linalg.svd(M64, full_matrices=False)
        f = target_values(s, c, max(M64.shape), M.dtype)
        out.append(Reference(U, s, Vh, f, (U * f) @ Vh, M.dtype))
    return out


def effective_lower_bound(refs: list[Reference]) -> float:
    """ℓ_eff: the smallest nonzero σ of the Frobenius-normalised input (worst over a batch)."""
    worst = math.inf
    for r in refs:
        fro = float(r.s.norm())
        live = r.s[~r.null]
        if fro > 0 and live.numel():
            worst = min(worst, float(live.min()) / fro)
    return worst if math.isfinite(worst) else 0.0


def condition_number(refs: list[Reference]) -> float:
    worst = 0.0
    for r in refs:
        live = r.s[~r.null]
        if live.numel():
            worst = max(worst, float(live.max() / live.min()))
    return worst


def _small_gram(X: Tensor) -> Tensor:
    return X @ X.mT if X.shape[0] <= X.shape[1] else X.mT @ X


def _top_singular_value(E: Tensor) -> float:
    """‖E‖₂ from the largest eigenvalue of its small Gram: λ_max is perfectly conditioned, so
    this is as accurate as an SVD (relative error ≈ m·eps) at a third of the cost."""
    w = torch.linalg.eigvalsh(_small_gram(E))
    return math.sqrt(max(float(w[-1]), 0.0))


# Below this fraction of λ_max the Gram's eigenvalues are rounding noise (fp64 eps × margin).
_GRAM_FLOOR = 1e-12


def _singular_values(X: Tensor, W: Tensor) -> Tensor:
    """σ(X), from the Gram W = XXᵀ when that resolves every σ (the usual case for outputs near
    the unit band), else from an SVD: the Gram squares κ and cannot see σ < 1e-6·σ_max."""
    w = torch.linalg.eigvalsh(W)
    top = float(w[-1])
    if top > 0 and float(w[0]) > _GRAM_FLOOR * top:
        return torch.sqrt(w).flip(0)
    return torch.linalg.svdvals(X)


def _quantiles(values: Tensor, k: int = CURVE_POINTS) -> Tensor:
    v = torch.sort(values).values
    if v.numel() <= k:
        return v
    idx = torch.linspace(0, v.numel() - 1, k).round().long()
    return v[idx]


@dataclass
class Measurement:
    err_spec: float
    err_rms: float
    band_min: float
    band_max: float
    orth_err: float
    nuclear_frac: float
    finite: bool
    transfer: list[tuple[float, float]]  # (input σ/σ_max, output φ), downsampled
    spectrum: list[float]  # output σ quantiles (equal mass each)


def measure(X: Tensor, refs: list[Reference], polar: bool) -> Measurement:
    """Errors of ``X`` (G's shape, any dtype/device) against ``refs`` (worst over a batch)."""
    mats = [X] if X.ndim == 2 else list(X)
    nan = float("nan")
    if not bool(torch.isfinite(X).all()):
        return Measurement(nan, nan, nan, nan, nan, nan, False, [], [])
    e_spec = e_rms = orth = 0.0
    lo, hi = math.inf, 0.0
    nuc_num = nuc_den = 0.0
    pairs: list[Tensor] = []
    outs: list[Tensor] = []
    for M, r in zip(mats, refs, strict=True):
        X64 = M.detach().to("cpu", torch.float64)
        E = X64 - r.T
        rmin = min(X64.shape)
        e_spec = max(e_spec, _top_singular_value(E) / r.scale)
        e_rms = max(e_rms, float(E.norm()) / math.sqrt(rmin) / r.scale)
        W = _small_gram(X64)
        sv = _singular_values(X64, W)
        lo, hi = min(lo, float(sv.min())), max(hi, float(sv.max()))
        outs.append(sv)
        if polar:
            orth = max(orth, float((W - torch.eye(W.shape[0], dtype=W.dtype)).norm()))
        # ⟨G, X⟩ = Σ σᵢ uᵢᵀ X vᵢ, so φ and the captured fraction come from one product.
        phi = ((r.U.mT @ X64) * r.Vh).sum(dim=-1)
        nuc_num += float((r.s * phi).sum())
        nuc_den += float(r.s.sum())
        live = ~r.null
        # x is σ/σ_max: the chart's axis is scale-free, like the methods' own normalisation.
        pairs.append(torch.stack([r.s[live] / r.s.max(), phi[live]], dim=-1))
    allp = torch.cat(pairs)
    if allp.numel():
        order = torch.argsort(allp[:, 0])
        allp = allp[order]
        if allp.shape[0] > CURVE_POINTS:
            idx = torch.linspace(0, allp.shape[0] - 1, CURVE_POINTS).round().long()
            allp = allp[idx]
    transfer = [(float(a), float(b)) for a, b in allp.tolist()]
    spectrum = [float(v) for v in _quantiles(torch.cat(outs))]
    return Measurement(
        err_spec=e_spec, err_rms=e_rms, band_min=lo, band_max=hi,
        orth_err=orth if polar else nan,
        nuclear_frac=nuc_num / nuc_den if nuc_den > 0 else nan,
        finite=True, transfer=transfer, spectrum=spectrum,
    )


def gemm_gflops(m: int, n: int, dtype: torch.dtype, device: torch.device,
                repeats: int = 5) -> float:
    """Same-machine GEMM speed for an (m×n)·(n×m) product: the roofline a method is held to."""
    import time

    A = torch.randn(m, n, dtype=torch.float32, device=device).to(dtype)
    B = A.mT.contiguous()
    times = []
    for _ in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        A @ B
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    t = sorted(times[1:])[len(times[1:]) // 2]  # first call warms the kernel up
    return 2.0 * m * m * n / max(t, 1e-9) / 1e9
