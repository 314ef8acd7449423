"""Shared helpers for spectral maps: input checks, working dtype, the wide orientation, exact
power-of-two scaling, readable failures and the numerical null space."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from approximant.engine.errors import MapError, clip

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


def empty_result(G: Tensor, d: torch.dtype) -> Tensor | None:
    """The (empty) answer for a matrix with no entries, or None when ``G`` has entries: every
    map sends an empty matrix to an empty one of its shape (no factorisation is run)."""
    return torch.empty_like(G, dtype=d) if G.numel() == 0 else None


@contextmanager
def map_errors(name: str, G: Tensor) -> Iterator[None]:
    """Turn a factorisation's ``LinAlgError`` into a ``MapError`` that names the map, ``G``'s
    shape and the reason (NaN/inf input, or the factorisation's own message)."""
    try:
        yield
    except torch.linalg.LinAlgError as err:
        nonfinite = not bool(torch.isfinite(G).all())
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        reason = ("the input holds NaN or inf" if nonfinite
                  else f"a factorisation failed ({clip(first, 200)})")
        raise MapError(name, tuple(G.shape), reason, nonfinite) from err


# frexp exponents of the smallest normal and the largest finite number: a power of two 2^(−e)
# with e in this range is representable (2^(−128) in fp32 as a subnormal, exactly).
_EXPONENTS = {d: tuple(int(torch.frexp(torch.tensor(v, dtype=torch.float64)).exponent)
                      for v in (torch.finfo(d).tiny, torch.finfo(d).max))
              for d in _FLOATS}


def pow2_exponent(X: Tensor, floor: float = 0.0) -> Tensor:
    """Per matrix, the integer e with ``max(max|X|, floor) ∈ [2^(e−1), 2^e)``, shaped (…, 1, 1)
    (int32); 0 for a zero matrix or one holding NaN/inf (they pass through unscaled, so NaN
    still propagates). Clamped to ``X``'s exponent range so that ``2^(−e)`` is representable.

    Dividing by 2^e is exact in binary floating point (no rounding unless an entry leaves the
    normal range), so a map can bring any finite input to max-abs ≈ 1 before it squares
    anything, and the result in the normal range is bit for bit what it was unscaled.
    ``floor``: a number in G's units that the scale must also cover (Freon's δ).
    """
    # Two reductions, no |X| copy: vector_norm(ord=inf) took 0.35 ms on 256×512 fp32 here.
    top = torch.maximum(X.amax(dim=(-2, -1), keepdim=True), -X.amin(dim=(-2, -1), keepdim=True))
    if floor > 0:
        top = top.double().clamp_min(floor)
    # frexp gives exponent 0 for 0, ±inf and NaN (C99 leaves the last two open; torch's CPU
    # and CUDA kernels both store 0, and a test holds it): no mask needed, a few µs saved
    # on the Muon path's small matrices.
    lo, hi = _EXPONENTS[X.dtype]
    return torch.frexp(top).exponent.clamp_(lo, hi)


def pow2(e: Tensor, dtype: torch.dtype) -> Tensor:
    """``2^e`` exactly, in ``dtype`` (e an integer tensor within ``dtype``'s exponent range)."""
    return torch.ldexp(torch.ones_like(e, dtype=torch.float64), e).to(dtype)


def scale_pow2(X: Tensor, e: Tensor) -> Tensor:
    """``X·2^e`` exactly, for integer exponents e (broadcasting, within X's exponent range).

    A multiplication by the power of two, not ``torch.ldexp``, which measured 35× slower on
    a 256×512 fp32 matrix (0.44 ms against 0.012 ms: it forms ``2^e`` per element)."""
    return X * pow2(e, X.dtype)


def scaled_to(G: Tensor, e: Tensor, d: torch.dtype) -> Tensor:
    """``G·2^(−e)`` in dtype ``d``, as one new tensor (never G itself), in as few passes as the
    cast allows: cast first and scale in place when ``d`` holds every exponent of G's dtype
    (fp32 → bf16 has the same range, and bf16(G)·2^(−e) = bf16(G·2^(−e)) exactly), else
    scale first (an fp64 G of 1e160 would overflow the cast to fp32)."""
    if G.dtype == d:
        return G * pow2(-e, d)
    if _EXPONENTS[d][1] >= _EXPONENTS[G.dtype][1] and _EXPONENTS[d][0] <= _EXPONENTS[G.dtype][0]:
        return G.to(d).mul_(pow2(-e, d))
    return (G * pow2(-e, G.dtype)).to(d)


def times_pow2(Y: Tensor, e: Tensor) -> Tensor:
    """``Y·2^e`` for integer exponents e shaped (…, 1, 1), applied in two halves so that a
    scale outside Y's exponent range still gives the representable answer (2^200·2^−190)."""
    half = torch.div(e, 2, rounding_mode="floor")
    return scale_pow2(scale_pow2(Y, half), e - half)


def null_tolerance(top: Tensor, rows: int, cols: int, d: torch.dtype) -> Tensor:
    """The numerical null threshold: σ ≤ max(m, n)·eps·σ_max is zero to working precision
    (NumPy's ``matrix_rank`` tolerance), for ``top`` = σ_max of each matrix."""
    return top * (max(rows, cols, 1) * torch.finfo(d).eps)


# How an iterative map treats G's numerically-null directions (the ``null`` option).
NULL_MODES = ("keep", "zero")


def check_null(null: str) -> None:
    if null not in NULL_MODES:
        raise ValueError(f"null: must be one of {', '.join(NULL_MODES)} (got {null!r})")


def drop_null(G: Tensor, Y: Tensor, c: float) -> Tensor:
    """``Y = U y(Σ) Vᵀ`` (an approximation of ``(GGᵀ)^(−c)G``, 0 < c < 1, same shape as G)
    with the directions of G's numerical null space projected out, as the SVD maps do.

    A positive semidefinite m×m matrix on the small side ranks G's singular directions
    without an SVD of G: ``G Yᵀ = U σ y(σ) Uᵀ`` (eigenvalues σ^(2−2c)) for c ≥ ½, ``Y Yᵀ``
    (σ^(2−4c)) for c < ½: both exponents are ≤ 1 for Freon's c, so the threshold
    σ ≤ max(m, n)·eps·σ_max, carried through the power, stays above the product's own
    rounding. Directions below it are dropped. Both factors are scaled by powers of two and
    the product is formed and decomposed in fp64. Costs one m×m×n GEMM, one m×m eigh and two
    products, paid only when asked for.
    """
    d = Y.dtype
    X, transposed = to_wide(G)
    Z, _ = to_wide(Y)
    m, n = X.shape[-2], X.shape[-1]
    Zs = scale_pow2(Z.double(), -pow2_exponent(Z))
    if c < 0.5:
        H, power = Zs @ Zs.mT, 2.0 - 4.0 * c  # (…, m, m)
    else:
        Xs = scale_pow2(X.double(), -pow2_exponent(X))
        H, power = Xs @ Zs.mT, 2.0 - 2.0 * c
    mu, W = torch.linalg.eigh(0.5 * (H + H.mT))
    top = mu.amax(dim=-1, keepdim=True).clamp_min(0)
    keep = mu > top * (max(m, n) * torch.finfo(d).eps) ** power
    Wk = W * keep.unsqueeze(-2).to(W.dtype)
    return from_wide((Wk @ Wk.mT).to(d) @ Z, transposed)


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
