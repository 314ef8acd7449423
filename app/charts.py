"""Altair charts of a study. Inputs are already reduced in SQL by ``storage.analytics``."""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

METRIC_TITLES = {
    "train_loss": "Training loss",
    "val_loss": "Validation loss",
    "val_accuracy": "Validation accuracy",
}


# Okabe & Ito's colour-blind-safe set (Color Universal Design), its yellow darkened so it
# reads on white. Beyond eight groups no palette stays distinguishable for everyone; tableau20
# then at least keeps neighbours apart, and the tooltip names the group.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#56B4E9", "#CC79A7", "#000000",
           "#B8A000"]


def palette_scale(domain: list[str] | None = None, n: int | None = None) -> alt.Scale:
    """A colour scale over ``domain`` (fixed, so colours do not move) or ``n`` unnamed values:
    the colour-blind-safe palette while it suffices."""
    count = len(domain) if domain else (n or 0)
    kwargs: dict = {"domain": list(domain)} if domain else {}
    if count <= len(PALETTE):
        return alt.Scale(range=PALETTE, **kwargs)
    return alt.Scale(scheme="tableau20", **kwargs)


def group_colors(groups: list[str] | None, n: int) -> alt.Scale:
    """Colours by a fixed domain (the study's groups in config order), so a group keeps its
    colour when others appear or stop reporting, and on every page that draws it."""
    return palette_scale(groups or None, n)


def _y_scale(log_y: bool) -> alt.Scale:
    return alt.Scale(type="log") if log_y else alt.Scale(zero=False)


def band_chart(grouped: pd.DataFrame, metric: str, x_title: str, log_y: bool = False,
               band_label: str = "± std", show_raw: bool = False,
               x_domain: tuple[float, float] | None = None,
               groups: list[str] | None = None) -> alt.LayerChart:
    """Centre line per group with its seed band; ``n`` (seeds at the point) in the tooltip and
    as point opacity, so a band resting on fewer seeds than the rest is visibly thinner.
    ``groups``: every group of the study, in order, for colours that do not move."""
    title = METRIC_TITLES.get(metric, metric)
    data = grouped.copy()
    if log_y:  # a log axis cannot show a band reaching zero or below
        data = data[data["center"] > 0]
        data["lo"] = data["lo"].where(data["lo"] > 0, data["center"])
    xs = alt.Scale(domain=list(x_domain), clamp=True) if x_domain else alt.Scale()
    x = alt.X("x:Q", title=x_title, scale=xs)
    # On the right: a legend below the plot would share the chart's height and squash it.
    n_groups = data["group"].nunique()
    color = alt.Color("group:N", title=None, legend=alt.Legend(orient="right", labelLimit=220),
                      scale=group_colors(groups, n_groups))
    tooltip = [alt.Tooltip("group:N"), alt.Tooltip("x:Q", title=x_title, format=".4g"),
               alt.Tooltip("center:Q", title=title, format=".4g"),
               alt.Tooltip("lo:Q", title=f"band low ({band_label})", format=".4g"),
               alt.Tooltip("hi:Q", title=f"band high ({band_label})", format=".4g"),
               alt.Tooltip("n:Q", title="seeds at this point")]
    base = alt.Chart(data, title=title)
    layers = [
        base.mark_area(opacity=0.18).encode(x=x, y=alt.Y("lo:Q", title=title,
                                                            scale=_y_scale(log_y)),
                                            y2="hi:Q", color=color),
    ]
    if show_raw:
        layers.append(base.mark_line(opacity=0.25, strokeWidth=1).encode(
            x=x, y="raw:Q", color=color))
    layers.append(base.mark_line(strokeWidth=2).encode(x=x, y="center:Q", color=color))
    layers.append(base.mark_point(filled=True, size=18).encode(
        x=x, y="center:Q", color=color,
        opacity=alt.Opacity("n:Q", legend=None, scale=alt.Scale(range=[0.15, 0.9])),
        tooltip=tooltip))
    # Tall enough for one legend row per group: a clipped legend hides which line is which.
    return alt.layer(*layers).properties(height=max(320, 20 * n_groups), width="container") \
        .interactive(bind_y=False)


