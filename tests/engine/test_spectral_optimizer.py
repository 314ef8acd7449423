"""The spectral optimizer shell and the registry entries built on it."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from pydantic import ValidationError

from approximant.engine.optimizers import (
    FreonParams,
    KaonParams,
    MuonParams,
    RoutedOptimizer,
    build_optimizer,
    get_optimizer,
)
from approximant.engine.spectral.exact import spectral_power
from approximant.engine.spectral.optimizer import (
    SpectralOptimizer,
    configure_map,
    schatten_normalise,
    shape_scale,
)
from approximant.engine.spectral.testing import controlled_matrix


def _mlp(seed: int = 0) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    # Wide, tall and square hidden matrices, so every orientation and shape scale is used.
    return torch.nn.Sequential(
        torch.nn.Linear(20, 48), torch.nn.ReLU(), torch.nn.Linear(48, 32), torch.nn.ReLU(),
        torch.nn.Linear(32, 32), torch.nn.ReLU(), torch.nn.Linear(32, 5),
    )


def _matrices(model: torch.nn.Sequential) -> list[torch.nn.Parameter]:
    return [model[0].weight, model[2].weight, model[4].weight]


def _data(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(64, 20, generator=g), torch.randint(0, 5, (64,), generator=g)


def _train(model, opt, steps: int, seed: int = 1) -> list[float]:
    x, y = _data(seed)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


# ------------------------------------------------------------- torch.optim.Muon, bit for bit


@pytest.mark.parametrize(
    ("nesterov", "weight_decay", "adjust"),
    [(True, 0.1, "original"), (False, 0.0, "match_rms_adamw")],
)
def test_muon_matches_torch_muon_over_20_steps(nesterov, weight_decay, adjust) -> None:
    """Same casts, same addmm chain, same momentum and decay arithmetic: identical bits."""
    ours, peer = _mlp(), _mlp()
    opt_ours = SpectralOptimizer(
        _matrices(ours), configure_map("newton_schulz", schedule="keller", steps=5,
                                       dtype=torch.bfloat16, eps=1e-7),
        lr=0.02, momentum=0.95, nesterov=nesterov, weight_decay=weight_decay,
        shape_scale=adjust,
    )
    opt_peer = torch.optim.Muon(
        _matrices(peer), lr=0.02, momentum=0.95, nesterov=nesterov,
        weight_decay=weight_decay, adjust_lr_fn=adjust,
    )
    x, y = _data()
    for _ in range(20):
        for model, opt in ((ours, opt_ours), (peer, opt_peer)):
            model.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    for a, b, init in zip(_matrices(ours), _matrices(peer), _matrices(_mlp()), strict=True):
        assert torch.equal(a, b)
        assert not torch.equal(a, init)  # it did train


def test_registry_muon_matches_torch_muon_adapter() -> None:
    hp = dict(lr=0.02, momentum=0.95, nesterov=True, weight_decay=0.05, ns_steps=5,
              adamw_lr=1e-3, adamw_weight_decay=0.0)
    ours, peer = _mlp(), _mlp()
    o1 = build_optimizer("muon", hp, ours.parameters(), _matrices(ours))
    o2 = build_optimizer("torch_muon", hp, peer.parameters(), _matrices(peer))
    _train(ours, o1, 20)
    _train(peer, o2, 20)
    for a, b in zip(ours.parameters(), peer.parameters(), strict=True):
        assert torch.equal(a, b)
    assert any(isinstance(p, torch.optim.Muon) for p in o2.parts)
    assert any(isinstance(p, SpectralOptimizer) for p in o1.parts)


def _stack_mlp(seed: int = 0) -> torch.nn.Sequential:
    """Three 24×24 hidden matrices and two 24×16 ones: same-shaped groups for batching."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(20, 24), torch.nn.Tanh(), torch.nn.Linear(24, 24), torch.nn.Tanh(),
        torch.nn.Linear(24, 24), torch.nn.Tanh(), torch.nn.Linear(24, 24), torch.nn.Tanh(),
        torch.nn.Linear(24, 16), torch.nn.Tanh(), torch.nn.Linear(16, 24), torch.nn.Tanh(),
        torch.nn.Linear(24, 16), torch.nn.Tanh(), torch.nn.Linear(16, 5),
    )


