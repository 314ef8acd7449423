"""Profiles: performance profiles across studies (one task per study), AlgoPerf style."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import streamlit as st

from approximant.app import charts, labels
from approximant.app.services import get_services
from approximant.app.text import plain
from approximant.storage import analytics as an
from approximant.storage import stats

COSTS = {"final": "final value of the metric", "best": "best value of the metric",
         "ttt": "steps to reach the target"}


def render() -> None:
    st.title("Performance profiles")
    services = get_services()
    services.refresh()
    studies = services.queries.studies()
    if studies.empty:
        st.info("No studies yet. Profiles compare optimizers across several studies.")
        return
    names = studies.set_index("study_id")
    picked = st.multiselect(
        "Studies (each is one task)", list(studies["study_id"]),
        default=[p for p in st.query_params.get_all("s") if p in names.index]
        or list(studies["study_id"][:5]),
        format_func=lambda s: f"{names.at[s, 'name']} · {names.at[s, 'workload']}",
        key="prof_studies")
    st.query_params["s"] = picked
    a = an.Analytics(services.db)
    metrics = [m for m in a.metric_names(picked) if not m.startswith("diag_")]
    if not picked or not metrics:
        st.caption("Pick studies that have recorded metrics.")
        return
    c = st.columns(3)
    metric = c[0].selectbox("Metric", metrics, key="prof_metric", format_func=labels.metric_title,
                            index=metrics.index("val_loss") if "val_loss" in metrics else 0)
    cost = c[1].selectbox("Cost", list(COSTS), format_func=COSTS.__getitem__, key="prof_cost")
    slack = c[2].number_input("Target: within % of the task's best", 0.0, 1000.0, 5.0,
                              key="prof_slack", disabled=cost != "ttt")
    runs = a.runs(picked)
    finals = a.finals(picked, metric)
    if cost == "ttt":
        # Each task gets its own target: the best value reached on it, loosened by the slack.
        costs = []
        for sid in picked:
            best = finals[finals["run_id"].isin(runs.loc[runs["study_id"] == sid, "run_id"])]
            best_value = best["best"].min()
            if not math.isfinite(best_value):
                continue
            target = best_value + abs(best_value) * slack / 100
            reached = a.time_to_target([sid], metric, target, "step")
            sub = runs[runs["study_id"] == sid]
            costs.append(an.profile_costs(sub, finals, reached))
        table = pd.concat(costs) if costs else pd.DataFrame(columns=["task", "solver", "cost"])
        table["cost"] = table["cost"].replace(0, 1)  # reached at step 0: one step is the floor
    else:
        table = an.profile_costs(runs, finals, measure=cost)
    if table.empty or not np.isfinite(table["cost"]).any():
        st.caption("No optimizer has a finite cost on these studies yet.")
        return
    if (table["cost"] <= 0).any():
        st.error(f"{plain(metric)}: performance profiles need positive costs; this metric has "
                 "values ≤ 0. Choose a loss.")
        return
    table = table.assign(solver=table["solver"].map(labels.optimizer_title))
    taus = np.logspace(0, 1, 101)
    profile = stats.performance_profile(table, taus)
    st.altair_chart(charts.profile_chart(profile), width="stretch", key="chart_profile")
    st.caption(f"{table['task'].nunique()} tasks. Each optimizer's cost on a task is its best "
               "config's median over seeds; a diverged run costs ∞ and is never within τ.")
    wide = table.pivot(index="task", columns="solver", values="cost")
    wide.index = [f"{names.at[t, 'name']} · {names.at[t, 'workload']} ({t})" for t in wide.index]
    # A task an optimizer was not run on shows a dash, not the word None.
    st.dataframe(wide, key="prof_table", width="stretch", placeholder=labels.MISSING)
