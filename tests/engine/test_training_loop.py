"""The training loop: determinism, schedules, clipping, budgets, divergence and metric names."""

from __future__ import annotations

import math
from typing import Any

import pytest

from approximant.engine.specs import expand, parse_study
from approximant.engine.training import lr_multiplier, planned_steps, train

# Small enough that a run takes milliseconds; full batch when batch_size == n_train.
RF = {"input_dim": 16, "features": 32, "outputs": 4, "n_train": 256, "n_val": 64,
      "batch_size": 32}


def run_spec(optimizer: str = "adamw", grid: dict[str, Any] | None = None, *,
             workload: str = "random_features", settings: dict[str, Any] | None = None,
             seed: int = 0, **study: Any):
    spec = parse_study({
        "name": "loop",
        "workload": {"name": workload, "settings": RF if settings is None else settings},
        "optimizers": [{"name": optimizer, "grid": grid or {}}],
        "seeds": [seed],
        **{"steps": 10, "eval_every": 5, **study},
    })
    (run,) = expand(spec)
    return run


def collect(run, **kw):
    rows: list[dict] = []
    result = train(run, rows.extend, **kw)
    return result, rows


def series(rows: list[dict], name: str) -> list[float]:
    return [r["value"] for r in sorted(rows, key=lambda r: r["step"]) if r["name"] == name]


def test_same_spec_and_seed_give_identical_losses_and_another_seed_does_not():
    _, a = collect(run_spec(seed=3))
    _, b = collect(run_spec(seed=3))
    _, c = collect(run_spec(seed=4))
    assert series(a, "train_loss") == series(b, "train_loss")
    assert series(a, "val_loss") == series(b, "val_loss")
    assert series(a, "train_loss") != series(c, "train_loss")


def test_default_metric_names_are_unchanged():
    result, rows = collect(run_spec())
    assert result.status == "finished" and result.steps_done == 10
    per_step = {r["name"] for r in rows if r["step"] == 3}
    assert per_step == {"train_loss", "lr", "step_time", "grad_norm"}
    assert [r["step"] for r in rows if r["name"] == "val_loss"] == [0, 5, 10]
    assert [r["tokens"] for r in rows if r["name"] == "train_loss"] == [32 * s for s in
                                                                       range(1, 11)]


@pytest.mark.parametrize(
    ("schedule", "warmup", "floor", "expected"),
    [
        ("constant", 0, 0.0, [1.0] * 10),
        ("constant", 4, 0.0, [0.25, 0.5, 0.75, 1.0] + [1.0] * 6),
        ("linear", 0, 0.0, [1 - s / 10 for s in range(1, 11)]),
        ("linear", 2, 0.5, [0.5, 1.0] + [0.5 + 0.5 * (1 - s / 8) for s in range(1, 9)]),
        ("cosine", 0, 0.0, [0.5 * (1 + math.cos(math.pi * s / 10)) for s in range(1, 11)]),
        ("cosine", 5, 0.1, [s / 5 for s in range(1, 6)]
         + [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s / 5)) for s in range(1, 6)]),
    ],
)
def test_lr_multiplier_matches_the_closed_form(schedule, warmup, floor, expected):
    got = [lr_multiplier(s, 10, schedule, warmup, floor) for s in range(1, 11)]
    assert got == pytest.approx(expected, abs=1e-12)


def test_the_lr_metric_follows_the_schedule_on_every_group():
    run = run_spec("adamw", {"lr": [0.01]}, lr_schedule="cosine", warmup_steps=3,
                   min_lr_ratio=0.2)
    _, rows = collect(run)
    want = [0.01 * lr_multiplier(s, 10, "cosine", 3, 0.2) for s in range(1, 11)]
    assert series(rows, "lr") == pytest.approx(want, rel=1e-12)
    assert series(rows, "lr")[-1] == pytest.approx(0.002)