def lr_chart(points: pd.DataFrame, title: str, log_y: bool = False) -> alt.LayerChart:
    """Measure against learning rate per optimizer config family, with the seed band; a
    learning rate whose runs all diverged is drawn as a cross above the finite points."""
    finite = points[np.isfinite(points["center"].astype(float))]
    top = float(finite["hi"].max()) * 1.1 if not finite.empty else 1.0
    bad = points.loc[~points.index.isin(finite.index)].assign(center=top)
    x = alt.X("lr:Q", title="learning rate", scale=alt.Scale(type="log"))
    color = alt.Color("optimizer:N", title="optimizer",
                      scale=palette_scale(sorted(points["optimizer"].unique())))
    tooltip = ["label:N", alt.Tooltip("lr:Q", format=".3g"),
               alt.Tooltip("center:Q", title=title, format=".4g"),
               alt.Tooltip("n:Q", title="finite seeds"), alt.Tooltip("runs:Q", title="runs")]
    y = alt.Y("center:Q", title=title, scale=_y_scale(log_y))
    base = alt.Chart(finite, title=f"{title} against learning rate")
    layers = [
        base.mark_errorbar().encode(x=x, y=alt.Y("lo:Q", title=title, scale=_y_scale(log_y)),
                                    y2="hi:Q", color=color),
        base.mark_line(point=True).encode(x=x, y=y, color=color, detail="family:N",
                                          tooltip=tooltip),
    ]
    if not bad.empty:
        layers.append(alt.Chart(bad).mark_point(shape="cross", size=120, filled=True).encode(
            x=x, y=y, color=color,
            tooltip=["label:N", alt.Tooltip("lr:Q", format=".3g"),
                     alt.Tooltip("runs:Q", title="runs (all diverged or failed)")]))
    return alt.layer(*layers).properties(height=320, width="container")


def ttt_chart(per_run: pd.DataFrame, x_title: str,
              groups: list[str] | None = None) -> alt.LayerChart:
    """Time to target per run and group (``outcome`` from ``analytics.ttt_outcome``); runs that
    have not reached it sit at the right edge, marked "never" (censored: they ended) or "not
    yet" (still going), so they are counted, not dropped."""
    data = per_run.copy()
    finite = data["reached"].replace([float("inf")], float("nan"))
    edge = float(finite.max()) * 1.08 if finite.notna().any() else 1.0
    labels = {"reached": "reached", "never": "never (censored)", "not yet": "not yet (running)"}
    data["outcome"] = data["outcome"].map(labels)
    data["x"] = finite.fillna(edge)
    data["shown"] = data["reached"].map(lambda v: "never" if v == float("inf") else f"{v:.4g}")
    chart = alt.Chart(data, title=f"Time to target ({x_title})")
    return chart.mark_point(size=70, filled=True).encode(
        x=alt.X("x:Q", title=x_title),
        y=alt.Y("group:N", title=None),
        color=alt.Color("group:N", legend=None,
                        scale=group_colors(groups, data["group"].nunique())),
        shape=alt.Shape("outcome:N", title=None,
                        scale=alt.Scale(domain=list(labels.values()),
                                        range=["circle", "triangle-right", "diamond"])),
        tooltip=["group:N", "seed:N", alt.Tooltip("shown:N", title=x_title)],
    ).properties(height=max(120, 28 * data["group"].nunique()), width="container")


def profile_chart(profile: pd.DataFrame) -> alt.Chart:
    """Performance profile: fraction of tasks within τ× of the best, per optimizer."""
    return alt.Chart(profile, title="Performance profile").mark_line(
        interpolate="step-after", strokeWidth=2).encode(
        x=alt.X("tau:Q", title="τ (cost relative to the best on each task)",
                scale=alt.Scale(type="log")),
        y=alt.Y("rho:Q", title="fraction of tasks within τ× of best",
                scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("solver:N", title="optimizer",
                        scale=palette_scale(sorted(profile["solver"].unique()))),
        tooltip=["solver:N", alt.Tooltip("tau:Q", format=".3g"),
                 alt.Tooltip("rho:Q", format=".2f")],
    ).properties(height=300, width="container")