def _stack_matrices(model: torch.nn.Sequential) -> list[torch.nn.Parameter]:
    return [model[i].weight for i in (2, 4, 6, 8, 10, 12)]


def test_batched_muon_matches_torch_muon_over_20_steps() -> None:
    """With same-shaped matrices stacked into one batched Newton–Schulz call per shape, our
    Muon still equals torch.optim.Muon's per-matrix loop bit for bit."""
    ours, peer = _stack_mlp(), _stack_mlp()
    cmap = configure_map("newton_schulz", schedule="keller", steps=5, dtype=torch.bfloat16,
                         eps=1e-7)
    calls: list[tuple[int, ...]] = []

    def counted(M: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        calls.append(tuple(M.shape))
        return cmap(M, generator)

    opt_ours = SpectralOptimizer(_stack_matrices(ours), counted, lr=0.02, weight_decay=0.1,
                                 batch="always")
    opt_peer = torch.optim.Muon(_stack_matrices(peer), lr=0.02, weight_decay=0.1,
                                adjust_lr_fn="original")
    x = torch.randn(64, 20, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 5, (64,), generator=torch.Generator().manual_seed(2))
    for _ in range(20):
        for model, opt in ((ours, opt_ours), (peer, opt_peer)):
            model.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    # One call per shape per step: (3, 24, 24), (2, 16, 24), (16, 24).
    assert calls[:3] == [(3, 24, 24), (2, 16, 24), (24, 16)]
    assert len(calls) == 60
    for a, b in zip(_stack_matrices(ours), _stack_matrices(peer), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("name", "opts", "schatten_c"),
    [("newton_schulz", {}, None), ("newton_schulz", {"schedule": "polar_express"}, None),
     ("freon", {"c": 2 / 3, "delta": 1e-3, "norm_bound": 1.0, "prescale": True}, 2 / 3),
     ("freon", {"c": 1.0, "delta": 1e-3, "prescale": True}, 1.0),
     ("freon", {"c": 0.25}, 0.25), ("qdwh", {}, None), ("svd_polar", {}, None),
     ("gram_eigh", {"c": 0.5}, None), ("kaon_chaos", {}, None),
     ("truncated_sgd", {"fraction": 0.25}, None)],
)
def test_batched_step_equals_per_matrix(name: str, opts: dict, schatten_c) -> None:
    """Batching changes no result beyond float reassociation: 5 steps in fp64 on fixed
    gradients (so differences cannot feed back through the model) agree to 1e-12. Most maps
    agree bit for bit; batched LAPACK QR (Freon, QDWH) rounds differently in the last bits."""
    shapes = [(24, 24), (16, 24), (24, 24), (24, 16), (24, 24), (16, 24)]
    g = torch.Generator().manual_seed(5)
    init = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
    grads = [[torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
             for _ in range(5)]
    opts = dict(opts)
    prescale = opts.pop("prescale", False)
    cmap = configure_map(name, prescale=prescale, **opts)
    finals = []
    for batch in ("always", "never"):
        params = [torch.nn.Parameter(w.clone()) for w in init]
        opt = SpectralOptimizer(params, cmap, lr=0.01, weight_decay=0.01, schatten_c=schatten_c,
                                schatten_floor=1e-3, batch=batch)
        for step_grads in grads:
            for p, gr in zip(params, step_grads, strict=True):
                p.grad = gr.clone()
            opt.step()
        finals.append(params)
    for a, b, w in zip(*finals, init, strict=True):
        assert torch.allclose(a, b, rtol=0, atol=1e-12), (a - b).abs().max()
        assert not torch.equal(a, w)


def test_auto_batching_only_small_cpu_matrices_and_never_random_maps() -> None:
    small = [torch.nn.Parameter(torch.zeros(8, 8)) for _ in range(2)]
    big = [torch.nn.Parameter(torch.zeros(512, 512)) for _ in range(2)]
    opt = SpectralOptimizer(small + big, configure_map("newton_schulz"))
    assert opt._batches([p.detach() for p in small + big]) == [[0, 1], [2], [3]]
    iid = SpectralOptimizer(small, configure_map("kaon_iid"))
    assert iid._batches([p.detach() for p in small]) == [[0], [1]]
    plain = SpectralOptimizer(small, lambda M: M)  # a callable may not take 3-D input
    assert plain._batches([p.detach() for p in small]) == [[0], [1]]
    with pytest.raises(ValueError, match="batch"):
        SpectralOptimizer(small, configure_map("newton_schulz"), batch="sometimes")


# ------------------------------------------------------------------- Freon identities


def _one_step_update(cmap, M: torch.Tensor, **kw) -> torch.Tensor:
    """−Δθ/lr after one step from zero momentum with gradient M (so the momentum is M)."""
    p = torch.nn.Parameter(torch.zeros_like(M))
    p.grad = M.clone()
    opt = SpectralOptimizer([p], cmap, lr=1.0, momentum=0.0, nesterov=False,
                            shape_scale="none", **kw)
    opt.step()
    return -p.detach()


def test_freon_zero_is_normalised_sgd_momentum() -> None:
    t = controlled_matrix(12, 20, 1e-3, seed=31)
    D = _one_step_update(configure_map("freon", c=0.0), t.G, schatten_c=0.0)
    r = min(t.G.shape)
    assert torch.allclose(D, t.G * math.sqrt(r) / t.G.norm(), rtol=1e-12)
    # And the momentum itself is SGD's up to the (1 − μ) EMA factor, which the scale removes.
    p1 = torch.nn.Parameter(torch.zeros(3, 4, dtype=torch.float64))
    p2 = torch.nn.Parameter(torch.zeros(3, 4, dtype=torch.float64))
    o1 = SpectralOptimizer([p1], configure_map("freon", c=0.0), lr=0.1, momentum=0.9,
                           nesterov=False, shape_scale="none", schatten_c=0.0)
    o2 = torch.optim.SGD([p2], lr=1.0, momentum=0.9)
    grads = torch.randn(5, 3, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for g in grads:
        before1, before2 = p1.detach().clone(), p2.detach().clone()
        p1.grad, p2.grad = g.clone(), g.clone()
        o1.step()
        o2.step()
        d1, d2 = before1 - p1.detach(), before2 - p2.detach()
        assert torch.allclose(d1, 0.1 * d2 * math.sqrt(3) / d2.norm(), rtol=1e-10)


def test_freon_half_is_muon_with_exact_polar() -> None:
    t = controlled_matrix(16, 24, 1e-4, seed=32)
    polar = t.apply(torch.ones_like(t.s))
    for name, opts in (("spectral_power", {"c": 0.5}), ("freon", {"c": 0.5})):
        D = _one_step_update(configure_map(name, **opts), t.G, schatten_c=0.5)
        assert torch.allclose(D, polar, atol=1e-10), name
    D_muon = _one_step_update(configure_map("svd_polar"), t.G)
    assert torch.allclose(D_muon, polar, atol=1e-12)


@pytest.mark.parametrize("c", [0.25, 2 / 3, 0.75, 1.0])
def test_mean_schatten_normalisation(c: float) -> None:
    t = controlled_matrix(12, 20, 1e-2, seed=33)
    q = 2 * (1 - c)
    s = t.s
    Mq = torch.exp(torch.log(s).mean()) if q == 0 else (s**q).mean() ** (1 / q)
    ref = t.apply((s / Mq) ** (q - 1))
    D = schatten_normalise(t.G, spectral_power(t.G, c=c), c)
    assert torch.allclose(D, ref, rtol=1e-9, atol=1e-12)
    # Scale-free: a 1000× larger gradient gives the same direction.
    D2 = schatten_normalise(1000 * t.G, spectral_power(1000 * t.G, c=c), c)
    assert torch.allclose(D2, ref, rtol=1e-9, atol=1e-12)


def test_freon_above_half_reverses_order_in_the_update() -> None:
    t = controlled_matrix(12, 20, 1e-2, seed=34)
    D = _one_step_update(configure_map("freon", c=0.75, prescale=True), t.G, schatten_c=0.75)
    gains = torch.einsum("mi,mn,ni->i", t.U, D, t.V)
    assert bool((gains[1:] > gains[:-1]).all())


def test_kaon_chaos_update_values_in_unit_interval() -> None:
    G = torch.randn(24, 40, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    D = _one_step_update(configure_map("kaon_chaos"), G)
    s = torch.linalg.svdvals(D)
    assert s.min() >= 0 and s.max() < 1


# ------------------------------------------------------------------------- mechanics


def test_shape_scale_values() -> None:
    assert shape_scale(3072, 768, "original") == 2.0
    assert shape_scale(768, 3072, "original") == 1.0
    assert shape_scale(768, 3072, "match_rms_adamw") == pytest.approx(0.2 * math.sqrt(3072))
    assert shape_scale(5, 7, "none") == 1.0
    with pytest.raises(ValueError, match="shape_scale"):
        shape_scale(2, 2, "bad")


def test_conv_filters_are_reshaped() -> None:
    w = torch.nn.Parameter(torch.zeros(8, 3, 3, 3, dtype=torch.float64))
    g = torch.randn(8, 3, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    w.grad = g
    opt = SpectralOptimizer([w], configure_map("svd_polar"), lr=1.0, momentum=0.0,
                            nesterov=False, shape_scale="none")
    opt.step()
    expected = -spectral_power(g.reshape(8, 27), c=0.5).reshape(8, 3, 3, 3)
    assert torch.allclose(w.detach(), expected, atol=1e-12)


@pytest.mark.parametrize("name", ["muon", "freon", "kaon", "truncated_sgd", "torch_muon"])
def test_state_dict_round_trip_resumes_exactly(name: str) -> None:
    hp = {"form": "iid"} if name == "kaon" else {}
    model = _mlp()
    opt = build_optimizer(name, hp, model.parameters(), _matrices(model))
    _train(model, opt, 3)
    saved_model = copy.deepcopy(model.state_dict())
    saved_opt = copy.deepcopy(opt.state_dict())
    _train(model, opt, 3)

    resumed = _mlp(seed=123)  # different init: everything must come from the state dicts
    resumed.load_state_dict(saved_model)
    opt2 = build_optimizer(name, hp, resumed.parameters(), _matrices(resumed))
    opt2.load_state_dict(saved_opt)
    _train(resumed, opt2, 3)
    for a, b in zip(model.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("name", "hp"),
    [("muon", {}), ("muon", {"schedule": "polar_express", "ns_steps": 8, "ns_dtype": "float32"}),
     ("torch_muon", {}), ("freon", {}), ("freon", {"c": 0.25, "floor": 0.0}),
     ("freon", {"c": 1.0}), ("freon", {"c": 0.6, "method": "svd"}),
     ("freon", {"c": 0.75, "method": "gram_eigh"}), ("kaon", {}),
     ("kaon", {"form": "iid", "distribution": "loguniform"}), ("truncated_sgd", {})],
)
def test_every_registered_spectral_optimizer_trains(name: str, hp: dict) -> None:
    model = _mlp()
    opt = build_optimizer(name, {"lr": 0.02, **hp}, model.parameters(), _matrices(model))
    assert isinstance(opt, RoutedOptimizer)
    losses = _train(model, opt, 15)
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]


def test_nonmatrix_parameters_go_to_adamw_with_their_own_hparams() -> None:
    model = _mlp()
    opt = build_optimizer("freon", {"adamw_lr": 0.003, "adamw_weight_decay": 0.01},
                          model.parameters(), _matrices(model))
    spectral, adamw = opt.parts
    assert isinstance(spectral, SpectralOptimizer) and isinstance(adamw, torch.optim.AdamW)
    assert {id(p) for p in spectral.param_groups[0]["params"]} == {
        id(p) for p in _matrices(model)}
    assert adamw.param_groups[0]["lr"] == 0.003
    assert adamw.param_groups[0]["weight_decay"] == 0.01


# ------------------------------------------------------------------------- bad input


def test_bad_constructor_input() -> None:
    cmap = configure_map("svd_polar")
    w = torch.nn.Parameter(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="empty"):
        SpectralOptimizer([], cmap)
    with pytest.raises(ValueError, match="AdamW"):
        SpectralOptimizer([torch.nn.Parameter(torch.zeros(4))], cmap)
    for kwargs, field in [({"lr": -1.0}, "lr"), ({"momentum": 1.0}, "momentum"),
                          ({"weight_decay": -0.1}, "weight_decay"),
                          ({"shape_scale": "x"}, "shape_scale"), ({"schatten_c": 1.5},
                                                                  "schatten_c"),
                          ({"nonfinite": "ignore"}, "nonfinite")]:
        with pytest.raises(ValueError, match=field):
            SpectralOptimizer([w], cmap, **kwargs)
    with pytest.raises(ValueError, match="map: unknown"):
        configure_map("nope")


def test_nonfinite_gradient_raises_or_propagates() -> None:
    w = torch.nn.Parameter(torch.ones(3, 4))
    v = torch.nn.Parameter(torch.ones(5, 2))
    opt = SpectralOptimizer([w, v], configure_map("newton_schulz"))
    w.grad = torch.ones(3, 4)
    v.grad = torch.full((5, 2), float("nan"))
    with pytest.raises(ValueError, match=r"NaN or inf .*\(1, \(5, 2\)\)"):
        opt.step()
    assert torch.equal(w.detach(), torch.ones(3, 4))  # nothing was applied
    opt = SpectralOptimizer([w, v], configure_map("newton_schulz"), nonfinite="propagate")
    opt.step()
    assert torch.isnan(v).all()


@pytest.mark.parametrize("name,opts", [("freon", {"c": 2 / 3, "delta": 1e-3, "norm_bound": 1.0,
                                                  "prescale": True, "probe": False}),
                                       ("freon", {"c": 0.5, "finish": "cholesky"}),
                                       ("qdwh", {}), ("svd_polar", {})])
def test_factorisation_maps_propagate_nonfinite_as_nan(name, opts) -> None:
    # LAPACK refuses NaN input; under "propagate" the update must still be NaN (the loop then
    # records a divergence) rather than an exception that fails the run.
    w = torch.nn.Parameter(torch.ones(6, 8))
    w.grad = torch.randn(6, 8)
    w.grad[2, 3] = float("inf")
    SpectralOptimizer([w], configure_map(name, **opts), nonfinite="propagate").step()
    assert torch.isnan(w).all()
    # A finite input that fails to factorise is a real error, not a divergence.
    def broken(M):
        raise torch.linalg.LinAlgError("linalg.cholesky: not positive-definite")
    w.grad = torch.randn(6, 8)
    with pytest.raises(torch.linalg.LinAlgError):
        SpectralOptimizer([w], broken, nonfinite="propagate").step()


def test_hparams_refuse_bad_grid_values_naming_the_field() -> None:
    cases = [
        (MuonParams, {"ns_steps": 0}, "ns_steps"),
        (MuonParams, {"schedule": "nope"}, "schedule"),
        (FreonParams, {"c": 1.5}, "c"),
        (FreonParams, {"c": 0.6}, "c: method 'rational'"),
        (FreonParams, {"floor": -1.0}, "floor"),
        (KaonParams, {"low": 2.0, "high": 1.0}, "low"),
        (KaonParams, {"seed": -1}, "seed"),
    ]
    for model, values, field in cases:
        with pytest.raises(ValidationError, match=field):
            model(**values)
    assert FreonParams(c=0.667).c == 0.667  # 3-decimal spellings of 2/3 are accepted
    checked = 0
    for name in ("muon", "torch_muon", "freon", "kaon", "truncated_sgd"):
        d = get_optimizer(name)
        for field_name, info in d.params.model_fields.items():
            if info.annotation in (float, int):
                kinds = {type(m).__name__ for m in info.metadata}
                assert kinds & {"Gt", "Ge"} and kinds & {"Lt", "Le"}, (name, field_name)
                checked += 1
    assert checked >= 30
