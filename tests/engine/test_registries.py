"""Contracts every registry entry keeps, parametrised over the registries themselves: a new
optimizer or workload is tested by adding it, without editing a test. Also the public optimizer
classes (``from approximant import Freon``) against the registry they are built from."""

from __future__ import annotations

import copy
import inspect
import subprocess
import sys

import pytest
import torch

import approximant
from approximant.engine import optim
from approximant.engine.optimizers import OPTIMIZERS, SpectralParams, build_optimizer
from approximant.engine.workloads import WORKLOADS


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))


def _matrices(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.ndim == 2]


def _steps(model: torch.nn.Module, opt: torch.optim.Optimizer | list[torch.optim.Optimizer],
           n: int, seed: int = 1) -> None:
    opts = opt if isinstance(opt, list) else [opt]
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        x = torch.randn(32, 12, generator=g)
        y = torch.randint(0, 3, (32,), generator=g)
        for o in opts:
            o.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        for o in opts:
            o.step()


# -- the optimizer registry -------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_registered_optimizer_trains_and_resumes_from_its_state_dict(name: str) -> None:
    """Defaults are valid; a step changes the weights and keeps them finite; an optimizer
    rebuilt from ``state_dict`` continues exactly as the original."""
    d = OPTIMIZERS[name]
    assert d.title and d.description
    a = _model()
    opt_a = build_optimizer(name, {}, a.parameters(), _matrices(a))
    before = [p.detach().clone() for p in a.parameters()]
    _steps(a, opt_a, 3)
    assert all(torch.isfinite(p).all() for p in a.parameters())
    assert any(not torch.equal(p, q) for p, q in zip(a.parameters(), before, strict=True))

    b = copy.deepcopy(a)
    opt_b = build_optimizer(name, {}, b.parameters(), _matrices(b))
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))
    _steps(a, opt_a, 2, seed=7)
    _steps(b, opt_b, 2, seed=7)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_hyper_parameter_has_a_default_inside_its_own_range(name: str) -> None:
    model = OPTIMIZERS[name].params
    defaults = model()  # constructing validates each default against its field's bounds
    assert set(defaults.model_dump()) == set(model.model_fields)


# -- the public optimizer classes -------------------------------------------------------------

def test_the_public_classes_are_the_spectral_registry_entries() -> None:
    spectral = {n for n, d in OPTIMIZERS.items() if issubclass(d.params, SpectralParams)}
    assert set(optim.PUBLIC) == spectral
    for cls in optim.PUBLIC.values():
        assert getattr(approximant, cls.__name__) is cls
        assert cls.__doc__ and "Args:" in cls.__doc__


@pytest.mark.parametrize("name", sorted(optim.PUBLIC))
def test_a_public_class_shows_the_registry_defaults_in_its_signature(name: str) -> None:
    """The signature a user reads (help(Freon)) has every field of the form's model except the
    AdamW ones (a public class takes matrices only), with the same defaults."""
    cls, model = optim.PUBLIC[name], OPTIMIZERS[name].params
    sig = {k: v.default for k, v in inspect.signature(cls).parameters.items()
           if k not in ("params", "nonfinite")}
    fields = {k: f.default for k, f in model.model_fields.items() if not k.startswith("adamw_")}
    assert sig == fields
    for k in sig:
        assert k in cls.__doc__, f"{cls.__name__}'s docstring does not explain {k}"


@pytest.mark.parametrize("name", sorted(optim.PUBLIC))
def test_a_public_class_steps_exactly_as_the_registry_entry(name: str) -> None:
    """A script's two optimizers (ours on the matrices, AdamW on the rest) step as the
    registry's routed one."""
    a, b = _model(), _model()
    ours = optim.PUBLIC[name](_matrices(a))
    rest = torch.optim.AdamW([p for p in a.parameters() if p.ndim < 2], lr=1e-3, weight_decay=0)
    registry = build_optimizer(name, {}, b.parameters(), _matrices(b))
    _steps(a, [ours, rest], 3)
    _steps(b, registry, 3)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_public_muon_with_defaults_is_torch_muon_bit_for_bit() -> None:
    """torch.optim.Muon's own defaults differ in lr and weight decay only; with those two
    given, the same bits."""
    a = _model()
    b = copy.deepcopy(a)
    ours = approximant.Muon(_matrices(a), weight_decay=0.1)
    peer = torch.optim.Muon(_matrices(b), lr=0.02, weight_decay=0.1)
    for m in (a, b):
        for p in m.parameters():
            p.requires_grad_(p.ndim == 2)
    _steps(a, ours, 4)
    _steps(b, peer, 4)
    for p, q in zip(_matrices(a), _matrices(b), strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize(("cls", "options", "field"), [
    (approximant.Freon, {"c": 0.4}, "c"),
    (approximant.Freon, {"c": 1.0, "floor": 0.0}, "floor"),
    (approximant.Muon, {"lr": -1.0}, "lr"),
    (approximant.Muon, {"schedule": "fast"}, "schedule"),
    (approximant.Kaon, {"low": 2.0, "high": 1.0}, "low"),
    (approximant.TruncatedSGD, {"fraction": 1.0}, "fraction"),
])
def test_a_bad_option_raises_value_error_naming_it(cls, options, field) -> None:
    with pytest.raises(ValueError) as err:
        cls(_matrices(_model()), **options)
    assert any(line.startswith(f"{field}: ") for line in str(err.value).splitlines()), err.value


def test_a_vector_is_refused_with_the_convention_named() -> None:
    with pytest.raises(ValueError, match="route biases and gains to AdamW"):
        approximant.Freon(list(_model().parameters()))


def test_importing_approximant_is_cheap() -> None:
    """The CLI and every worker import the package first: torch only on first use."""
    code = ("import sys, approximant; assert 'torch' not in sys.modules; "
            "approximant.Freon; assert 'torch' in sys.modules; print(approximant.__all__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert "Freon" in out


# -- the workload registry --------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_every_registered_workload_builds_trains_and_evaluates(name: str) -> None:
    wl = WORKLOADS[name]
    assert wl.title and wl.description and wl.default_steps > 0
    settings = wl.settings()
    task = wl.build(settings, seed=0, device=torch.device("cpu"))
    assert task.examples_per_step > 0 and task.matrix_params
    own = {id(p) for p in task.model.parameters()}
    assert all(id(p) in own and p.ndim >= 2 for p in task.matrix_params)
    loss = task.train_loss(0)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    metrics = task.evaluate()
    assert wl.target_metric in metrics or wl.target_metric == "val_loss"
    assert metrics and all(isinstance(v, float) for v in metrics.values())


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_every_workload_is_a_function_of_its_seed(name: str) -> None:
    wl = WORKLOADS[name]
    one, two = (wl.build(wl.settings(), seed=3, device=torch.device("cpu")) for _ in range(2))
    for p, q in zip(one.model.parameters(), two.model.parameters(), strict=True):
        assert torch.equal(p, q)
    assert torch.equal(one.train_loss(0), two.train_loss(0))