def test_warmup_longer_than_the_run_is_refused_naming_the_field():
    from approximant.engine.errors import SpecError

    with pytest.raises(SpecError, match=r"warmup_steps: must be at most steps \(10\)"):
        run_spec(warmup_steps=11)


def test_clipping_caps_the_step_at_the_clip_norm():
    # Full-batch SGD without momentum: the update is lr·g·min(1, c/‖g‖), so the descent
    # product the diagnostics see is ⟨g, D⟩ = lr·‖g‖·min(‖g‖, c).
    settings = {**RF, "batch_size": RF["n_train"]}
    lr, clip = 0.5, 1e-3
    run = run_spec("sgd", {"lr": [lr], "momentum": [0.0]}, settings=settings, steps=3,
                   grad_clip=clip, log_grad_norm=True, diagnostics_every=1)
    _, rows = collect(run)
    norms = series(rows, "grad_norm")
    assert len(norms) == 3 and min(norms) > 10 * clip
    for g, gtd in zip(norms, series(rows, "diag_gtd_batch"), strict=True):
        assert gtd == pytest.approx(lr * g * clip, rel=1e-4)
    unclipped = run_spec("sgd", {"lr": [lr], "momentum": [0.0]}, settings=settings, steps=3,
                         log_grad_norm=True, diagnostics_every=1)
    _, free = collect(unclipped)
    g0 = series(free, "grad_norm")[0]
    assert series(free, "diag_gtd_batch")[0] == pytest.approx(lr * g0 * g0, rel=1e-4)


def test_grad_norm_is_logged_by_default_and_can_be_turned_off():
    _, rows = collect(run_spec())
    assert len(series(rows, "grad_norm")) == 10
    assert all(v > 0 for v in series(rows, "grad_norm"))
    _, rows = collect(run_spec(log_grad_norm=False))
    assert series(rows, "grad_norm") == []


def test_a_huge_learning_rate_ends_the_run_as_diverged_with_its_step():
    run = run_spec("sgd", {"lr": [100.0]}, steps=200)
    result, rows = collect(run)
    assert result.status == "diverged"
    assert 1 <= result.steps_done < 200
    assert f"at step {result.steps_done}" in result.message
    assert not math.isfinite(series(rows, "train_loss")[-1])
    assert max(r["step"] for r in rows) == result.steps_done


def test_an_example_budget_stops_early_and_sets_the_schedule_horizon():
    run = run_spec(steps=100, max_examples=32 * 6 + 1, lr_schedule="linear")
    assert planned_steps(run, 32) == 7
    result, rows = collect(run)
    assert result.status == "finished" and result.steps_done == 7
    assert "max_examples" in result.message
    assert series(rows, "lr")[-1] == pytest.approx(0.0, abs=1e-15)
    assert [r["step"] for r in rows if r["name"] == "val_loss"] == [0, 5, 7]


def test_a_time_budget_stops_after_the_step_that_spends_it():
    result, rows = collect(run_spec(steps=50, max_seconds=1e-9))
    assert result.status == "finished" and result.steps_done == 1
    assert "max_seconds" in result.message
    assert [r["step"] for r in rows if r["name"] == "val_loss"] == [0, 1]


def test_should_stop_cancels_between_steps():
    calls = iter([False, False, True])
    result, rows = collect(run_spec(), should_stop=lambda: next(calls))
    assert result.status == "cancelled" and result.steps_done == 2
    assert len(series(rows, "train_loss")) == 2


def test_fast_grad_norm_matches_torch():
    import torch

    from approximant.engine.training import _grad_norm

    same = [torch.randn(5, 3), torch.randn(7), torch.randn(2, 2, 2)]
    assert torch.allclose(_grad_norm(same), torch.nn.utils.get_total_norm(same))
    mixed = [torch.randn(4), torch.randn(4, dtype=torch.float64)]  # falls back to torch's
    assert torch.allclose(_grad_norm(mixed).double(),
                          torch.nn.utils.get_total_norm(mixed).double())
