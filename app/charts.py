"""Altair charts of a study. Inputs are already downsampled by ``storage.queries``."""

from __future__ import annotations

import altair as alt
import pandas as pd

METRIC_TITLES = {
    "train_loss": "Training loss",
    "val_loss": "Validation loss",
    "val_accuracy": "Validation accuracy",
}


def loss_chart(curves: pd.DataFrame, metric: str, log_y: bool = False) -> alt.Chart:
    """One line per run, coloured by optimizer config; the seeds of a config share a colour."""
    data = curves[curves["name"] == metric].copy()
    data["seed"] = data["seed"].astype(str)
    scale = alt.Scale(type="log") if log_y else alt.Scale(zero=False)
    title = METRIC_TITLES.get(metric, metric)
    return (
        alt.Chart(data, title=title)
        .mark_line(point=metric.startswith("val_") and len(data) < 400, strokeWidth=1.6)
        .encode(
            x=alt.X("step:Q", title="step"),
            y=alt.Y("value:Q", title=title, scale=scale),
            color=alt.Color("label:N", title="config"),
            detail="run_id:N",
            strokeDash=alt.StrokeDash("seed:N", title="seed", legend=None),
            tooltip=[
                alt.Tooltip("label:N", title="config"),
                alt.Tooltip("seed:N"),
                alt.Tooltip("step:Q"),
                alt.Tooltip("value:Q", format=".4g"),
            ],
        )
        .properties(height=320, width="container")
        .interactive(bind_y=False)
    )
