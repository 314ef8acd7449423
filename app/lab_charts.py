"""Altair charts of an approximation-lab job, and their export (SVG/PNG/CSV/Parquet).

Inputs come from ``storage.lab.LabQueries`` already reduced in SQL (≤ 64 points per curve), so a
chart carries a few thousand points at most. SVG and PNG are rendered on the server with
vl-convert (its own bundled Vega, no network), besides the chart's own action menu.
"""

from __future__ import annotations

import io

import altair as alt
import pandas as pd

ERROR_TITLE = "relative spectral error ‖X − T‖₂ / ‖T‖₂"

# Method labels are long (``newton_schulz[schedule=polar_express,steps=8]``): keep them whole.
METHOD_COLOR = alt.Color("method:N", legend=alt.Legend(labelLimit=360))


def _tooltips(*extra: alt.Tooltip) -> list[alt.Tooltip]:
    return [alt.Tooltip("method:N"), alt.Tooltip("dtype:N"), alt.Tooltip("iteration:Q"),
            *extra]


def transfer_chart(curves: pd.DataFrame, log_y: bool = True) -> alt.Chart:
    """φ(σ): output value on each input singular direction against σ/σ_max, log–log.

    One line per method × dtype × iteration; later iterations are drawn more opaque, so a
    method's convergence reads left to right as its curves lift towards the target.
    """
    data = curves[curves["y"] > 0] if log_y else curves
    yscale = alt.Scale(type="log") if log_y else alt.Scale(zero=False)
    return (
        alt.Chart(data, title="Transfer function φ(σ)")
        .mark_line(strokeWidth=1.4)
        .encode(
            x=alt.X("x:Q", title="input σ / σ_max", scale=alt.Scale(type="log")),
            y=alt.Y("y:Q", title="output φ(σ)", scale=yscale),
            color=METHOD_COLOR,
            strokeDash=alt.StrokeDash("dtype:N"),
            opacity=alt.Opacity("iteration:Q", scale=alt.Scale(range=[0.15, 1.0]),
                                legend=None),
            detail="iteration:N",
            tooltip=_tooltips(alt.Tooltip("x:Q", title="σ/σ_max", format=".3g"),
                              alt.Tooltip("y:Q", title="φ", format=".4g")),
        )
        .properties(height=340, width="container")
        .interactive()
    )


def error_chart(results: pd.DataFrame, x: str, x_title: str, log_x: bool = False) -> alt.Chart:
    """Spectral error against ``x`` (iteration, matmuls, flops), one line per method × dtype."""
    data = results[results["err_spec"] > 0].dropna(subset=["err_spec"])
    xscale = alt.Scale(type="log") if log_x else alt.Scale(zero=False)
    return (
        alt.Chart(data, title=f"Error vs {x_title}")
        .mark_line(point=True, strokeWidth=1.4)
        .encode(
            x=alt.X(f"{x}:Q", title=x_title, scale=xscale),
            y=alt.Y("err_spec:Q", title=ERROR_TITLE, scale=alt.Scale(type="log")),
            color=METHOD_COLOR,
            strokeDash=alt.StrokeDash("dtype:N"),
            tooltip=_tooltips(alt.Tooltip(f"{x}:Q", format=".4g"),
                              alt.Tooltip("err_spec:Q", format=".3g")),
        )
        .properties(height=300, width="container")
        .interactive()
    )


def pareto_front(results: pd.DataFrame) -> pd.DataFrame:
    """Per dtype, the (wall time, error) points no other point beats on both."""
    keep = []
    data = results.dropna(subset=["err_spec", "wall_median_s"])
    for _dtype, g in data.groupby("dtype"):
        best = float("inf")
        for idx, row in g.sort_values(["wall_median_s", "err_spec"]).iterrows():
            if row["err_spec"] < best:
                best = row["err_spec"]
                keep.append(idx)
    return data.loc[keep].sort_values(["dtype", "wall_median_s"])


def pareto_chart(results: pd.DataFrame) -> alt.Chart:
    """Error against median wall time (bars: min–max over repeats); the Pareto front per dtype
    as a step line."""
    data = results[results["err_spec"] > 0].dropna(subset=["err_spec", "wall_median_s"])
    front = pareto_front(data)
    base = alt.Chart(data)
    x = alt.X("wall_median_s:Q", title="median wall time (s)", scale=alt.Scale(type="log"))
    y = alt.Y("err_spec:Q", title=ERROR_TITLE, scale=alt.Scale(type="log"))
    points = base.mark_point(filled=True, size=40).encode(
        x=x, y=y, color=METHOD_COLOR, shape=alt.Shape("dtype:N"),
        tooltip=_tooltips(alt.Tooltip("wall_median_s:Q", title="median s", format=".3g"),
                          alt.Tooltip("wall_min_s:Q", title="min s", format=".3g"),
                          alt.Tooltip("wall_max_s:Q", title="max s", format=".3g"),
                          alt.Tooltip("err_spec:Q", format=".3g"),
                          alt.Tooltip("gemm_frac:Q", title="GEMM fraction", format=".2f")),
    )
    spread = base.mark_rule(opacity=0.5).encode(
        x="wall_min_s:Q", x2="wall_max_s:Q", y=y, color=METHOD_COLOR)
    line = alt.Chart(front).mark_line(interpolate="step-after", color="black",
                                      strokeWidth=1).encode(
        x=x, y=y, detail="dtype:N")
    return (
        alt.layer(spread, points, line, title="Error vs wall time (Pareto front in black)")
        .properties(height=320, width="container")
        .interactive()
    )


def spectrum_chart(spec_pts: pd.DataFrame) -> alt.Chart:
    """Histogram of output singular values, one panel per method, dtypes overlaid (each stored
    quantile is an equal share of the singular values)."""
    data = spec_pts[spec_pts["y"] > 0]
    return (
        alt.Chart(data)
        .mark_bar(opacity=0.6)
        .encode(
            x=alt.X("y:Q", bin=alt.Bin(maxbins=30), title="output σ"),
            y=alt.Y("count():Q", title="quantiles", stack=None),
            color=alt.Color("dtype:N"),
            tooltip=[alt.Tooltip("method:N"), alt.Tooltip("dtype:N"), alt.Tooltip("count():Q")],
        )
        .properties(height=120, width=200)
        .facet(facet=alt.Facet("method:N", title=None), columns=4,
               title="Output spectrum (final iteration)")
        .resolve_scale(x="independent")
    )


# -- export -----------------------------------------------------------------------------------

def chart_svg(chart: alt.Chart) -> bytes:
    import vl_convert as vlc

    return vlc.vegalite_to_svg(chart.to_json()).encode()


def chart_png(chart: alt.Chart) -> bytes:
    import vl_convert as vlc

    return vlc.vegalite_to_png(chart.to_json(), scale=2)


def to_parquet(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()


def to_csv(df: pd.DataFrame) -> bytes:
    return df.to_csv(index=False).encode()
