"""Issue #13, point by point: the edges of the spectral maps and of the optimizers over them.

Each test names the failure it pins (figures from the issue, measured before the fix), so a
regression reads as the bug it reintroduces. The general property test over every map is
tests/engine/test_spectral_properties.py.
"""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from approximant.engine.errors import MapError, SpecError
from approximant.engine.optimizers import FreonParams, build_optimizer
from approximant.engine.spectral import SPECTRAL_MAPS, apply_map
from approximant.engine.spectral.common import pow2_exponent
from approximant.engine.spectral.exact import truncation_count
from approximant.engine.spectral.newton_schulz import KAON_OUT_SCALE, KAON_S4_GUARD
from approximant.engine.spectral.optimizer import SpectralOptimizer, configure_map
from approximant.engine.spectral.schedules import SCHEDULES, STEP_ROUNDING
from approximant.engine.spectral.testing import controlled_matrix
from approximant.engine.spectral.testing import relative_spectral_error as rel_err


def _rank_one(m: int, n: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(m, 1, generator=g, dtype=torch.float64)
    return (u @ torch.randn(1, n, generator=g, dtype=torch.float64)).to(dtype)


def _one_step(cmap, grad: torch.Tensor, **kw) -> torch.Tensor:
    """−Δθ/lr after one step from zero momentum (the map's direction for ``grad``)."""
    p = torch.nn.Parameter(torch.zeros_like(grad))
    p.grad = grad.clone()
    SpectralOptimizer([p], cmap, lr=1.0, momentum=0.0, nesterov=False, shape_scale="none",
                      **kw).step()
    return -p.detach()


# --------------------------------------------------------------------------------- scale

# Scale-invariant maps and the options that make them so; fp32 at 1e±30 (zeros, inf/NaN or a
# raw Cholesky error before), fp64 at 1e±160.
INVARIANT = [("svd_polar", {}), ("spectral_power", {"c": 0.5}), ("qdwh", {}),
             ("freon", {"c": 0.5}), ("newton_schulz", {}), ("kaon_chaos", {}),
             ("gram_eigh", {"c": 0.5}), ("kaon_iid", {"generator": None})]


@pytest.mark.parametrize(("name", "opts"), INVARIANT, ids=[n for n, _ in INVARIANT])
@pytest.mark.parametrize(("dtype", "scale"), [(torch.float32, 1e30), (torch.float32, 1e-30),
                                              (torch.float32, 1e10), (torch.float64, 1e160),
                                              (torch.float64, 1e-160)])
def test_scale_invariant_maps_at_the_ends_of_the_range(name, opts, dtype, scale) -> None:
    t = controlled_matrix(12, 20, 1e-2, seed=1)
    G = t.G.to(dtype)

    def run(M: torch.Tensor) -> torch.Tensor:
        o = dict(opts)
        if "generator" in o:
            o["generator"] = torch.Generator().manual_seed(0)
        return apply_map(name, M, **o)

    base = run(G)
    Y = run((t.G * scale).to(dtype))
    assert torch.isfinite(Y).all()
    # The scaled input rounds differently; the output may differ by that rounding only, as
    # magnified by the map's conditioning (the Gram's κ² = 1e4 here).
    tol = 1e-4 if dtype == torch.float32 else 1e-12
    if name == "gram_eigh":
        tol *= 10
    assert rel_err(Y, base) < tol, name


@pytest.mark.parametrize("name", ["newton_schulz", "kaon_chaos", "svd_polar", "qdwh"])
def test_power_of_two_scaling_is_bit_exact(name: str) -> None:
    """The prescaling divides by a power of two, so a G scaled by one gives the same bits:
    including a gradient with ‖G‖_F = 2^-40 < eps, which torch.optim.Muon leaves
    un-normalised (≈ 0 out) and which the iteration now treats like any other."""
    G = torch.randn(16, 24, generator=torch.Generator().manual_seed(2))
    base = apply_map(name, G)
    for e in (-40, -100, 40, 100):
        assert torch.equal(apply_map(name, G * 2.0**e), base), e


def test_pow2_exponent_passes_zero_and_nonfinite_through() -> None:
    X = torch.ones(4, 3, 3)
    X[1] = 0
    X[2, 0, 0] = float("inf")
    X[3, 1, 1] = float("nan")
    X[0] *= 2.0**70
    assert pow2_exponent(X).flatten().tolist() == [71, 0, 0, 0]
    Y = apply_map("newton_schulz", X)
    assert torch.equal(Y[1], torch.zeros(3, 3)) and torch.isnan(Y[2:]).all()


@pytest.mark.parametrize(("c", "degree"), [(0.25, 0.5), (2 / 3, -1 / 3), (1.0, -1.0)])
def test_power_maps_scale_without_overflow(c: float, degree: float) -> None:
    """Outputs that scale with G come back wherever they are representable: σ^(1−2c) of a
    1e30 fp32 matrix is 1e-30 for c = 1, never an overflowed intermediate."""
    t = controlled_matrix(10, 16, 1e-2, seed=3)
    ref = t.apply(t.s ** (1 - 2 * c))
    for scale in (1e30, 1e-30):
        for name in ("spectral_power", "freon", "gram_eigh"):
            Y = apply_map(name, (t.G * scale).float(), c=c)
            assert rel_err(Y.double() / scale**degree, ref) < 2e-3, (name, scale)


@pytest.mark.parametrize("scale", [1e30, 1e-30])
def test_freon_optimizer_update_is_scale_free(scale: float) -> None:
    """Before: an fp32 gradient of 1e30·G gave an update of exactly 0 (‖M‖_F overflowed), and
    at 1e-30 the "unit" momentum had norm 1e8, so the relative floor vanished."""
    t = controlled_matrix(12, 20, 1e-4, seed=4)
    cmap = configure_map("freon", prescale=True, c=2 / 3, delta=1e-3, dtype=torch.float32,
                         norm_bound=1.0, probe=False)
    base = _one_step(cmap, t.G.float(), schatten_c=2 / 3, schatten_floor=1e-3)
    D = _one_step(cmap, (t.G * scale).float(), schatten_c=2 / 3, schatten_floor=1e-3)
    assert D.abs().max() > 0.1
    assert rel_err(D, base) < 1e-4


# ---------------------------------------------------------------------- dtype and schedule


def _perturbed_top(rows, norm_safety: float, delta: float) -> float:
    """Worst σ after the composed schedule when every step (the normalised input included)
    rounds up by ``delta``, over σ ∈ [1e-3, 1]: the scalar model of a low-precision run."""
    worst = 0.0
    for x in torch.logspace(-3, 0, 301, dtype=torch.float64).tolist():
        x = x / norm_safety * (1 + delta)
        for a, b, c in rows:
            x = (a * x + b * x**3 + c * x**5) * (1 + delta)
            if abs(x) > 1e6:
                return math.inf
        worst = max(worst, abs(x))
    return worst


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_schedule_margin_is_what_the_table_tolerates(name: str) -> None:
    """Each table's declared margin is re-measured: the per-step rounding under which its
    composed map stays within 0.05 of its exact band, and no more than 1.5× that."""
    sched = SCHEDULES[name]
    rows = sched.coefficients(int(sched.params.get("steps", len(sched.rows))))
    band = _perturbed_top(rows, sched.norm_safety, 0.0)
    assert _perturbed_top(rows, sched.norm_safety, sched.margin) <= band + 0.05
    assert _perturbed_top(rows, sched.norm_safety, 1.5 * sched.margin) > band + 0.05


@pytest.mark.parametrize("name", sorted(SCHEDULES))
@pytest.mark.parametrize("dtype", sorted(STEP_ROUNDING, key=str))
def test_every_schedule_is_safe_in_every_dtype(name: str, dtype: torch.dtype) -> None:
    """What a dtype's plan runs survives that dtype's per-step rounding (CANS in bf16: σ
    2, 2.08, 3.5, 183, 8.5e10 before; with the margin it stays in its band)."""
    sched = SCHEDULES[name]
    steps = int(sched.params.get("steps", len(sched.rows)))
    rows, safety = sched.plan(steps, dtype)
    band = _perturbed_top(sched.coefficients(steps), sched.norm_safety, 0.0)
    assert _perturbed_top(rows, safety, STEP_ROUNDING[dtype]) <= band + 0.05
    if sched.margin >= STEP_ROUNDING[dtype]:
        assert (rows, safety) == (sched.coefficients(steps), sched.norm_safety)  # untouched


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", [(1, 64), (64, 64), (256, 512)])
def test_newton_schulz_bounded_on_rank_one(schedule: str, dtype, shape) -> None:
    """A rank-one input puts σ/‖G‖_F exactly at the top of the design interval, where
    rounding pushes a margin-free table out (CANS fp32 at 512×1024: 3.5; bf16: 1e23)."""
    Y = apply_map("newton_schulz", _rank_one(*shape), schedule=schedule, dtype=dtype)
    s = torch.linalg.svdvals(Y.double())
    assert torch.isfinite(s).all() and s.max() < 1.25


def test_muon_with_cans_in_bf16_on_a_rank_one_gradient() -> None:
    """Before: an update of 1.3e23·lr on a rank-one gradient, NaN on a 1×64 parameter."""
    for shape in ((1, 64), (48, 32)):
        layer = torch.nn.Linear(shape[1], shape[0], bias=False)
        before = layer.weight.detach().clone()
        opt = build_optimizer("muon", {"schedule": "cans", "lr": 0.02}, layer.parameters(),
                              [layer.weight])
        layer.weight.grad = _rank_one(*shape, seed=5)
        opt.step()
        step = torch.linalg.matrix_norm(layer.weight.detach() - before, 2)
        assert torch.isfinite(step) and 0.01 < step / 0.02 < 1.25 * math.sqrt(
            max(1, shape[0] / shape[1])), shape


# ---------------------------------------------------------------------------------- Kaon


def test_kaon_rank_one_gets_a_fixed_nonzero_value() -> None:
    """σ/‖G‖_F = 1 is a root of 4.1 s(1 − s²)²: a rank-one G gave ≈ 0 (a batch-1 layer moved
    by 2.4e-6 at lr 0.02). It is now normalised by 1.1·‖G‖_S4 and gets p⁵(1/1.1)/1.175."""
    x = 1 / KAON_S4_GUARD
    for _ in range(5):
        x = 4.1 * x * (1 - x * x) ** 2
    expected = x / KAON_OUT_SCALE
    assert expected == pytest.approx(0.676, abs=1e-3)
    for shape in ((1, 64), (64, 1), (32, 48)):
        s = torch.linalg.svdvals(apply_map("kaon_chaos", _rank_one(*shape, dtype=torch.float64)))
        assert s[0] == pytest.approx(expected, rel=1e-9)
        assert float(s[1:].abs().sum()) < 1e-9
    s16 = torch.linalg.svdvals(apply_map("kaon_chaos", _rank_one(32, 48),
                                         dtype=torch.bfloat16).double())
    # bf16 rounds every step (chaos compounds it): still a clear step, not a vanishing one.
    assert 0.3 < s16[0] < 1


def test_kaon_guard_leaves_ordinary_matrices_alone() -> None:
    """The published map (X₀ = G/‖G‖_F) whenever ‖G‖_F ≥ 1.1·‖G‖_S4: two equal top singular
    values already qualify (ratio 2^¼ = 1.19)."""
    s = torch.tensor([1.0, 1.0] + [0.0] * 8, dtype=torch.float64)
    t = controlled_matrix(10, 14, 1.0, seed=6)
    G = (t.U * s) @ t.V.mT
    x = s / s.norm()
    for _ in range(5):
        x = 4.1 * x * (1 - x * x) ** 2
    assert rel_err(apply_map("kaon_chaos", G), t.apply(x / KAON_OUT_SCALE)) < 1e-9


def test_kaon_batch_one_layer_moves() -> None:
    layer = torch.nn.Linear(20, 8, bias=False)
    before = layer.weight.detach().clone()
    opt = build_optimizer("kaon", {"lr": 0.02}, layer.parameters(), [layer.weight])
    x = torch.randn(1, 20, generator=torch.Generator().manual_seed(7))
    layer(x).square().sum().backward()
    opt.step()
    step = torch.linalg.matrix_norm(layer.weight.detach() - before, 2)
    assert step > 0.01 * 0.02  # 2.4e-6 before


# ----------------------------------------------------------------------- zero gradients


@pytest.mark.parametrize("c", [0.0, 0.25, 0.5, 2 / 3, 1.0])
@pytest.mark.parametrize("delta", [0.0, 1e-3])
def test_freon_zero_matrix_is_zero(c: float, delta: float) -> None:
    """Before: c = 1 with no floor gave NaN in 199 of 200 entries."""
    Y = apply_map("freon", torch.zeros(10, 20), c=c, delta=delta)
    assert torch.equal(Y, torch.zeros(10, 20))


@pytest.mark.parametrize(("name", "hp"), [
    ("muon", {}), ("muon", {"schedule": "cans"}), ("freon", {"c": 1.0}),
    ("freon", {"c": 0.5, "floor": 0.0}), ("freon", {}), ("freon", {"c": 0.25, "floor": 0.0}),
    ("freon", {"method": "svd", "c": 1.0, "floor": 0.0}),
    ("freon", {"method": "gram_eigh", "c": 1.0, "floor": 0.0}), ("kaon", {}),
    ("kaon", {"form": "iid"}), ("truncated_sgd", {}),
])
def test_zero_gradient_leaves_parameters_unchanged(name: str, hp: dict) -> None:
    layer = torch.nn.Linear(16, 8, bias=False)
    before = layer.weight.detach().clone()
    opt = build_optimizer(name, hp, layer.parameters(), [layer.weight])
    layer.weight.grad = torch.zeros_like(layer.weight)
    opt.step()
    assert torch.equal(layer.weight.detach(), before)


# ---------------------------------------------------------------------- null directions


def test_polar_maps_agree_on_the_null_space_when_asked() -> None:
    """QDWH left numerically-null directions at arbitrary values (0.53 in fp64 on a rank-half
    matrix); ``null="zero"`` maps them to 0 as svd_polar does, in fp64 and fp32."""
    t = controlled_matrix(20, 30, 1e-3, rank=10, seed=8)
    polar = t.apply((t.s > 0).double())
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-4)):
        G = t.G.to(dtype)
        assert rel_err(apply_map("svd_polar", G), polar) < tol
        assert rel_err(apply_map("qdwh", G, null="zero"), polar) < tol
        assert rel_err(apply_map("freon", G, c=0.5, null="zero"), polar) < tol
        assert rel_err(apply_map("qdwh", G.T, null="zero"), polar.T) < tol
    # The default keeps what the iteration made of them: somewhere in [0, 1].
    Y = apply_map("qdwh", t.G)
    phi = torch.linalg.svdvals(Y)
    assert phi.max() < 1 + 1e-12 and rel_err(Y, polar) > 0.1


