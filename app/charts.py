"""Altair charts of a study. Inputs are already reduced in SQL by ``storage.analytics``."""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from approximant.app.labels import MISSING, metric_title

# Okabe & Ito's colour-blind-safe set (Color Universal Design), its yellow (too pale on white,
# and a darkened one is orange's twin) replaced by Paul Tol's wine. Beyond eight groups no
# palette stays distinguishable for everyone; tableau20 then at least keeps neighbours apart,
# and the tooltip names the group.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#56B4E9", "#CC79A7", "#000000",
           "#882255"]


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


# Legend symbols at full opacity and line-shaped, whatever the layer's own opacity: a swatch
# as faint as a band's fill cannot be matched to its line.
LINE_LEGEND = {"symbolOpacity": 1.0, "symbolType": "stroke", "symbolStrokeWidth": 4,
               "symbolSize": 240, "labelLimit": 260, "orient": "right"}
# Streamlit fits a chart's whole height (title and axes included) to the spec's height: a row
# per group needs this much room so every y label shows, plus the title and x axis.
ROW_PX, AXIS_PX = 32, 90
SEED_ROWS = 4_000  # per chart: seed lines beyond this are thinned, the payload stays small


def hover_frame(grouped: pd.DataFrame, groups: list[str]) -> tuple[pd.DataFrame, dict[str, str]]:
    """One row per grid cell with every group's centre, band and seed count as text in a
    column of its own (``g0``, ``g1``…, named by position so no group name can break a Vega
    field path), for a hover rule whose tooltip shows every group at one x; "–" where a group
    has no value there. One tooltip per cell instead of one per point: per-point tooltips
    were most of the browser's work on a large study."""
    cols = {g: f"g{i}" for i, g in enumerate(groups)}
    text = grouped.assign(text=[
        MISSING if pd.isna(c) else
        f"{c:.4g}" + ("" if pd.isna(lo) or lo == hi else f"  [{lo:.4g}, {hi:.4g}]") +
        f"  n={int(n)}"
        for c, lo, hi, n in zip(grouped["center"], grouped["lo"], grouped["hi"],
                                grouped["n"].fillna(0), strict=True)])
    wide = text.pivot_table(index="cell", columns="group", values="text", aggfunc="first",
                            observed=True)
    present = [g for g in groups if g in wide.columns]
    wide = wide[present].rename(columns={g: cols[g] for g in present}).fillna(MISSING)
    wide["x"] = grouped.groupby("cell")["x"].mean()
    return wide.reset_index(), {cols[g]: g for g in present}


