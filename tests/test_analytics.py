"""Analytics queries on a real DuckDB file: gridding, seed aggregation, finals, time to target.

Small hand-made runs give values that can be checked by hand; a synthetic study checks the
shape of the output at a realistic size.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime

import pytest

from approximant.storage import analytics as an
from approximant.storage.schema import INSERT_RUN
from approximant.storage.synthetic import synthetic_study


def _insert(db, study_id: str, runs: dict[str, tuple[str, str, int, float, str]],
            rows: list[tuple[str, int, str, float]]) -> None:
    """runs: run_id → (label, optimizer, seed, lr, status); rows: (run_id, step, name, value)."""
    now = datetime.now(UTC)
    spec = {"name": study_id, "workload": {"name": "w"}, "optimizers": [], "seeds": [0],
            "steps": 10}
    with db.write() as cur:
        cur.execute("INSERT INTO studies VALUES (?, ?, 'w', ?, ?, ?)",
                    [study_id, study_id, json.dumps(spec), len(runs), now])
        for i, (rid, (label, opt, seed, lr, status)) in enumerate(runs.items()):
            cur.execute(INSERT_RUN,
                        [rid, study_id, i, label, opt, seed, json.dumps({"lr": lr}), "{}", 10,
                         status, 1, 10, None, None, None, now, now, now, now])
        cur.executemany("INSERT INTO metrics VALUES (?, 1, ?, ?, ?, ?, ?)",
                        [(rid, step, name, value, step * 0.5, step * 8)
                         for rid, step, name, value in rows])


RUNS = {
    "a0": ("A", "adamw", 0, 1e-3, "finished"),
    "a1": ("A", "adamw", 1, 1e-3, "finished"),
    "b0": ("B", "muon", 0, 1e-2, "finished"),
    "b1": ("B", "muon", 1, 1e-2, "diverged"),
}
ROWS = [
    *[("a0", s, "val_loss", v) for s, v in [(0, 4.0), (5, 2.0), (10, 1.0)]],
    *[("a1", s, "val_loss", v) for s, v in [(0, 4.0), (5, 3.0), (10, 2.0)]],
    *[("b0", s, "val_loss", v) for s, v in [(0, 4.0), (5, 1.0), (10, 0.5)]],
    *[("b1", s, "val_loss", v) for s, v in [(0, 4.0), (5, math.inf)]],
]


@pytest.fixture
def small(db):
    _insert(db, "s1", RUNS, ROWS)
    return an.Analytics(db)


def test_seeds_share_grid_cells_and_bands_are_pointwise(small):
    curves = small.run_curves(["s1"], "val_loss", "step", points=200)
    # Three evaluations 5 steps apart: cells of width 5 centred on 0, 5, 10.
    assert sorted(curves["cell"].unique()) == [0, 1, 2]
    runs = small.runs(["s1"])
    grouped = an.group_curves(curves, runs, "config", band="minmax").set_index(["group", "cell"])
    assert grouped.loc[("A", 1), ["x", "center", "lo", "hi", "n"]].tolist() == [5, 2.5, 2, 3, 2]
    # The diverged seed's inf is not averaged in: B at step 5 has one seed.
    assert grouped.loc[("B", 1), ["center", "n"]].tolist() == [1.0, 1]
    assert grouped.loc[("B", 2), ["center", "n"]].tolist() == [0.5, 1]


def test_wall_time_axis_uses_training_time(small):
    curves = small.run_curves(["s1"], "val_loss", "wall")
    assert sorted(curves["x"].unique()) == [0.0, 2.5, 5.0]


def test_smoothing_is_applied_per_run_before_aggregation(small):
    curves = small.run_curves(["s1"], "val_loss", "step")
    runs = small.runs(["s1"])
    g = an.group_curves(curves, runs, "config", smoothing=0.5).set_index(["group", "cell"])
    # a0: 4, 2 → (0.5·0.5·4 + 0.5·2)/0.75 = 8/3; a1: 4, 3 → 10/3; mean 3. Raw mean stays 2.5.
    assert g.loc[("A", 1), "center"] == pytest.approx(3.0)
    assert g.loc[("A", 1), "raw"] == pytest.approx(2.5)


def test_finals_group_table_and_baseline(small):
    runs = small.runs(["s1"])
    finals = small.finals(["s1"], "val_loss").set_index("run_id")
    assert finals.loc["a1", ["final", "best"]].tolist() == [2.0, 2.0]
    # The diverged run's final is its inf; its best is its best finite value.
    assert math.isinf(finals.loc["b1", "final"]) and finals.loc["b1", "best"] == 4.0
    table = an.group_table(runs, finals.reset_index(), "config", "final", baseline="A",
                           band="std").set_index("group")
    assert table.loc["A", ["runs", "diverged", "n", "center"]].tolist() == [2, 0, 2, 1.5]
    assert table.loc["B", ["runs", "diverged", "n", "center"]].tolist() == [2, 1, 1, 0.5]
    assert table.loc["B", "diff"] == pytest.approx(-1.0)
    # One finished seed: no spread, so neither a probability nor a t-test, not a confident 1.
    assert math.isnan(table.loc["B", "p_improve"]) and math.isnan(table.loc["B", "p_value"])
    assert list(table["unfinished"]) == [0, 0]
    assert table["note"].tolist() == ["too few seeds (need 3); baseline",
                                      "too few seeds (need 3); baseline has too few seeds"]


def _seeds(label: str, values: list[float], status: str = "finished") -> tuple[dict, list]:
    runs = {f"{label}{i}": (label, "adamw", i, 1e-3, status) for i in range(len(values))}
    rows = [(f"{label}{i}", 10, "val_loss", v) for i, v in enumerate(values)]
    return runs, rows


def test_group_table_against_a_baseline_by_hand(db):
    runs, rows = {}, []
    for label, values, status in [("A", [3.0, 4.0, 5.0], "finished"),
                                  ("B", [1.0, 2.0, 3.0], "finished"),
                                  ("C", [1.0, 2.0], "finished"), ("D", [9.0], "running")]:
        r, m = _seeds(label, values, status)
        runs.update(r)
        rows += m
    _insert(db, "s5", runs, rows)
    a = an.Analytics(db)
    table = an.group_table(a.runs(["s5"]), a.finals(["s5"], "val_loss"), baseline="A")
    assert list(table.columns) == ["group", "runs", "diverged", "unfinished", "n", "center", "lo",
                                   "hi", "diff", "diff_lo", "diff_hi", "p_improve", "p_value",
                                   "note"]
    assert {c: table[c].dtype.kind for c in table.columns if c not in ("group", "note")} == {
        "runs": "i", "diverged": "i", "unfinished": "i", "n": "i", "center": "f", "lo": "f",
        "hi": "f", "diff": "f", "diff_lo": "f", "diff_hi": "f", "p_improve": "f", "p_value": "f"}
    t = table.set_index("group")
    # B against A is the hand case of tests/test_stats.py: Δ = −2, ν = 4, t = −√6,
    # interval −2 ± 2.7764451 · √(2/3), P(better) = ½ + 0.3·√2.4, p = 1 − 0.6·√2.4.
    b = t.loc["B"]
    assert (b["n"], b["center"], b["diff"]) == (3, 2.0, -2.0)
    assert b["diff_lo"] == pytest.approx(-2 - 2.7764451052 * math.sqrt(2 / 3))
    assert b["diff_hi"] == pytest.approx(-2 + 2.7764451052 * math.sqrt(2 / 3))
    assert b["p_improve"] == pytest.approx(0.5 + 0.3 * math.sqrt(2.4))
    assert b["p_value"] == pytest.approx(1 - 0.6 * math.sqrt(2.4))
    # B's own 95 % interval: 2 ± t(0.975, 2)/√3 = 2 ± 2.4841 would reach −0.48 for a loss; the
    # multiplicative one is 2·e^(∓2.4841/2) and stays positive.
    half = 4.3026527297 / math.sqrt(3)
    assert b["lo"] == pytest.approx(2 * math.exp(-half / 2)) and b["lo"] > 0
    assert b["hi"] == pytest.approx(2 * math.exp(half / 2))
    # The baseline row: Δ = 0 and nothing to test; its own interval is shown.
    base = t.loc["A"]
    assert base["diff"] == 0.0 and base["note"] == "baseline"
    assert all(math.isnan(base[c]) for c in ("diff_lo", "diff_hi", "p_improve", "p_value"))
    assert base["lo"] == pytest.approx(4 * math.exp(-half / 4))
    # Two seeds: Δ is a fact, the rest is "too few seeds", not P(better) = 1.
    c = t.loc["C"]
    assert (c["n"], c["diff"], c["note"]) == (2, -2.5, "too few seeds (need 3)")
    assert all(math.isnan(c[k]) for k in ("lo", "hi", "diff_lo", "diff_hi", "p_improve",
                                          "p_value"))
    d = t.loc["D"]
    assert (d["n"], d["unfinished"], d["note"]) == (0, 1, "no finished seeds")
    assert math.isnan(d["center"]) and math.isnan(d["diff"])
    assert table["note"].map(type).eq(str).all()  # no cell of text is missing
    assert not any(table["note"].str.contains("None"))
    # Without a baseline there is nothing to compare against, and still a note.
    plain = an.group_table(a.runs(["s5"]), a.finals(["s5"], "val_loss"))
    assert list(plain.columns) == ["group", "runs", "diverged", "unfinished", "n", "center", "lo",
                                   "hi", "note"]
    assert plain.set_index("group").loc["B", "note"] == ""


def test_curve_bands_of_a_loss_stay_positive(small):
    curves = small.run_curves(["s1"], "val_loss", "step")
    g = an.group_curves(curves, small.runs(["s1"]), "config", band="t").set_index(
        ["group", "cell"])
    # A at step 10: losses 1 and 2, mean 1.5, s/√n = ½, half-width 12.7062 · ½ = 6.3531. The
    # additive band would reach −4.85; the multiplicative one is 1.5·e^(∓6.3531/1.5).
    assert g.loc[("A", 2), "lo"] == pytest.approx(1.5 * math.exp(-12.7062047362 / 3))
    assert g.loc[("A", 2), "hi"] == pytest.approx(1.5 * math.exp(12.7062047362 / 3))
    assert (g["lo"].dropna() > 0).all()


def test_unfinished_runs_are_counted_but_not_averaged(db):
    runs = {"a0": ("A", "adamw", 0, 1e-3, "finished"), "a1": ("A", "adamw", 1, 1e-3, "finished"),
            "a2": ("A", "adamw", 2, 1e-3, "cancelled"), "a3": ("A", "adamw", 3, 1e-3, "running")}
    rows = [("a0", 10, "val_loss", 1.0), ("a1", 10, "val_loss", 3.0),
            ("a2", 5, "val_loss", 50.0), ("a3", 5, "val_loss", 70.0)]
    _insert(db, "s2", runs, rows)
    a = an.Analytics(db)
    table = an.group_table(a.runs(["s2"]), a.finals(["s2"], "val_loss"), band="t").iloc[0]
    assert (table["runs"], table["unfinished"], table["n"], table["center"]) == (4, 2, 2, 2.0)
    # Two seeds are below MIN_SEEDS: the t interval (2 ± 12.706 · √2 / √2, reaching −10.7 for a
    # loss) is not shown, and the note says why.
    assert math.isnan(table["lo"]) and math.isnan(table["hi"])
    assert table["note"] == "too few seeds (need 3)"


def test_time_to_target_keeps_censored_runs(small):
    runs = small.runs(["s1"])
    reached = small.time_to_target(["s1"], "val_loss", 1.0, "step").set_index("run_id")
    assert reached.loc["a0", "reached"] == 10 and reached.loc["b0", "reached"] == 5
    assert math.isinf(reached.loc["a1", "reached"]) and math.isinf(reached.loc["b1", "reached"])
    summary = an.ttt_summary(runs, reached.reset_index()).set_index("group")
    assert summary.loc["A", ["runs", "reached", "median"]].tolist() == [2, 1, math.inf]
    examples = small.time_to_target(["s1"], "val_loss", 1.0, "examples").set_index("run_id")
    assert examples.loc["a0", "reached"] == 80


def test_lr_sensitivity_counts_a_diverged_lr(db):
    sid = synthetic_study(db, "lr", ["adamw", "muon"], [1e-3, 1e-2, 1e-1], [0, 1], 300,
                          diverge={("muon", 1e-1)})
    a = an.Analytics(db)
    runs = a.runs([sid])
    points, tune = an.lr_sensitivity(runs, a.finals([sid], "val_loss"), "final")
    bad = points[(points["optimizer"] == "muon") & (points["lr"] == 1e-1)].iloc[0]
    assert bad["runs"] == 2 and math.isinf(bad["center"])
    ok = points[points["optimizer"] == "adamw"].sort_values("lr")
    assert ok["center"].is_monotonic_increasing  # the synthetic optimum for adamw is 1e-3
    assert set(tune["optimizer"]) == {"adamw", "muon"}


def test_grid_at_scale_caps_points_per_run(db):
    sid = synthetic_study(db, "big", ["adamw", "muon"], [1e-3, 1e-2], [0, 1, 2], 2000)
    a = an.Analytics(db)
    curves = a.run_curves([sid], "train_loss", "step", points=100)
    per_run = curves.groupby("run_id").size()
    assert len(per_run) == 12 and per_run.max() <= 101
    grouped = an.group_curves(curves, a.runs([sid]), "optimizer", band="bootstrap")
    assert set(grouped["group"]) == {"adamw", "muon"} and grouped["n"].max() == 6
    assert (grouped["lo"] <= grouped["center"] + 1e-12).all()
    assert a.varying_hparams(a.runs([sid])) == ["lr"]


def test_bad_choices_are_named(small):
    with pytest.raises(ValueError, match="x must be one of"):
        small.run_curves(["s1"], "val_loss", "tokens")
    with pytest.raises(ValueError, match=r"points must be in \[2, 5000\]"):
        small.run_curves(["s1"], "val_loss", "step", points=1)
    with pytest.raises(ValueError, match="group_by must be one of"):
        an.group_key(small.runs(["s1"]), "seed")


def test_profile_costs_take_each_optimizers_best_config_per_task(db):
    s1 = synthetic_study(db, "t1", ["adamw", "muon"], [1e-3, 1e-1], [0, 1], 200, workload="w1")
    s2 = synthetic_study(db, "t2", ["adamw", "muon"], [1e-3, 1e-1], [0, 1], 200, workload="w2",
                         diverge={("muon", 1e-1), ("muon", 1e-3)})
    a = an.Analytics(db)
    runs = a.runs([s1, s2])
    costs = an.profile_costs(runs, a.finals([s1, s2], "val_loss"))
    assert len(costs) == 4
    t2 = costs[costs["task"] == s2].set_index("solver")["cost"]
    assert math.isinf(t2["muon"]) and math.isfinite(t2["adamw"])
    from approximant.storage.stats import performance_profile

    rho = performance_profile(costs, [1.0, 1e9]).pivot(index="tau", columns="solver",
                                                       values="rho")
    assert rho.loc[1e9, "muon"] == 0.5 and rho.loc[1e9, "adamw"] == 1.0


def test_lr_lines_connect_configs_that_differ_only_in_lr():
    assert an._without_lr("adamw[lr=0.001]") == "adamw"
    assert an._without_lr("muon[adamw_lr=0.001,lr=0.02,momentum=0.9]") == \
        "muon[adamw_lr=0.001,momentum=0.9]"


def test_a_partly_diverged_lr_is_not_counted_as_tuneable(db):
    runs = {"a": ("adamw[lr=0.001]", "adamw", 0, 1e-3, "finished"),
            "b": ("adamw[lr=0.001]", "adamw", 1, 1e-3, "finished"),
            "c": ("adamw[lr=0.01]", "adamw", 0, 1e-2, "finished"),
            "d": ("adamw[lr=0.01]", "adamw", 1, 1e-2, "diverged")}
    rows = [("a", 9, "val_loss", 1.0), ("b", 9, "val_loss", 1.0), ("c", 9, "val_loss", 1.02),
            ("d", 4, "val_loss", math.inf)]
    _insert(db, "s3", runs, rows)
    a = an.Analytics(db)
    points, tune = an.lr_sensitivity(a.runs(["s3"]), a.finals(["s3"], "val_loss"), within=0.1)
    p = points.set_index("lr")
    assert (p.at[1e-2, "runs"], p.at[1e-2, "n"], p.at[1e-2, "center"]) == (2, 1, 1.02)
    assert tune.set_index("optimizer").at["adamw", "decades"] == 0.0


def test_runs_still_going_are_not_yet_censored(db):
    runs = {"a": ("A", "adamw", 0, 1e-3, "finished"), "b": ("A", "adamw", 1, 1e-3, "running"),
            "c": ("A", "adamw", 2, 1e-3, "cancelled")}
    rows = [("a", 9, "val_loss", 0.5), ("b", 4, "val_loss", 2.0), ("c", 4, "val_loss", 2.0)]
    _insert(db, "s4", runs, rows)
    a = an.Analytics(db)
    reached = a.time_to_target(["s4"], "val_loss", 1.0)
    summary = an.ttt_summary(a.runs(["s4"]), reached).iloc[0]
    assert (summary["runs"], summary["reached"], summary["not_yet"]) == (3, 1, 1)
    assert [an.ttt_outcome(s, r) for s, r in [("running", math.inf), ("cancelled", math.inf),
                                               ("finished", 3.0)]] == ["not yet", "never",
                                                                       "reached"]


def test_tuning_budget_counts_each_run_as_a_trial_and_a_diverged_one_as_untrained(db):
    runs = {
        "m1": ("muon[lr=0.01]", "muon", 0, 0.01, "finished"),
        "m2": ("muon[lr=0.01]", "muon", 1, 0.01, "finished"),
        "m3": ("muon[lr=0.1]", "muon", 0, 0.1, "finished"),
        "s1": ("sgd[lr=0.1]", "sgd", 0, 0.1, "finished"),
        "s2": ("sgd[lr=1]", "sgd", 0, 1.0, "diverged"),
        "s3": ("sgd[lr=1]", "sgd", 1, 1.0, "running"),  # not ended: not a trial
    }
    rows = [(rid, 0, "val_loss", 5.0) for rid in runs] + [
        ("m1", 10, "val_loss", 3.0), ("m2", 10, "val_loss", 1.0), ("m3", 10, "val_loss", 2.0),
        ("s1", 10, "val_loss", 2.0), ("s2", 5, "val_loss", math.inf), ("s1", 0, "x", 9.0)]
    rows[3] = ("s1", 0, "val_loss", 6.0)  # the worst untrained value in the study
    _insert(db, "tb", runs, rows)
    a = an.Analytics(db)
    frame = a.runs(["tb"])
    firsts = an.first_values(a, ["tb"], "val_loss")
    assert firsts.set_index("run_id").loc["s1", "first"] == 6.0
    curves, summary = an.tuning_budget(frame, a.finals(["tb"], "val_loss"), firsts)
    muon = curves[curves["family"] == "muon"]
    # Trials {1, 2, 3}: the mean, 14/9 and 36/27 (tests/test_stats.py works them out).
    assert muon["expected"].tolist() == pytest.approx([2.0, 14 / 9, 36 / 27])
    assert muon["k"].tolist() == [1, 2, 3]
    sgd = curves[curves["family"] == "sgd"]
    # The diverged run counts as the untrained model (6.0): trials {2, 6}; E[min of 2] =
    # 2·3/4 + 6·1/4 = 3.
    assert sgd["expected"].tolist() == pytest.approx([4.0, 3.0])
    s = summary.set_index("family")
    assert s.loc["sgd", ["trials", "diverged", "lrs", "k", "penalty"]].tolist() == [2, 1, 2, 2, 6]
    # At the common budget k = 2: Muon 14/9 < SGD 3.
    assert s.loc["muon", "at_k"] == pytest.approx(14 / 9)
    assert s.loc[["muon", "sgd"], "rank"].tolist() == [1, 2]
    assert s.loc["muon", "best"] == 1.0
    assert (curves["lo"] <= curves["expected"] + 1e-12).all()


def test_tuning_budget_of_nothing_ended_is_empty(db):
    _insert(db, "tq", {"q": ("adamw[lr=0.001]", "adamw", 0, 1e-3, "running")},
            [("q", 0, "val_loss", 5.0)])
    a = an.Analytics(db)
    curves, summary = an.tuning_budget(a.runs(["tq"]), a.finals(["tq"], "val_loss"),
                                       an.first_values(a, ["tq"], "val_loss"))
    assert curves.empty and summary.empty