def test_null_option_refused_where_it_cannot_hold() -> None:
    G = torch.randn(4, 6)
    with pytest.raises(ValueError, match="null: 'zero' is for c <= 1/2"):
        apply_map("freon", G, c=0.75, null="zero")
    with pytest.raises(ValueError, match="null: must be one of keep, zero"):
        apply_map("qdwh", G, null="drop")


# ---------------------------------------------------------------------------- truncation


@pytest.mark.parametrize(("r", "fraction", "k"), [
    (1, 0.1, 0), (2, 0.1, 1), (9, 0.1, 1), (10, 0.1, 1), (19, 0.1, 1), (20, 0.1, 2),
    (768, 0.1, 76), (100, 0.29, 29), (10, 0.95, 9), (2, 0.9, 1), (50, 0.0, 0),
])
def test_truncation_count_rule(r: int, fraction: float, k: int) -> None:
    """⌊fraction·r⌋ (0.29·100 is 29, not 28), at least one where fraction > 0 and r > 1,
    never all: before, min(m, n) < 10 removed nothing at the default 0.1."""
    assert truncation_count(r, fraction) == k


def test_truncated_sgd_small_matrix_removes_the_top_direction() -> None:
    t = controlled_matrix(4, 6, 1e-1, seed=9)
    f = t.s.clone()
    f[0] = 0
    assert rel_err(apply_map("truncated_sgd", t.G, fraction=0.1), t.apply(f)) < 1e-12


