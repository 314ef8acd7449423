"""Every registered spectral map against an fp64 SVD reference, plus the shared contract.

Tolerances are stated per method and dtype, relative to the spectral norm of the target:

* SVD-based maps (fp64): 100·eps·κ — singular vectors of G are only determined to eps·κ.
* Gram eigh (fp64): 100·eps·κ² for c ≥ ½ — forming GGᵀ squares κ (measured ≈ 5·eps·κ²).
* QDWH (fp64): backward stable — ‖QQᵀ − I‖ and ‖G − HQ‖/‖G‖ within 100·eps for κ up to 1e16,
  and forward error within 100·eps·κ against the SVD polar factor.
* Newton–Schulz: the scalar polynomial composed on σ/‖G‖_F, to 1e-10 in fp64.
"""

from __future__ import annotations

import math

import pytest
import torch

from approximant.engine.spectral import SPECTRAL_MAPS, apply_map, get_map
from approximant.engine.spectral.qdwh import qdwh_coefficients, qdwh_polar
from approximant.engine.spectral.schedules import get_schedule
from approximant.engine.spectral.testing import controlled_matrix
from approximant.engine.spectral.testing import relative_spectral_error as rel_err

EPS64 = torch.finfo(torch.float64).eps


# Options that make each registered map runnable: each map's first declared case, so the
# contract below covers every entry of the registry without a list kept here.
CONTRACT_OPTIONS: dict[str, dict] = {
    name: dict(entry.cases[0].options) for name, entry in SPECTRAL_MAPS.items()
}


def _options(name: str) -> dict:
    opts = dict(CONTRACT_OPTIONS[name])
    if SPECTRAL_MAPS[name].random:
        opts["generator"] = torch.Generator().manual_seed(0)
    return opts


def test_contract_covers_registry() -> None:
    assert all(entry.cases for entry in SPECTRAL_MAPS.values())


