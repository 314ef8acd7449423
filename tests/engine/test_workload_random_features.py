"""Random-feature teacher–student least squares: data, exact gradient, training."""

from __future__ import annotations

import pytest
import torch

from approximant.engine.errors import SpecError
from approximant.engine.specs import expand, parse_study
from approximant.engine.training import train
from approximant.engine.workloads import WORKLOADS
from approximant.engine.workloads.random_features import RandomFeatureSettings, make_data

SMALL = {"input_dim": 16, "features": 32, "outputs": 4, "n_train": 256, "n_val": 64,
         "batch_size": 32}
CPU = torch.device("cpu")


def build(seed: int = 0, **settings):
    wl = WORKLOADS["random_features"]
    return wl.build(wl.settings(**{**SMALL, **settings}), seed, CPU)


def test_loss_goes_down_with_adamw():
    spec = parse_study({
        "name": "rf", "workload": {"name": "random_features", "settings": SMALL},
        "optimizers": [{"name": "adamw", "grid": {"lr": [0.02]}}], "steps": 40, "eval_every": 40,
    })
    rows: list[dict] = []
    assert train(expand(spec)[0], rows.extend).status == "finished"
    val = [r["value"] for r in rows if r["name"] == "val_loss"]
    assert val[-1] < 0.6 * val[0]


def test_the_data_depend_on_data_seed_only_and_the_seed_moves_the_init():
    a, b = build(seed=0), build(seed=1)
    assert torch.equal(a.data.phi_train, b.data.phi_train)
    assert torch.equal(a.data.y_val, b.data.y_val)
    assert not torch.equal(a.model.weight, b.model.weight)
    c = build(seed=0, data_seed=5)
    assert not torch.equal(a.data.phi_train, c.data.phi_train)


def top_variance_fraction(alpha: float) -> float:
    s = RandomFeatureSettings(**{**SMALL, "n_train": 4000, "alpha": alpha})
    evals = torch.linalg.eigvalsh(make_data(s).phi_train.double().T.cov())
    return float(evals[-1] / evals.sum())


def test_alpha_concentrates_the_feature_spectrum():
    # λ_j = j^(−alpha): alpha = 0 is isotropic, alpha = 4 puts ~93 % of the input variance in
    # the first direction, and the linear features inherit that concentration.
    assert top_variance_fraction(0.0) < 0.25
    assert top_variance_fraction(4.0) > 0.9


def test_full_loss_gradient_is_the_closed_form():
    task = build()
    phi, y = task.data.phi_train.double(), task.data.y_train.double()
    w = task.model.weight.detach().double()
    (g,) = torch.autograd.grad(task.full_loss(), [task.model.weight])
    n, k = y.shape
    want = (w @ phi.T - y.T) @ phi / (n * k)
    assert torch.allclose(g.double(), want, rtol=1e-4, atol=1e-7)


def test_the_weight_is_the_only_matrix_parameter():
    task = build()
    assert [p.shape for p in task.matrix_params] == [torch.Size([4, 32])]


def test_a_batch_larger_than_the_data_is_refused_naming_the_field():
    want = r"workload\.settings\.batch_size: must be at most n_train \(256\)"
    with pytest.raises(SpecError, match=want):
        parse_study({
            "name": "rf",
            "workload": {"name": "random_features", "settings": {**SMALL, "batch_size": 257}},
            "optimizers": [{"name": "sgd"}],
        })
