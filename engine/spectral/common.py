"""Shared helpers for spectral maps: input checks, working dtype, the wide orientation."""

from __future__ import annotations

import torch
from torch import Tensor

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# The dtypes a spec may name, by name (optimizer hyper-parameters, lab specs).
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (clocks read after it measure the work, not the
    launch); nothing to wait for on a CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_matrix(G: Tensor, name: str = "G") -> None:
    """Raise ``ValueError`` unless ``G`` is a real floating 2-D matrix or a 3-D batch of them."""
    if not isinstance(G, Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor (got {type(G).__name__})")
    if G.ndim not in (2, 3):
        raise ValueError(
            f"{name}: expected a 2-D matrix or a 3-D batch of matrices (got shape "
            f"{tuple(G.shape)}); reshape conv filters to (out, in·kh·kw) first"
        )
    if G.dtype not in _FLOATS:
        raise ValueError(f"{name}: expected a floating dtype (got {G.dtype})")


def work_dtype(G: Tensor, dtype: torch.dtype | None, allow_half: bool = False) -> torch.dtype:
    """The dtype a map computes in: ``dtype`` if given, else ``G``'s (fp32 for half inputs).

    Factorisation-based maps (SVD, eigh, QR, Cholesky) have no half-precision kernels, so they
    refuse bf16/fp16 unless ``allow_half`` (the matmul-only maps) says otherwise.
    """
    d = dtype if dtype is not None else G.dtype
    if d in (torch.float16, torch.bfloat16):
        if dtype is None:
            return torch.float32
        if not allow_half:
            raise ValueError(f"dtype: {d} is not supported by this map; use float32 or float64")
    elif d not in (torch.float32, torch.float64):
        raise ValueError(f"dtype: expected a floating dtype (got {d})")
    return d


def to_wide(X: Tensor) -> tuple[Tensor, bool]:
    """``(X or Xᵀ, transposed)`` so that rows ≤ cols: every Gram below is the small side."""
    if X.shape[-2] > X.shape[-1]:
        return X.mT, True
    return X, False


def from_wide(X: Tensor, transposed: bool) -> Tensor:
    return X.mT if transposed else X


def spectral_norm_estimate(X: Tensor, iters: int = 8) -> Tensor:
    """A deterministic lower estimate of ‖X‖₂ per matrix (shape ``X.shape[:-2]``).

    Power iteration on the small Gram through matrix–vector products (O(mn) each), started from
    ``X·1`` so no random generator is touched. It approaches ‖X‖₂ from below: callers multiply by
    a safety factor and cap it by the Frobenius norm, which is always an upper bound.
    """
    ones = torch.ones(X.shape[-1], 1, dtype=X.dtype, device=X.device)
    w = X @ ones  # (..., m, 1)
    for _ in range(iters):
        w = w / w.norm(dim=(-2, -1), keepdim=True).clamp_min(torch.finfo(X.dtype).tiny)
        w = X @ (X.mT @ w)
    w = w / w.norm(dim=(-2, -1), keepdim=True).clamp_min(torch.finfo(X.dtype).tiny)
    return (X.mT @ w).norm(dim=(-2, -1))


def safe_scale(X: Tensor, safety: float = 1.05) -> Tensor:
    """An upper bound α ≥ ‖X‖₂ per matrix, shaped to divide ``X`` (…, 1, 1); 1 for a zero matrix.

    ``min(safety · power-iteration estimate, ‖X‖_F)``: the Frobenius cap makes it a true upper
    bound whenever the estimate falls short by more than the safety factor.
    """
    fro = X.norm(dim=(-2, -1))
    est = spectral_norm_estimate(X)
    alpha = torch.minimum(est * safety, fro)
    alpha = torch.where(alpha > 0, alpha, torch.ones_like(alpha))
    return alpha[..., None, None]


def stacked_q(X: Tensor, scale: float, bottom: Tensor | float = 1.0) -> Tensor:
    """The thin Q factor, (…, n+m, m), of ``[scale·Xᵀ; bottom·I]`` for a wide (…, m, n) ``X``
    (``bottom`` a number or one per matrix, shaped (…, 1, 1)).

    The QR-based rational iterations (QDWH, Freon) read ``(I + scale² XXᵀ)⁻¹`` off it without
    forming XXᵀ. The stack is written transposed, so it is column-major as LAPACK's geqrf takes
    it (one pass over X, no concatenation, no transposing copy), and R is never formed
    (``torch.linalg.qr`` also copies R out): together 15–20 % of the QR's time at 512×1024
    and 1024² on the development CPU.
    """
    m = X.shape[-2]
    stack_t = X.new_empty(*X.shape[:-1], X.shape[-1] + m)
    torch.mul(X, scale, out=stack_t[..., :-m])
    stack_t[..., -m:] = torch.eye(m, dtype=X.dtype, device=X.device) * bottom
    a, tau = torch.geqrf(stack_t.mT)
    return torch.linalg.householder_product(a, tau)