@pytest.mark.parametrize("name", sorted(SPECTRAL_MAPS))
@pytest.mark.parametrize("shape", [(12, 20), (20, 12), (16, 16), (1, 9), (9, 1), (3, 8, 12)])
def test_map_contract_shape_dtype_finite(name: str, shape: tuple[int, ...]) -> None:
    G = torch.randn(*shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    Y = apply_map(name, G, **_options(name))
    assert Y.shape == G.shape
    assert Y.dtype == torch.float64
    assert torch.isfinite(Y).all()
    Y32 = apply_map(name, G.float(), **_options(name))
    assert Y32.dtype == torch.float32
    assert torch.isfinite(Y32).all()


@pytest.mark.parametrize("name", sorted(SPECTRAL_MAPS))
def test_zero_matrix_maps_to_zero(name: str) -> None:
    Y = apply_map(name, torch.zeros(6, 10, dtype=torch.float64), **_options(name))
    assert torch.equal(Y, torch.zeros_like(Y))


# Random maps draw different values per matrix, so a batch cannot equal separate calls.
@pytest.mark.parametrize("name", sorted(n for n, m in SPECTRAL_MAPS.items() if not m.random))
def test_batched_equals_per_matrix(name: str) -> None:
    G = torch.randn(3, 8, 12, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    Yb = apply_map(name, G, **_options(name))
    for i in range(3):
        Yi = apply_map(name, G[i], **_options(name))
        assert torch.allclose(Yb[i], Yi, rtol=1e-9, atol=1e-9), i


@pytest.mark.parametrize("name", sorted(SPECTRAL_MAPS))
@pytest.mark.parametrize(
    "bad", [torch.zeros(5), torch.zeros(2, 2, 2, 2), torch.zeros(3, 4, dtype=torch.int64)],
    ids=["1d", "4d", "int"],
)
def test_bad_input_raises(name: str, bad: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="G:"):
        apply_map(name, bad, **_options(name))


def test_unknown_map_lists_allowed() -> None:
    with pytest.raises(ValueError, match="allowed: .*qdwh"):
        get_map("nope")


@pytest.mark.parametrize("name", ["svd_polar", "qdwh", "newton_schulz", "freon"])
def test_vector_input_polar_direction(name: str) -> None:
    """A 1×n gradient has one singular value: every polar-type map returns a positive
    multiple of g (exactly g/‖g‖ for the convergent ones)."""
    g = torch.randn(1, 30, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    opts = {"c": 0.5} if name == "freon" else {}
    Y = apply_map(name, g, **opts)
    cos = (Y * g).sum() / (Y.norm() * g.norm())
    assert cos == pytest.approx(1.0, abs=1e-12)
    if name != "newton_schulz":  # Keller's quintic is not convergent
        assert torch.allclose(Y, g / g.norm(), atol=1e-12)
        assert torch.allclose(apply_map(name, g.T, **opts), (g / g.norm()).T, atol=1e-12)


@pytest.mark.parametrize("kappa", [1e2, 1e4, 1e6])
@pytest.mark.parametrize("c", [0.0, 0.25, 0.5, 0.75, 1.0])
@pytest.mark.parametrize("shape", [(24, 40), (40, 24), (32, 32)])
def test_exact_power_maps_against_construction(kappa: float, c: float, shape) -> None:
    t = controlled_matrix(*shape, 1 / kappa, seed=4)
    ref = t.apply(t.s ** (1 - 2 * c))
    assert rel_err(apply_map("spectral_power", t.G, c=c), ref) <= 100 * EPS64 * kappa
    # The Gram squares κ: its error grows like eps·κ^2 for c ≥ ½ (measured ≈ 5 eps κ²).
    tol = 100 * EPS64 * (kappa**2 if c >= 0.5 else kappa)
    assert rel_err(apply_map("gram_eigh", t.G, c=c), ref) <= tol


def test_power_maps_with_floor() -> None:
    t = controlled_matrix(20, 30, 1e-8, seed=5)
    delta = 1e-3
    for c in (0.5, 0.75, 1.0):
        ref = t.apply(t.s * (t.s**2 + delta**2) ** (-c))
        assert rel_err(apply_map("spectral_power", t.G, c=c, delta=delta), ref) < 1e-10
        assert rel_err(apply_map("gram_eigh", t.G, c=c, delta=delta), ref) < 1e-8


def test_rank_deficient_power_maps_zero_the_null_space() -> None:
    t = controlled_matrix(20, 30, 1e-3, rank=12, seed=6)
    for c in (0.5, 0.75):
        f = torch.where(t.s > 0, t.s.clamp_min(1e-300) ** (1 - 2 * c), torch.zeros_like(t.s))
        ref = t.apply(f)
        assert rel_err(apply_map("spectral_power", t.G, c=c), ref) < 1e-9
        assert rel_err(apply_map("gram_eigh", t.G, c=c), ref) < 1e-6
    polar = t.apply((t.s > 0).double())
    assert rel_err(apply_map("svd_polar", t.G), polar) < 1e-9
    assert rel_err(apply_map("qdwh", t.G, l0=1e-4), polar) < 1e-9


def test_spectral_power_reverses_order_for_c_above_half() -> None:
    t = controlled_matrix(16, 24, 1e-2, seed=7)
    for c, increasing in ((0.25, False), (0.75, True), (1.0, True)):
        s_out = torch.linalg.svdvals(apply_map("spectral_power", t.G, c=c))
        expected = torch.sort(t.s ** (1 - 2 * c), descending=True).values
        assert torch.allclose(s_out, expected, rtol=1e-10)
        # Map each input σ to its output: inverted order means the largest σ gets the smallest.
        Y = apply_map("spectral_power", t.G, c=c)
        gains = torch.einsum("mi,mn,ni->i", t.U, Y, t.V)
        diffs = gains[1:] - gains[:-1]
        assert bool((diffs > 0).all()) == increasing


# ---------------------------------------------------------------------------------- QDWH


@pytest.mark.parametrize("kappa", [1e2, 1e8, 1e16])
@pytest.mark.parametrize("shape", [(24, 40), (40, 24), (32, 32)])
def test_qdwh_fp64_accuracy_within_six_iterations(kappa: float, shape) -> None:
    t = controlled_matrix(*shape, 1 / kappa, seed=8)
    Q, info = qdwh_polar(t.G)  # default l0 = eps: assumes nothing about κ
    assert info.iterations <= 6
    assert info.qr_steps >= 1 and info.cholesky_steps >= 1  # switches once it is safe
    m = min(shape)
    small = Q @ Q.mT if shape[0] <= shape[1] else Q.mT @ Q
    assert torch.linalg.matrix_norm(small - torch.eye(m, dtype=Q.dtype), 2) <= 100 * EPS64
    # Backward error of the polar decomposition G = Q H (H symmetric positive semidefinite).
    H = Q.mT @ t.G
    H = 0.5 * (H + H.mT)
    assert torch.linalg.matrix_norm(t.G - Q @ H, 2) <= 100 * EPS64
    assert torch.linalg.eigvalsh(H).min() >= -100 * EPS64
    if kappa <= 1e8:  # forward error is κ-conditioned
        assert rel_err(Q, t.apply(torch.ones_like(t.s))) <= 100 * EPS64 * kappa


def test_qdwh_fp32() -> None:
    t = controlled_matrix(40, 24, 1e-3, seed=9, dtype=torch.float32)
    polar = t.apply(torch.ones_like(t.s))
    Q, info = qdwh_polar(t.G)
    assert info.iterations <= 5
    assert Q.dtype == torch.float32
    assert rel_err(Q, polar) < 1e-4


def test_qdwh_coefficients_known_values() -> None:
    # l = 1: the iteration is already converged and must be the identity map (a, b, c) = (3, 1, 3).
    a, b, c = qdwh_coefficients(1.0)
    assert (a, b, c) == pytest.approx((3.0, 1.0, 3.0))
    # Each step's image bound: σ(a + bσ²)/(1 + cσ²) at σ = l, never above 1 on [l, 1].
    for lo in (1e-16, 1e-8, 1e-3, 0.5):
        a, b, c = qdwh_coefficients(lo)
        x = torch.logspace(math.log10(lo), 0, 20001, dtype=torch.float64)
        phi = x * (a + b * x**2) / (1 + c * x**2)
        assert phi.max() <= 1 + 1e-12
        assert phi.min() == pytest.approx(lo * (a + b * lo**2) / (1 + c * lo**2), rel=1e-9)


def test_qdwh_rejects_bad_l0() -> None:
    with pytest.raises(ValueError, match="l0"):
        qdwh_polar(torch.randn(4, 5), l0=0.0)


# ---------------------------------------------------------------------- Newton–Schulz, Kaon


def _compose(x: torch.Tensor, rows) -> torch.Tensor:
    for a, b, c in rows:
        x = a * x + b * x**3 + c * x**5
    return x


@pytest.mark.parametrize("schedule", ["keller", "polar_express", "cans", "classical"])
def test_newton_schulz_is_the_scalar_polynomial_on_sigma(schedule: str) -> None:
    t = controlled_matrix(16, 28, 1e-2, seed=10)
    sched = get_schedule(schedule)
    steps = int(sched.params.get("steps", len(sched.rows)))
    x0 = t.s / (t.G.norm() * sched.norm_safety)
    ref = t.apply(_compose(x0, sched.coefficients(steps)))
    Y = apply_map("newton_schulz", t.G, schedule=schedule, dtype=torch.float64)
    assert rel_err(Y, ref) < 1e-10


def test_polar_express_converges_to_polar_in_fp64() -> None:
    # ℓ_eff = σ_min/(‖G‖_F·1.01) ≥ 1e-3 here, inside the table's design interval.
    t = controlled_matrix(16, 28, 1e-2, seed=11)
    assert (t.s[-1] / (t.G.norm() * 1.01)) >= 1e-3
    Y = apply_map("newton_schulz", t.G, schedule="polar_express", dtype=torch.float64)
    assert rel_err(Y, t.apply(torch.ones_like(t.s))) < 1e-5


def test_newton_schulz_bf16_runs_and_is_bf16() -> None:
    G = torch.randn(16, 24, generator=torch.Generator().manual_seed(12))
    Y = apply_map("newton_schulz", G, dtype=torch.bfloat16)
    assert Y.dtype == torch.bfloat16
    assert torch.isfinite(Y.float()).all()


def test_newton_schulz_rejects_bad_options() -> None:
    with pytest.raises(ValueError, match="schedule"):
        apply_map("newton_schulz", torch.randn(3, 4), schedule="nope")
    with pytest.raises(ValueError, match="steps"):
        apply_map("newton_schulz", torch.randn(3, 4), steps=0)


def test_kaon_chaos_outputs_in_unit_interval_and_match_scalar_map() -> None:
    t = controlled_matrix(24, 40, 1e-1, seed=13)
    Y = apply_map("kaon_chaos", t.G, dtype=torch.float64)
    s = torch.linalg.svdvals(Y)
    assert s.min() >= 0 and s.max() < 1
    x = t.s / t.G.norm()
    for _ in range(5):
        x = 4.1 * x * (1 - x**2) ** 2
    assert rel_err(Y, t.apply(x / 1.175)) < 1e-9
    # fp32 on random matrices: still inside [0, 1).
    for seed in range(3):
        G = torch.randn(64, 96, generator=torch.Generator().manual_seed(seed))
        s32 = torch.linalg.svdvals(apply_map("kaon_chaos", G).double())
        assert s32.max() < 1


def test_kaon_iid_reproducible_spectrum_and_vectors() -> None:
    t = controlled_matrix(12, 20, 1e-2, seed=14)

    def run(seed: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return apply_map("kaon_iid", t.G, low=0.2, high=0.9, generator=gen)

    Y1, Y2, Y3 = run(0), run(0), run(1)
    assert torch.equal(Y1, Y2)
    assert not torch.allclose(Y1, Y3)
    # Same singular vectors as G, singular values drawn on [low, high].
    S = t.U.mT @ Y1 @ t.V
    assert torch.allclose(S, torch.diag(torch.diagonal(S)), atol=1e-12)
    d = torch.diagonal(S)
    assert d.min() >= 0.2 and d.max() <= 0.9
    gen = torch.Generator().manual_seed(0)
    a = apply_map("kaon_iid", t.G, low=0.2, high=0.9, generator=gen)
    b = apply_map("kaon_iid", t.G, low=0.2, high=0.9, generator=gen)
    assert not torch.allclose(a, b)  # fresh draws at every call
    with pytest.raises(ValueError, match="low"):
        apply_map("kaon_iid", t.G, low=0.0, high=1.0)
    with pytest.raises(ValueError, match="distribution"):
        apply_map("kaon_iid", t.G, distribution="normal")


def test_truncated_sgd_zeroes_top_fraction() -> None:
    t = controlled_matrix(16, 24, 1e-3, seed=15)
    Y = apply_map("truncated_sgd", t.G, fraction=0.25)
    f = t.s.clone()
    f[:4] = 0
    assert rel_err(Y, t.apply(f)) < 1e-12
    assert torch.allclose(apply_map("truncated_sgd", t.G, fraction=0.0), t.G, atol=1e-14)
    with pytest.raises(ValueError, match="fraction"):
        apply_map("truncated_sgd", t.G, fraction=1.0)


def test_half_precision_refused_by_factorisation_maps() -> None:
    G = torch.randn(4, 6)
    with pytest.raises(ValueError, match="dtype"):
        apply_map("qdwh", G, dtype=torch.bfloat16)
    Y = apply_map("qdwh", G.bfloat16())  # half *input* computes in fp32
    assert Y.dtype == torch.float32
