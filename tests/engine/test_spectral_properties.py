"""Every registered map, every case it declares, against an independent fp64 SVD (scipy's
gesvd, not torch's gesdd), over shape, scale across the dtype's range, rank and dtype.

The cases and their tolerances live in the registry (``SpectralMap.cases``, defined in
engine/spectral/contracts.py and listed in docs/lab.md), so a new map is tested here as soon
as it declares what it returns. The reference is built from the matrix exactly as the map
received it (after rounding to its dtype), so rounding of the input is never counted against
the map; what the map does with the numerical noise of a rank-deficient input is its
declared null convention.
"""

from __future__ import annotations

import math

import pytest
import scipy.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from approximant.engine.spectral import SPECTRAL_MAPS, MapCase

# Binary exponents of the scale: G's largest singular value is 2^e. fp32 (and bf16, which
# gets an fp32 matrix) to 1e±33, fp64 to 1e±301: the answers, which scale at most as 1/G
# times 500 here (Freon c = 1, δ = 1e-3), stay representable.
SCALE_EXPONENTS = {torch.float32: 110, torch.bfloat16: 110, torch.float64: 1000}
EXAMPLES = 40

CASES = [pytest.param(name, i, id=f"{name}-{i}")
         for name, entry in sorted(SPECTRAL_MAPS.items()) for i in range(len(entry.cases))]


def test_every_registered_map_declares_cases() -> None:
    missing = [name for name, entry in SPECTRAL_MAPS.items() if not entry.cases]
    assert missing == [], "declare MapCases in engine/spectral/contracts.py"


def _spectrum(k: int, r: int, kappa: float, jitter: list[float]) -> torch.Tensor:
    """r values, k of them nonzero: the top exactly 1, the rest stratified log-uniform on
    [1/κ, 1] (one per stratum, so neighbours differ by ≥ κ^(1/2k) − 1, ≥ 10 % here)."""
    s = torch.zeros(r, dtype=torch.float64)
    for i in range(k):
        s[i] = 1.0 if i == 0 else kappa ** (-(i + 0.25 + 0.5 * jitter[i]) / k)
    return s


def _haar(rows: int, r: int, g: torch.Generator) -> torch.Tensor:
    Q, R = torch.linalg.qr(torch.randn(rows, r, generator=g, dtype=torch.float64))
    return Q * torch.sign(torch.diagonal(R)).where(torch.diagonal(R) != 0, 1.0)


@st.composite
def _inputs(draw: st.DrawFn, case: MapCase, half: bool) -> dict:
    dtypes = [d for d in case.tol if d != torch.bfloat16 or half]
    dtype = draw(st.sampled_from(dtypes))
    m, n = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    batch = draw(st.sampled_from([None, None, 2]))
    r = min(m, n)
    ranks = st.integers(0, r) if case.rank_deficient else st.just(r)
    k = draw(ranks)
    kappa = 10.0 ** draw(st.integers(0, round(math.log10(case.kappa))))
    if k > 1:
        kappa = max(kappa, 1.2 ** k)  # keeps the strata ≥ 10 % apart for any rank
        kappa = min(kappa, case.kappa)
    top = SCALE_EXPONENTS[dtype]
    e = draw(st.one_of(st.integers(-top, top), st.sampled_from([-top, 0, top])))
    jitter = draw(st.lists(st.floats(0, 1), min_size=r, max_size=r))
    seed = draw(st.integers(0, 2**31 - 1))
    return dict(dtype=dtype, m=m, n=n, batch=batch, k=k, kappa=kappa, e=e, jitter=jitter,
                seed=seed)


def _reference(G: torch.Tensor, e: int, case: MapCase, dtype: torch.dtype,
               options: dict) -> torch.Tensor:
    """U f(Σ) Vᵀ (fp64) of G·2^(−e), G exactly as the map received it, by LAPACK gesvd."""
    mats = G.double().reshape(-1, *G.shape[-2:]) * 2.0**-e  # exact: a power of two
    out = []
    for M in mats:
        U, s, Vt = scipy.linalg.svd(M.numpy(), full_matrices=False, lapack_driver="gesvd")
        out.append((U, s, Vt))
    s_all = torch.stack([torch.from_numpy(s) for _, s, _ in out])
    f = case.values(s_all, dtype, max(G.shape[-2:]), options)
    T = [torch.from_numpy(U) * fi @ torch.from_numpy(Vt)
         for (U, _, Vt), fi in zip(out, f, strict=True)]
    return torch.stack(T).reshape(G.shape)


