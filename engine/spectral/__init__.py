"""The one registry of spectral maps: ``G = U Σ Vᵀ ↦ U f(Σ) Vᵀ`` (exactly or approximately).

Every map has the signature ``fn(G, *, dtype=None, **options) -> Tensor``: ``G`` is a 2-D matrix
or a 3-D batch, the result has ``G``'s shape and is computed in (and returned as) ``dtype``
(default: ``G``'s dtype, fp32 for half inputs). Maps iterate on the wide orientation. Options
are keyword-only and validated with a ``ValueError`` naming the option. Random maps also take
``generator=`` (a CPU ``torch.Generator``) so that seeded runs are reproducible. Every map is
scale-invariant (or scales exactly) over the dtype's finite range, sends an empty matrix to an
empty one and a zero matrix to zero, and raises ``engine.errors.MapError`` (map, shape,
reason) where it has no answer; each entry's ``cases`` say what it returns and how exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from approximant.engine.spectral.contracts import MapCase, registry_cases
from approximant.engine.spectral.exact import (
    gram_eigh,
    kaon_iid,
    polar_svd,
    spectral_power,
    svd_map,
    truncated_sgd,
)
from approximant.engine.spectral.freon import freon, warm_freon
from approximant.engine.spectral.newton_schulz import kaon_chaos, newton_schulz
from approximant.engine.spectral.qdwh import qdwh


@dataclass(frozen=True)
class SpectralMap:
    """A registered map. ``exact``: equal to its target up to rounding (no iteration error);
    ``random``: takes ``generator=``; ``half``: runs in bf16/fp16 (matmul only); ``warm``:
    ``warm(shape, **options)`` precomputes what a call on that shape will look up;
    ``cases``: what it must return, with tolerances (engine/spectral/contracts.py), which the
    property tests run for every entry."""

    name: str
    fn: Callable[..., Tensor]
    description: str
    exact: bool = False
    random: bool = False
    half: bool = False
    warm: Callable[..., None] | None = None
    cases: tuple[MapCase, ...] = ()


_CASES = registry_cases()
SPECTRAL_MAPS: dict[str, SpectralMap] = {
    m.name: m
    for m in (
        SpectralMap("svd", svd_map, "U f(Σ) Vᵀ for any f, by thin SVD (reference).",
                    exact=True, cases=_CASES["svd"]),
        SpectralMap("svd_polar", polar_svd, "Polar factor U Vᵀ by SVD (reference).",
                    exact=True, cases=_CASES["svd_polar"]),
        SpectralMap("spectral_power", spectral_power,
                    "(GGᵀ + δ²I)^(−c) G = U σ(σ²+δ²)^(−c) Vᵀ by SVD (reference).",
                    exact=True, cases=_CASES["spectral_power"]),
        SpectralMap("gram_eigh", gram_eigh,
                    "(GGᵀ + δ²I)^(−c) G by eigh of the smaller Gram (squares κ).",
                    exact=True, cases=_CASES["gram_eigh"]),
        SpectralMap("newton_schulz", newton_schulz,
                    "Newton–Schulz odd quintics with a named schedule (matmul only).",
                    half=True, cases=_CASES["newton_schulz"]),
        SpectralMap("qdwh", qdwh, "Polar factor by QDWH (QR, then Cholesky once safe).",
                    cases=_CASES["qdwh"]),
        SpectralMap("freon", freon,
                    "(GGᵀ + δ²I)^(−c) G by Freon's rational iteration (QR/Cholesky, no SVD).",
                    warm=warm_freon, cases=_CASES["freon"]),
        SpectralMap("kaon_chaos", kaon_chaos,
                    "Kaon chaotic map: 5× X ← 4.1(I − XXᵀ)²X, /1.175 (matmul only).",
                    half=True, cases=_CASES["kaon_chaos"]),
        SpectralMap("kaon_iid", kaon_iid,
                    "Kaon SVD form: singular values replaced by i.i.d. draws on [low, high].",
                    exact=True, random=True, cases=_CASES["kaon_iid"]),
        SpectralMap("truncated_sgd", truncated_sgd,
                    "G with the top fraction of its singular values zeroed (by SVD).",
                    exact=True, cases=_CASES["truncated_sgd"]),
    )
}


def get_map(name: str) -> SpectralMap:
    """The map called ``name``; ``ValueError`` lists the allowed names otherwise."""
    try:
        return SPECTRAL_MAPS[name]
    except KeyError:
        raise ValueError(
            f"map: unknown {name!r}; allowed: {', '.join(sorted(SPECTRAL_MAPS))}"
        ) from None


def apply_map(name: str, G: Tensor, **options: Any) -> Tensor:
    """Run registered map ``name`` on ``G`` with ``options`` (see each map's docstring)."""
    return get_map(name).fn(G, **options)


__all__ = ["SPECTRAL_MAPS", "MapCase", "SpectralMap", "apply_map", "get_map"]