def thin_seeds(seeds: pd.DataFrame, budget: int = SEED_ROWS) -> pd.DataFrame:
    """Every k-th cell of each run so the seed lines fit ``budget`` rows."""
    if len(seeds) <= budget:
        return seeds
    k = -(-len(seeds) // budget)
    keep = seeds.groupby("run_id", sort=False).cumcount() % k == 0
    return seeds[keep]


def band_chart(grouped: pd.DataFrame, metric: str, x_title: str, log_y: bool = False,
               band_label: str = "± std", show_raw: bool = False,
               x_domain: tuple[float, float] | None = None,
               groups: list[str] | None = None,
               seeds: pd.DataFrame | None = None, hover_rule: bool = True) -> alt.LayerChart:
    """Centre line per group with its seed band; ``n`` (seeds at the point) in the hover
    tooltip and as point opacity, so a band resting on fewer seeds than the rest is visibly
    thinner.
    ``groups``: every group of the study, in order, for colours that do not move.

    Interaction: drag or wheel zooms and pans x; hovering shows a rule with every group's value
    at that x; clicking a group (its line or legend entry) fades the others and draws its seeds
    (``seeds``: one row per run and cell with ``run_id, group, seed, x, value``).
    ``hover_rule=False`` where the groups' cells are not the same steps (curves of different
    metrics on grids of their own)."""
    title = metric_title(metric)
    data = grouped.copy()
    if log_y:  # a log axis cannot show a band reaching zero or below
        data = data[data["center"] > 0]
        data["lo"] = data["lo"].where(data["lo"] > 0, data["center"])
    xs = alt.Scale(domain=list(x_domain), clamp=True) if x_domain else alt.Scale()
    x = alt.X("x:Q", title=x_title, scale=xs)
    y_scale = _y_scale(log_y)
    order = list(groups) if groups else list(dict.fromkeys(data["group"]))
    n_groups = len(order)
    color = alt.Color("group:N", title=None, legend=alt.Legend(**LINE_LEGEND),
                      scale=group_colors(order, n_groups))
    picked = alt.selection_point(name="picked", fields=["group"], bind="legend", on="click",
                                 clear="dblclick")
    hover = alt.selection_point(name="hover", fields=["cell"], nearest=True, on="pointerover",
                                clear="pointerout", empty=False)
    faded = alt.condition(picked, alt.value(1.0), alt.value(0.15))
    base = alt.Chart(data, title=title)
    layers = [
        base.mark_area(opacity=0.18).encode(
            x=x, y=alt.Y("lo:Q", title=title, scale=y_scale), y2="hi:Q", color=color,
            opacity=alt.condition(picked, alt.value(0.18), alt.value(0.03))),
    ]
    if show_raw:
        layers.append(base.mark_line(opacity=0.25, strokeWidth=1).encode(
            x=x, y="raw:Q", color=color))
    if seeds is not None and not seeds.empty:
        seed_data = thin_seeds(seeds)
        if log_y:
            seed_data = seed_data[seed_data["value"] > 0]
        layers.append(alt.Chart(seed_data).mark_line(strokeWidth=1, opacity=0.7).encode(
            x=x, y=alt.Y("value:Q", scale=y_scale), color=color, detail="run_id:N",
            strokeDash=alt.value([4, 2]),
            tooltip=[alt.Tooltip("group:N"), alt.Tooltip("seed:N"),
                     alt.Tooltip("x:Q", title=x_title, format=".4g"),
                     alt.Tooltip("value:Q", title=title, format=".4g")],
        ).transform_filter(alt.ParameterPredicate(param="picked", empty=False)))
    layers.append(base.mark_line(strokeWidth=2).encode(
        x=x, y="center:Q", color=color, opacity=faded).add_params(picked))
    wide, columns = hover_frame(data, order) if hover_rule else (pd.DataFrame(), {})
    if wide.empty:  # nothing to hover (log y left no positive value, or no rule wanted)
        layers.append(base.mark_point(filled=True, size=18).encode(
            x=x, y="center:Q", color=color,
            opacity=alt.Opacity("n:Q", legend=None, scale=alt.Scale(range=[0.15, 0.9]),
                                condition=[{"test": {"not": {"param": "picked"}},
                                            "value": 0.05}])))
    else:
        key = f"centre [{band_label}] n=seeds"
        # The hover selection lives on the points (nearest, by step): the pointer is always
        # over some point's Voronoi cell, whose datum carries its group, so a click there
        # picks that group; the step's every-group text comes in by lookup on the cell.
        layers.append(base.mark_point(filled=True).encode(
            x=x, y="center:Q", color=color,
            size=alt.when(hover).then(alt.value(70)).otherwise(alt.value(18)),
            # Value conditions first, the seed count as the field default (Altair's
            # when-chain cannot mix the two; Vega-Lite can).
            opacity=alt.Opacity("n:Q", legend=None, scale=alt.Scale(range=[0.15, 0.9]),
                                condition=[{"param": "hover", "empty": False, "value": 1.0},
                                           {"test": {"not": {"param": "picked"}},
                                            "value": 0.05}]),
            tooltip=[alt.Tooltip("x:Q", title=x_title, format=".4g"),
                     alt.Tooltip("key:N", title=title)] + [
                alt.Tooltip(f"{col}:N", title=group) for col, group in columns.items()],
        ).transform_lookup(
            lookup="cell",
            from_=alt.LookupData(wide.assign(key=key), key="cell", fields=[*columns, "key"]),
        ).add_params(hover))
        layers.append(alt.Chart(wide).mark_rule(color="#888", strokeWidth=1).encode(
            x=x, opacity=alt.condition(hover, alt.value(0.6), alt.value(0))))
    # Tall enough for one legend row per group: a clipped legend hides which line is which.
    return alt.layer(*layers).properties(height=max(380, 24 * n_groups + 60),
                                         width="container").interactive(bind_y=False)


def lr_chart(points: pd.DataFrame, title: str, log_y: bool = False,
             optimizers: list[str] | None = None) -> alt.LayerChart:
    """Measure against learning rate per optimizer config family, with the seed band; a
    learning rate whose runs all diverged is drawn as a cross above the finite points.
    ``optimizers``: every optimizer of the study in order, for colours that do not move."""
    finite = points[np.isfinite(points["center"].astype(float))]
    top = float(finite["hi"].max()) * 1.1 if not finite.empty else 1.0
    bad = points.loc[~points.index.isin(finite.index)].assign(center=top)
    x = alt.X("lr:Q", title="learning rate", scale=alt.Scale(type="log"))
    color = alt.Color("optimizer:N", title="optimizer", legend=alt.Legend(**LINE_LEGEND),
                      scale=palette_scale(optimizers or list(dict.fromkeys(points["optimizer"]))))
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
        y=alt.Y("group:N", title=None, sort=list(groups) if groups else None,
                axis=alt.Axis(labelLimit=320)),
        color=alt.Color("group:N", legend=None,
                        scale=group_colors(groups, data["group"].nunique())),
        shape=alt.Shape("outcome:N", title=None,
                        scale=alt.Scale(domain=list(labels.values()),
                                        range=["circle", "triangle-right", "diamond"])),
        tooltip=["group:N", "seed:N", alt.Tooltip("shown:N", title=x_title)],
    ).properties(height=ROW_PX * max(3, len(groups or data["group"].unique())) + AXIS_PX,
                 width="container")


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


