"""Alignment, descent potential and optimal step: closed forms and the unchanged trajectory."""

from __future__ import annotations

import math

import pytest
import torch

from approximant.engine.diagnostics import alignment_figures, singular_value_summary
from approximant.engine.specs import expand, parse_study
from approximant.engine.training import train
from approximant.engine.workloads import WORKLOADS, Task

RF = {"input_dim": 16, "features": 32, "outputs": 4, "n_train": 256, "n_val": 64,
      "batch_size": 32}
GPT = {"depth": 1, "width": 32, "heads": 2, "context": 16, "batch_size": 4,
       "corpus_bytes": 20_000, "eval_batches": 1, "diagnostics_batch": 4}


def run_rows(workload: str, settings: dict, optimizer: str, grid: dict, **study) -> list[dict]:
    spec = parse_study({
        "name": "diag", "workload": {"name": workload, "settings": settings},
        "optimizers": [{"name": optimizer, "grid": grid}], **{"eval_every": 2, **study},
    })
    rows: list[dict] = []
    assert train(expand(spec)[0], rows.extend).status == "finished"
    return rows


def test_alignment_figures_from_hand_numbers():
    # ⟨G̃,D⟩ = 2, ⟨G,D⟩ = 1, ⟨D,HD⟩ = 4: γ = 1/2, Φ = 4/4 = 1, η* = γΦ/⟨G̃,D⟩ = 1/4 = ⟨G,D⟩/⟨D,HD⟩,
    # best decrease γ²Φ/2 = 1/8 = ⟨G,D⟩²/(2⟨D,HD⟩), change at η = 1: −1 + 4/2 = 1.
    f = alignment_figures(2.0, 1.0, 4.0)
    assert f == {"gamma": 0.5, "phi": 1.0, "eta_opt": 0.25, "best_decrease": 0.125,
                 "pred_change": 1.0}


def test_without_positive_curvature_there_is_no_optimal_step():
    f = alignment_figures(2.0, 1.0, -4.0)
    assert f["phi"] == -1.0 and f["pred_change"] == -3.0
    assert math.isnan(f["eta_opt"]) and math.isnan(f["best_decrease"])


def test_singular_value_summary_of_a_known_matrix_and_of_a_conv_filter():
    d = torch.zeros(3, 5)
    d[0, 0], d[1, 1], d[2, 2] = 3.0, 1.0, 2.0
    s = singular_value_summary(d)
    assert s == pytest.approx({"sv_max": 3.0, "sv_median": 2.0, "sv_min": 1.0,
                               "stable_rank": 14 / 9})
    conv = d.reshape(3, 5, 1, 1)  # (out, in, kh, kw) viewed as out × in·kh·kw
    assert singular_value_summary(conv) == pytest.approx(s)


def test_random_feature_diagnostics_match_the_closed_form():
    lr = 0.3
    rows = run_rows("random_features", RF, "sgd", {"lr": [lr], "momentum": [0.0]},
                    steps=1, diagnostics_every=1)
    got = {r["name"]: r["value"] for r in rows if r["name"].startswith("diag_")}

    # Replay step 1 by hand in fp64: same seed → same initial W and the same first batch.
    task = WORKLOADS["random_features"].build(
        WORKLOADS["random_features"].settings(**RF), 0, torch.device("cpu"))
    idx = task.sample_batch()
    phi, y = task.data.phi_train.double(), task.data.y_train.double()
    w0 = task.model.weight.detach().double()
    n, k = y.shape
    b = len(idx)
    g_batch = (w0 @ phi[idx].T - y[idx].T) @ phi[idx] / (b * k)
    g_full = (w0 @ phi.T - y.T) @ phi / (n * k)
    d = lr * g_batch  # plain SGD: θ_before − θ_after
    hd = d @ (phi.T @ phi) / (n * k)  # the Hessian of ½·mean((WΦᵀ − Yᵀ)²) acting on D

    def loss(w: torch.Tensor) -> float:
        return float(0.5 * (w @ phi.T - y.T).pow(2).mean())

    gtd_b, gtd_f, dhd = float((g_batch * d).sum()), float((g_full * d).sum()), float((d * hd).sum())
    want = {
        "gamma": gtd_f / gtd_b,
        "phi": gtd_b**2 / dhd,
        "eta_opt": gtd_f / dhd,
        "best_decrease": gtd_f**2 / (2 * dhd),
        "pred_change": -gtd_f + dhd / 2,
    }
    # fp32 model against an fp64 replay: a few ulps of float32 on sums of ~10⁴ terms.
    tol = 1e-4
    for key, value in want.items():
        assert got[f"diag_{key}"] == pytest.approx(value, rel=tol), key
        assert got[f"diag_{key}/weight"] == pytest.approx(value, rel=tol), key
    assert got["diag_gtd_batch"] == pytest.approx(gtd_b, rel=tol)
    assert got["diag_dhd"] == pytest.approx(dhd, rel=tol)
    assert got["diag_full_loss"] == pytest.approx(loss(w0), rel=tol)
    # The objective is exactly quadratic, so the realised change is the predicted one.
    realised = loss(w0 - d) - loss(w0)
    assert got["diag_loss_change"] == pytest.approx(realised, rel=1e-3)
    assert realised == pytest.approx(want["pred_change"], rel=1e-9)
    assert 0 < got["diag_gamma"] < 2 and got["diag_eta_opt"] > 1  # a small lr: step too short


