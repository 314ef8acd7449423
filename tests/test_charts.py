"""What the study charts put in their Vega-Lite specs: fixed colours, the hover table, the
seed lines' budget and the forest plot's certain and uncertain differences."""

from __future__ import annotations

import math

import pandas as pd

from approximant.app import charts


def _datasets(chart) -> list[list[dict]]:
    spec = chart.to_dict()
    return list(spec["datasets"].values())


def test_hover_frame_has_every_group_at_each_step_and_a_dash_where_none():
    grouped = pd.DataFrame({
        "group": ["a.b[x]", "a.b[x]", "c"], "cell": [0, 1, 0], "x": [0.0, 10.0, 0.0],
        "center": [1.0, 0.5, 2.0], "lo": [0.9, 0.5, 1.5], "hi": [1.1, 0.5, 2.5],
        "n": [3, 1, 2]})
    wide, columns = charts.hover_frame(grouped, ["a.b[x]", "c"])
    # Positional field names: a group name with dots or brackets cannot break a Vega path.
    assert columns == {"g0": "a.b[x]", "g1": "c"}
    assert wide[["cell", "g0", "g1", "x"]].values.tolist() == [
        [0, "1  [0.9, 1.1]  n=3", "2  [1.5, 2.5]  n=2", 0.0],
        [1, "0.5  n=1", "–", 10.0]]  # one seed: no band; c has no value at this step


def test_seed_lines_are_thinned_to_the_budget_per_run():
    seeds = pd.DataFrame({"run_id": [r for r in "abc" for _ in range(100)],
                          "x": list(range(100)) * 3, "value": 1.0})
    thin = charts.thin_seeds(seeds, budget=60)
    assert len(thin) <= 60 and set(thin["run_id"]) == {"a", "b", "c"}
    assert charts.thin_seeds(seeds, budget=1000) is seeds


def test_forest_draws_uncertain_differences_hollow():
    table = pd.DataFrame({"group": ["base", "sure", "unsure", "none"],
                          "diff": [0.0, -0.2, 0.1, math.nan],
                          "diff_lo": [math.nan, -0.3, math.nan, math.nan],
                          "diff_hi": [math.nan, -0.1, math.nan, math.nan]})
    chart = charts.forest_chart(table, "base", "final loss", list(table["group"]))
    spec = chart.to_dict()
    points = [layer for layer in spec["layer"] if layer["mark"]["type"] == "point"]
    filled = {layer["mark"]["filled"]: layer for layer in points}
    data = spec["datasets"]
    assert [r["group"] for r in data[filled[True]["data"]["name"]]] == ["sure"]
    assert [r["group"] for r in data[filled[False]["data"]["name"]]] == ["base", "unsure"]
    # Rows and colours follow the study's order and palette, not the table's sorting.
    assert points[0]["encoding"]["color"]["scale"]["domain"] == ["base", "sure", "unsure", "none"]
    assert points[0]["encoding"]["color"]["scale"]["range"] == charts.PALETTE


def test_forest_keeps_page_colours_without_the_baseline_row():
    from approximant.app import report
    from approximant.app.report import View

    runs = pd.DataFrame({"run_id": ["a", "b"], "label": ["sgd[lr=0.1]", "adamw[lr=0.001]"],
                         "optimizer": ["sgd", "adamw"]})
    table = pd.DataFrame({"group": ["SGD-momentum (lr = 0.1)", "AdamW (lr = 0.001)"],
                          "Δ vs baseline": [0.0, -0.2], "Δ CI low": [math.nan, -0.3],
                          "Δ CI high": [math.nan, -0.1]})
    chart = report.forest_figure(table, View(baseline="sgd[lr=0.1]"), runs)
    spec = chart.to_dict()
    rows = {r["group"] for d in spec["datasets"].values() for r in d if "group" in r}
    assert rows == {"AdamW (lr = 0.001)"}  # the baseline is the line at zero, not a row
    scales = [layer["encoding"]["color"]["scale"] for layer in spec["layer"]
              if "color" in layer.get("encoding", {})]
    # AdamW keeps the second colour it has on every other chart of the page.
    assert all(s["domain"] == ["SGD-momentum (lr = 0.1)", "AdamW (lr = 0.001)"] for s in scales)


def test_runs_table_costs_each_run_and_not_a_waiting_rerun():
    from approximant.app import report

    t0 = pd.Timestamp("2026-12-03 10:00:00", tz="UTC")
    status = pd.DataFrame({
        "run_id": ["a", "b", "c"], "label": ["sgd[lr=0.1]"] * 3, "seed": [0, 1, 2],
        "status": ["finished", "running", "queued"], "progress": [1.0, 0.5, 0.0],
        "last_step": [100, 50, 100], "train_loss": [0.1, 0.2, math.nan],
        "val_loss": [0.1, 0.2, math.nan], "val_accuracy": [0.9, 0.8, math.nan],
        "attempt": [1, 1, 1], "message": [None, None, None], "worker": ["w", "w", "w"],
        "started_at": [t0, t0, t0],
        "finished_at": [t0 + pd.Timedelta(seconds=20), pd.NaT, t0 + pd.Timedelta(seconds=9)],
        "updated_at": [t0 + pd.Timedelta(seconds=20), t0 + pd.Timedelta(seconds=5),
                       t0 + pd.Timedelta(seconds=9)]})
    table = report.runs_table(status, status.assign(hparams=[{}] * 3), [])
    assert table["label"].tolist() == ["SGD-momentum (lr = 0.1)"] * 3
    # Finished: start to end; running: to its last report; queued again: nothing yet.
    assert table["wall_s"].tolist()[:2] == [20.0, 5.0] and math.isnan(table["wall_s"].iloc[2])
    assert table["ms_per_step"].tolist()[:2] == [200.0, 100.0]