def forest_chart(table: pd.DataFrame, baseline: str, measure_title: str,
                 groups: list[str], higher_is_better: bool = False) -> alt.LayerChart:
    """Δ against the baseline per group with its 95 % interval (``group, diff, diff_lo,
    diff_hi``), a rule at zero: a bar that crosses zero is no evidence either way. ``groups``:
    every group of the study in order, for rows and colours as everywhere else."""
    data = table.dropna(subset=["diff"])
    y = alt.Y("group:N", title=None, sort=groups, axis=alt.Axis(labelLimit=260))
    color = alt.Color("group:N", legend=None, scale=group_colors(groups, len(groups)))
    tooltip = ["group:N", alt.Tooltip("diff:Q", title="Δ vs baseline", format=".4g"),
               alt.Tooltip("diff_lo:Q", title="95 % CI low", format=".4g"),
               alt.Tooltip("diff_hi:Q", title="95 % CI high", format=".4g")]
    title = alt.Title(f"Δ {measure_title} vs {baseline} (95 % CI)",
                      subtitle="hollow: too few seeds for an interval")
    x_title = f"Δ {measure_title} ({'higher' if higher_is_better else 'lower'} is better)"
    x = alt.X("diff:Q", title=x_title)
    sure = data["diff_lo"].notna()
    return alt.layer(
        alt.Chart(pd.DataFrame({"zero": [0.0]})).mark_rule(color="#888", strokeDash=[4, 3])
        .encode(x="zero:Q"),
        alt.Chart(data[sure], title=title).mark_rule(strokeWidth=3).encode(
            x=alt.X("diff_lo:Q", title=x_title), x2="diff_hi:Q", y=y, color=color,
            tooltip=tooltip),
        alt.Chart(data[sure]).mark_point(filled=True, size=90).encode(
            x=x, y=y, color=color, tooltip=tooltip),
        # A difference with no interval is drawn hollow: a lone dot must not look certain.
        alt.Chart(data[~sure]).mark_point(filled=False, size=90, strokeWidth=2).encode(
            x=x, y=y, color=color, tooltip=tooltip),
    ).properties(height=ROW_PX * max(3, len(groups)) + AXIS_PX, width="container")