@pytest.mark.parametrize(
    ("workload", "settings", "optimizer", "matrix"),
    [
        ("tiny_gpt", GPT, "sgd", "blocks.0.q.weight"),
        ("digits_cnn", {"channels": 2, "hidden": 16}, "adamw", "1.weight"),
        ("random_features", RF, "adamw", "weight"),
    ],
)
def test_diagnostics_do_not_change_the_trajectory(workload, settings, optimizer, matrix):
    plain = run_rows(workload, settings, optimizer, {}, steps=4)
    measured = run_rows(workload, settings, optimizer, {}, steps=4, diagnostics_every=2)

    def losses(rows: list[dict]) -> list[tuple[int, str, float]]:
        return [(r["step"], r["name"], r["value"]) for r in rows
                if r["name"] in ("train_loss", "val_loss")]

    assert losses(measured) == losses(plain)
    names = {r["name"] for r in measured if r["step"] == 2}
    for key in ("gamma", "phi", "pred_change", "loss_change"):
        assert f"diag_{key}" in names
    for key in ("gamma", "sv_max", "stable_rank"):
        assert f"diag_{key}/{matrix}" in names
    assert not any(r["name"].startswith("diag_") for r in measured if r["step"] in (1, 3))


def test_on_a_smooth_model_the_quadratic_model_predicts_a_small_step():
    rows = run_rows("tiny_gpt", GPT, "adamw", {"lr": [1e-4]}, steps=2, diagnostics_every=1)
    got = {r["name"]: r["value"] for r in rows if r["step"] == 1}
    # A tiny step sees a nearly quadratic loss: prediction and realisation agree to ~1 %.
    assert got["diag_loss_change"] < 0
    assert got["diag_loss_change"] == pytest.approx(got["diag_pred_change"], rel=0.02)


def test_a_workload_without_a_full_data_loss_is_refused_naming_the_setting(monkeypatch):
    from approximant.engine.workloads import WORKLOADS as registry
    from approximant.engine.workloads.random_features import RandomFeatures, RandomFeatureTask

    class NoFullLoss(RandomFeatureTask):
        full_loss = Task.full_loss

    class Plain(RandomFeatures):
        name = "plain_rf"

        @classmethod
        def build(cls, settings, seed, device):
            task = RandomFeatures.build(settings, seed, device)
            return NoFullLoss(**{f: getattr(task, f) for f in task.__dataclass_fields__})

    monkeypatch.setitem(registry, "plain_rf", Plain)
    spec = parse_study({"name": "d", "workload": {"name": "plain_rf", "settings": RF},
                        "optimizers": [{"name": "sgd"}], "steps": 2, "diagnostics_every": 1})
    with pytest.raises(ValueError, match="diagnostics_every: workload 'plain_rf' has no full"):
        train(expand(spec)[0], lambda rows: None)
