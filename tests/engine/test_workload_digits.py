"""Digits workloads: the MLP and the small CNN train, and declare their matrix parameters."""

from __future__ import annotations

import pytest
import torch

from approximant.engine.specs import expand, parse_study
from approximant.engine.training import train
from approximant.engine.workloads import WORKLOADS

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    ("workload", "settings"),
    [("digits_mlp", {"hidden": 32}), ("digits_cnn", {"channels": 4, "hidden": 32})],
)
def test_loss_goes_down_with_adamw(workload, settings):
    spec = parse_study({
        "name": "digits", "workload": {"name": workload, "settings": settings},
        "optimizers": [{"name": "adamw", "grid": {"lr": [0.01]}}], "steps": 30, "eval_every": 30,
    })
    rows: list[dict] = []
    assert train(expand(spec)[0], rows.extend).status == "finished"
    val = {r["step"]: r["value"] for r in rows if r["name"] == "val_loss"}
    acc = {r["step"]: r["value"] for r in rows if r["name"] == "val_accuracy"}
    assert val[30] < 0.7 * val[0]
    assert acc[30] > 0.5


def test_cnn_matrix_parameters_are_the_conv_filters_and_the_dense_layer():
    wl = WORKLOADS["digits_cnn"]
    task = wl.build(wl.settings(channels=4, hidden=32), 0, CPU)
    shapes = [tuple(p.shape) for p in task.matrix_params]
    assert shapes == [(4, 1, 3, 3), (8, 4, 3, 3), (32, 128)]
    head = [m for m in task.model if isinstance(m, torch.nn.Linear)][-1]
    ids = {id(p) for p in task.matrix_params}
    assert id(head.weight) not in ids
    assert not any(id(p) in ids for n, p in task.model.named_parameters() if n.endswith("bias"))


def test_full_loss_is_the_mean_over_the_whole_training_split():
    wl = WORKLOADS["digits_cnn"]
    task = wl.build(wl.settings(channels=4, hidden=32), 0, CPU)
    halves = torch.arange(task.x_train.shape[0]).chunk(2)
    with torch.no_grad():
        parts = [
            torch.nn.functional.cross_entropy(
                task.model(task.x_train[h]), task.y_train[h], reduction="sum")
            for h in halves
        ]
        want = sum(parts) / task.x_train.shape[0]
        assert float(task.full_loss()) == pytest.approx(float(want), rel=1e-5)