def budget_chart(curves: pd.DataFrame, measure_title: str, families: list[str],
                 common_k: int | None = None, log_y: bool = False) -> alt.LayerChart:
    """Expected best ``measure_title`` after k random trials of each family's lr grid, with its
    bootstrap band (``family, k, expected, lo, hi, trials``; families titled, in config order
    for colours that do not move); a dashed rule at ``common_k``, the budget every family
    can be read at."""
    data = curves.copy()
    if log_y:
        data = data[data["expected"] > 0]
        data["lo"] = data["lo"].where(data["lo"] > 0, data["expected"])
    k_max = int(data["k"].max()) if not data.empty else 1
    x = alt.X("k:Q", title="tuning budget k (random trials of the lr grid)",
              scale=alt.Scale(type="log", base=2, domain=[1, max(2, k_max)], nice=False),
              axis=alt.Axis(tickMinStep=1))
    y_scale = _tight_y(log_y)
    color = alt.Color("family:N", title=None, legend=alt.Legend(**LINE_LEGEND),
                      scale=group_colors(families, len(families)))
    picked = alt.selection_point(fields=["family"], bind="legend", on="click")
    tooltip = [alt.Tooltip("family:N", title="optimizer"), alt.Tooltip("k:Q", title="trials k"),
               alt.Tooltip("expected:Q", title=f"expected best {measure_title}", format=".4g"),
               alt.Tooltip("lo:Q", title="bootstrap 95 % low", format=".4g"),
               alt.Tooltip("hi:Q", title="bootstrap 95 % high", format=".4g"),
               alt.Tooltip("trials:Q", title="trials observed")]
    title = f"Expected best {measure_title} at equal tuning budget"
    base = alt.Chart(data, title=title)
    y_title = f"expected best {measure_title} after k trials"
    layers = [
        base.mark_errorband(opacity=0.15).encode(
            x=x, y=alt.Y("lo:Q", title=y_title, scale=y_scale), y2="hi:Q", color=color),
        base.mark_line(strokeWidth=2, point=alt.OverlayMarkDef(size=25, filled=True)).encode(
            x=x, y=alt.Y("expected:Q", title=y_title, scale=y_scale), color=color,
            opacity=alt.condition(picked, alt.value(1.0), alt.value(0.15)),
            tooltip=tooltip).add_params(picked),
    ]
    if common_k is not None:
        layers.append(alt.Chart(pd.DataFrame({"k": [common_k]})).mark_rule(
            color="#888", strokeDash=[4, 3]).encode(
            x="k:Q", tooltip=[alt.Tooltip("k:Q", title="budget every optimizer has")]))
    return alt.layer(*layers).properties(height=max(360, 24 * len(families) + 60),
                                         width="container")


def series_chart(frame: pd.DataFrame, title: str, y_title: str, groups: list[str],
                 log_y: bool = False, band: bool = True) -> alt.LayerChart:
    """Lines of ``center`` against ``x`` per ``group``, with a ``lo``–``hi`` band if ``band``,
    and no point marks: a light figure for a report (an SVG of one path per group, not one
    shape per point)."""
    data = frame.copy()
    if log_y:
        data = data[data["center"] > 0]
        data["lo"] = data["lo"].where(data["lo"] > 0, data["center"])
    color = alt.Color("group:N", title=None, legend=alt.Legend(**LINE_LEGEND),
                      scale=group_colors(groups, len(groups)))
    x = alt.X("x:Q", title="step")
    y_scale = _tight_y(log_y)
    base = alt.Chart(data, title=title)
    bands = [base.mark_errorband(opacity=0.15).encode(
        x=x, y=alt.Y("lo:Q", title=y_title, scale=y_scale), y2="hi:Q", color=color)] \
        if band else []
    return alt.layer(
        *bands,
        base.mark_line(strokeWidth=1.5).encode(
            x=x, y=alt.Y("center:Q", title=y_title, scale=y_scale), color=color,
            tooltip=["group:N", alt.Tooltip("x:Q", title="step"),
                     alt.Tooltip("center:Q", title=y_title, format=".4g")]),
    ).properties(height=max(320, 24 * len(groups) + 60), width="container")


def scatter_chart(frame: pd.DataFrame, title: str, x_title: str, y_title: str,
                  groups: list[str], log_x: bool = False,
                  log_y: bool = False) -> alt.LayerChart:
    """One point per ``group`` at (``x``, ``y``), labelled with ``short`` and coloured as the
    group is everywhere: for "does this predict that" across optimizers."""
    x = alt.X("x:Q", title=x_title, scale=_tight_y(log_x))
    y = alt.Y("y:Q", title=y_title, scale=_tight_y(log_y))
    legend = alt.Legend(symbolType="circle", symbolOpacity=1.0, labelLimit=260, orient="right")
    color = alt.Color("group:N", title=None, legend=legend,
                      scale=group_colors(groups, len(groups)))
    base = alt.Chart(frame, title=title)
    return alt.layer(
        base.mark_point(filled=True, size=90).encode(
            x=x, y=y, color=color,
            tooltip=["group:N", alt.Tooltip("x:Q", title=x_title, format=".4g"),
                     alt.Tooltip("y:Q", title=y_title, format=".4g")]),
        base.mark_text(align="left", dx=7, fontSize=10).encode(x=x, y=y, text="short:N"),
    ).properties(height=360, width="container")


def _tight_y(log: bool) -> alt.Scale:
    """A scale that fits the data: a log scale not widened to whole decades (a loss between
    1.6 and 2.6 would otherwise sit in a sliver of a 1–10 axis), a linear one not forced to 0."""
    return alt.Scale(type="log", nice=False) if log else alt.Scale(zero=False)