def _rel_error(Y: torch.Tensor, T: torch.Tensor) -> float:
    """‖Y − T‖₂ / max(‖T‖₂, 1), worst over a batch. In the test's scaled coordinates σ_max
    is 1, so the floor is σ_max^degree: a target that is (nearly) zero, such as a truncated
    rank-one matrix, is compared at the input's scale, not at the scale of its noise."""
    Y3, T3 = Y.reshape(-1, *Y.shape[-2:]), T.reshape(-1, *T.shape[-2:])
    diff = torch.linalg.matrix_norm(Y3 - T3, ord=2)
    base = torch.linalg.matrix_norm(T3, ord=2).clamp_min(1.0)
    return float((diff / base).max())


def _call(name: str, case: MapCase, G: torch.Tensor, dtype: torch.dtype, e: int,
          seed: int) -> tuple[torch.Tensor, dict]:
    """The map's output on G with the case's options (scaled options × 2^e), and the
    options the reference needs (unscaled, with a generator in the map's starting state)."""
    entry = SPECTRAL_MAPS[name]
    opts = dict(case.options)
    ref_opts = dict(case.options)
    for key in case.scaled:
        opts[key] = opts[key] * 2.0**e
    if entry.random:
        opts["generator"] = torch.Generator().manual_seed(seed)
        ref_opts["generator"] = torch.Generator().manual_seed(seed)
    return entry.fn(G, dtype=dtype, **opts), ref_opts


@pytest.mark.parametrize(("name", "index"), CASES)
@settings(derandomize=True, deadline=None, max_examples=EXAMPLES, database=None)
@given(data=st.data())
def test_map_against_fp64_reference(name: str, index: int, data: st.DataObject) -> None:
    case = SPECTRAL_MAPS[name].cases[index]
    x = data.draw(_inputs(case, SPECTRAL_MAPS[name].half))
    dtype, m, n, k, e = x["dtype"], x["m"], x["n"], x["k"], x["e"]
    g = torch.Generator().manual_seed(x["seed"])
    s = _spectrum(k, min(m, n), x["kappa"], x["jitter"])
    mats = [(_haar(m, min(m, n), g) * s) @ _haar(n, min(m, n), g).mT
            for _ in range(x["batch"] or 1)]
    G64 = (torch.stack(mats) if x["batch"] else mats[0]) * 2.0**e
    G = G64.to(torch.float64 if dtype == torch.float64 else torch.float32)
    Y, ref_opts = _call(name, case, G, dtype, e, x["seed"])

    assert Y.shape == G.shape and Y.dtype == dtype
    assert bool(torch.isfinite(Y).all()), "non-finite output"
    if k == 0:
        assert not bool(Y.any()), "a zero input must give a zero output"
        return
    tol = case.tol[dtype]
    if math.isinf(tol):
        return
    T = _reference(G, e, case, dtype, ref_opts)
    Yd = Y.double() * 2.0 ** (-e * case.degree)
    err = _rel_error(Yd, T)
    assert err <= tol, f"{name}{dict(case.options)} {x}: error {err:.2e} > {tol:.0e}"


@pytest.mark.parametrize(("name", "index"), CASES)
@pytest.mark.parametrize("shape", [(0, 5), (5, 0), (0, 0), (2, 0, 3), (0, 4, 4)])
def test_empty_input_gives_empty_output(name: str, index: int, shape: tuple[int, ...]) -> None:
    case = SPECTRAL_MAPS[name].cases[index]
    G = torch.zeros(shape)
    Y, _ = _call(name, case, G, torch.float32, 0, 0)
    assert Y.shape == G.shape and Y.dtype == torch.float32
