"""Test matrices for the approximation lab: controlled spectra × shapes, edge cases, captures.

A case is named by two strings that travel in the lab spec: a *spectrum* (``loguniform:1e-6``,
``powerlaw:1``, ``lowrank:16``, ``gaussian``, and the edge cases ``rankdef:0.5``, ``rank1``,
``zero``, ``orthogonal``, ``scaled:1e30``) and a *shape* (``256x256``, ``1024x256``,
``8x64x96`` for a batch of 8, or a GPT-2-small matrix such as ``gpt2:mlp_fc``). Every matrix
is built in fp64 from Haar-random factors with a seeded generator, so a case is the same on
every machine.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from approximant.engine.errors import short
from approximant.engine.spectral.testing import loguniform_values

# The 2-D weight shapes of GPT-2 small (d_model 768), as (rows, cols) of nn.Linear.weight.
GPT2_SHAPES: dict[str, tuple[int, int]] = {
    "gpt2:attn_qkv": (2304, 768),
    "gpt2:attn_proj": (768, 768),
    "gpt2:mlp_fc": (3072, 768),
    "gpt2:mlp_proj": (768, 3072),
}
MAX_DIM = 4096
MAX_BATCH = 64
MAX_ELEMENTS = 16 * 1024 * 1024

# Low-rank-plus-noise: the noise floor relative to the unit top singular value.
LOWRANK_NOISE = 1e-3


@dataclass(frozen=True)
class Shape:
    batch: int | None
    rows: int
    cols: int

    @property
    def dims(self) -> tuple[int, ...]:
        return (self.rows, self.cols) if self.batch is None else (self.batch, self.rows, self.cols)


def parse_shape(text: str) -> Shape:
    """``"256x512"``, ``"8x64x96"`` (a batch of 8) or a GPT-2 name; ``ValueError`` otherwise."""
    t = text.strip().lower()
    if len(t) > 64:  # int() of a thousand-digit string is itself slow
        raise ValueError(f"shape {short(text)}: expected ROWSxCOLS, BATCHxROWSxCOLS or a name")
    if t in GPT2_SHAPES:
        return Shape(None, *GPT2_SHAPES[t])
    if not re.fullmatch(r"\d+x\d+(x\d+)?", t):
        raise ValueError(
            f"shape {short(text)}: expected ROWSxCOLS, BATCHxROWSxCOLS or one of "
            f"{', '.join(GPT2_SHAPES)}"
        )
    nums = [int(x) for x in t.split("x")]
    batch, rows, cols = (None, *nums) if len(nums) == 2 else nums
    if not (1 <= rows <= MAX_DIM and 1 <= cols <= MAX_DIM):
        raise ValueError(f"shape {short(text)}: rows and cols must be in [1, {MAX_DIM}]")
    if batch is not None and not 1 <= batch <= MAX_BATCH:
        raise ValueError(f"shape {short(text)}: batch must be in [1, {MAX_BATCH}]")
    if (batch or 1) * rows * cols > MAX_ELEMENTS:
        raise ValueError(f"shape {short(text)}: more than {MAX_ELEMENTS} elements")
    return Shape(batch, rows, cols)


def _haar(rows: int, r: int, g: torch.Generator) -> Tensor:
    Q, R = torch.linalg.qr(torch.randn(rows, r, generator=g, dtype=torch.float64))
    # Sign fix makes Q Haar-distributed rather than biased by QR's sign convention.
    return Q * torch.sign(torch.diagonal(R)).where(torch.diagonal(R) != 0, 1.0)


def _from_values(rows: int, cols: int, s: Tensor, g: torch.Generator) -> Tensor:
    r = min(rows, cols)
    U, V = _haar(rows, r, g), _haar(cols, r, g)
    return (U * s) @ V.mT


@dataclass(frozen=True)
class SpectrumKind:
    name: str
    description: str
    # (rows, cols, parameter, generator) -> fp64 matrix
    build: Callable[[int, int, float, torch.Generator], Tensor]
    default: float | None = None  # the parameter when the spectrum string has none
    low: float | None = None  # allowed parameter range, inclusive
    high: float | None = None


def _b_loguniform(m: int, n: int, p: float, g: torch.Generator) -> Tensor:
    return _from_values(m, n, loguniform_values(min(m, n), g, p), g)


def _b_powerlaw(m: int, n: int, p: float, g: torch.Generator) -> Tensor:
    i = torch.arange(1, min(m, n) + 1, dtype=torch.float64)
    return _from_values(m, n, i.pow(-p), g)


def _b_lowrank(m: int, n: int, p: float, g: torch.Generator) -> Tensor:
    r = min(m, n)
    k = min(int(p), r)
    s = torch.full((r,), 0.0, dtype=torch.float64)
    s[:k] = loguniform_values(k, g, 1e-1) if k > 0 else s[:0]
    G = _from_values(m, n, s, g)
    noise = torch.randn(m, n, generator=g, dtype=torch.float64)
    # Scaled so the noise's top singular value is ≈ LOWRANK_NOISE (‖N‖₂ ≈ √m + √n).
    return G + noise * (LOWRANK_NOISE / (math.sqrt(m) + math.sqrt(n)))


def _b_gaussian(m: int, n: int, p: float, g: torch.Generator) -> Tensor:
    return torch.randn(m, n, generator=g, dtype=torch.float64) / math.sqrt(max(m, n))


def _b_rankdef(m: int, n: int, p: float, g: torch.Generator) -> Tensor:
    r = min(m, n)
    k = max(1, int(round(r * (1 - p))))
    s = torch.zeros(r, dtype=torch.float64)
    s[:k] = loguniform_values(k, g, 1e-3)
    return _from_values(m, n, s, g)


def _b_rank1(m: int, n: int, p: float, g: torch.Generator) -> Tensor:
    s = torch.zeros(min(m, n), dtype=torch.float64)
    s[0] = 1.0
    return _from_values(m, n, s, g)


def _b_zero(m: int, n: int, p: float, g: torch.Generator) -> Tensor:
    return torch.zeros(m, n, dtype=torch.float64)


def _b_orthogonal(m: int, n: int, p: float, g: torch.Generator) -> Tensor:
    return _from_values(m, n, torch.ones(min(m, n), dtype=torch.float64), g)


def _b_scaled(m: int, n: int, p: float, g: torch.Generator) -> Tensor:
    return _b_loguniform(m, n, 1e-3, g) * p


SPECTRA: dict[str, SpectrumKind] = {
    k.name: k
    for k in (
        SpectrumKind("loguniform", "σ log-uniform on [ℓ, 1]; parameter ℓ (κ = 1/ℓ)",
                     _b_loguniform, 1e-3, 1e-16, 1.0),
        SpectrumKind("powerlaw", "σᵢ = i^(−α); parameter α", _b_powerlaw, 1.0, 0.0, 4.0),
        SpectrumKind("lowrank", f"k values log-uniform on [0.1, 1] plus noise of norm "
                     f"{LOWRANK_NOISE:g}; parameter k", _b_lowrank, 16.0, 1.0, 4096.0),
        SpectrumKind("gaussian", "i.i.d. N(0, 1/max(m, n)) entries (Marchenko–Pastur)",
                     _b_gaussian),
        SpectrumKind("rankdef", "a fraction of σ exactly 0, the rest log-uniform on [1e-3, 1]; "
                     "parameter the zero fraction", _b_rankdef, 0.5, 0.0, 0.99),
        SpectrumKind("rank1", "one singular value 1, the rest exactly 0 (a batch-1 gradient: "
                     "Kaon's root, CANS's overshoot)", _b_rank1),
        SpectrumKind("zero", "the zero matrix", _b_zero),
        SpectrumKind("orthogonal", "already orthogonal: every σ = 1", _b_orthogonal),
        SpectrumKind("scaled", "log-uniform on [1e-3, 1] times a scale (huge or tiny; beyond "
                     "1e±38 only fp64 holds it); parameter the scale", _b_scaled, 1e20, 1e-300,
                     1e300),
    )
}


# The edge cases the spectral engine is tested on (tests/engine/test_spectral_properties.py),
# as lab spectra: scale at both ends of fp32's and fp64's range, rank one, rank-deficient,
# zero. A job over these shows each map's convention on the page.
EDGE_SPECTRA = ("scaled:1e30", "scaled:1e-30", "scaled:1e160", "scaled:1e-160", "rank1",
                "rankdef:0.5", "zero", "orthogonal")


@dataclass(frozen=True)
class Spectrum:
    kind: SpectrumKind
    param: float | None

    @property
    def label(self) -> str:
        return self.kind.name if self.param is None else f"{self.kind.name}:{self.param:g}"


def parse_spectrum(text: str) -> Spectrum:
    """``"loguniform:1e-6"``, ``"gaussian"``…; ``ValueError`` naming the allowed forms."""
    name, _, arg = text.strip().partition(":")
    kind = SPECTRA.get(name)
    if kind is None:
        raise ValueError(f"spectrum {short(text)}: unknown kind {short(name)}; allowed: "
                         f"{', '.join(SPECTRA)}")
    if kind.default is None:
        if arg:
            raise ValueError(f"spectrum {short(text)}: {name} takes no parameter")
        return Spectrum(kind, None)
    try:
        p = float(arg) if arg else kind.default
    except ValueError:
        raise ValueError(
            f"spectrum {short(text)}: parameter {short(arg)} is not a number") from None
    if not (kind.low <= p <= kind.high):
        raise ValueError(
            f"spectrum {short(text)}: parameter must be in [{kind.low:g}, {kind.high:g}]")
    return Spectrum(kind, p)


def case_seed(seed: int, spectrum: str, shape: str) -> int:
    """A per-case seed from the job seed and the case's name (stable across Python runs)."""
    import hashlib

    digest = hashlib.sha256(f"{seed}|{spectrum}|{shape}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def build_case(spectrum: str, shape: str, seed: int = 0) -> Tensor:
    """The fp64 test matrix (2-D, or 3-D for a batched shape) for this spectrum and shape."""
    sp, sh = parse_spectrum(spectrum), parse_shape(shape)
    g = torch.Generator().manual_seed(case_seed(seed, sp.label, shape))
    param = sp.param if sp.param is not None else 0.0
    mats = [sp.kind.build(sh.rows, sh.cols, param, g) for _ in range(sh.batch or 1)]
    return mats[0] if sh.batch is None else torch.stack(mats)