# -------------------------------------------------------------------------------- errors


def test_freon_optimizer_refuses_no_floor_above_half() -> None:
    with pytest.raises(ValidationError, match="floor: must be > 0 for c > 1/2"):
        FreonParams(c=2 / 3, floor=0.0)
    assert FreonParams(c=2 / 3, floor=0.0, method="svd").floor == 0.0
    assert FreonParams(c=0.5, floor=0.0).floor == 0.0


def test_rank_deficient_freon_c1_without_floor_is_a_clear_error() -> None:
    G = controlled_matrix(6, 10, 1e-2, rank=3, seed=10).G
    with pytest.raises(MapError) as err:
        apply_map("freon", G, c=1.0)
    msg = str(err.value)
    assert msg.startswith("freon: no answer for a matrix of shape (6, 10): ")
    assert "rank-deficient" in msg and "delta > 0" in msg
    assert isinstance(err.value, SpecError) and not err.value.nonfinite
    # With a floor the answer exists and is returned.
    assert torch.isfinite(apply_map("freon", G, c=1.0, delta=1e-3)).all()


@pytest.mark.parametrize("name", [n for n, m in sorted(SPECTRAL_MAPS.items())
                                  if not m.half and n != "svd"])
def test_factorisation_failure_names_map_shape_and_reason(name: str) -> None:
    """Before: a raw LinAlgError. NaN input is the reliable way to make LAPACK refuse."""
    G = torch.randn(5, 7, dtype=torch.float64)
    G[1, 2] = float("nan")
    opts = dict(SPECTRAL_MAPS[name].cases[0].options)
    if SPECTRAL_MAPS[name].random:
        opts["generator"] = torch.Generator().manual_seed(0)
    try:
        Y = apply_map(name, G, **opts)
    except MapError as err:
        assert str(err).startswith(f"{name}: no answer for a matrix of shape (5, 7): ")
        assert "NaN or inf" in str(err) and err.nonfinite
    else:  # a map whose kernels pass NaN on must not hide it
        assert torch.isnan(Y).any()
