"""Altair charts of an approximation-lab job, and their export (SVG/PNG/CSV/Parquet).

Inputs come from ``storage.lab.LabQueries`` already reduced in SQL (≤ 64 points per curve), so a
chart carries a few thousand points at most. SVG and PNG are rendered on the server with
vl-convert (its own bundled Vega, no network), besides the chart's own action menu.

Every chart colours a method by its display name (:func:`method_name`) over one fixed domain,
the job's methods in the order the job lists them, so a method keeps its colour from chart to
chart and while others have not reported yet.
"""

from __future__ import annotations

import io
import math
from typing import Any

import altair as alt
import pandas as pd

from approximant.app.charts import palette_scale
from approximant.app.labels import GLYPHS
from approximant.engine.approx.methods import POWER_MAPS

ERROR_TITLE = "relative error ‖·‖₂ (fp64 SVD reference)"
ERROR_SUBTITLE = ("‖X − T‖₂ / ‖T‖₂: spectral-norm distance of the output X from the target T "
                  "computed by an fp64 SVD")
TIME_TITLE = "time per call (ms, median of repeats)"
FRONT_COLOR = "#767676"  # grey: the palette's black is a method's colour
LEGEND_COLUMNS = 4
# Log-axis labels at 1, 2 and 5 of each decade where a decade is tall or wide enough, else at
# powers of ten only (a label on every tick ran into its neighbours, and the overlap rule then
# dropped the powers of ten first), written as people write them: 0.001 … 1000 in full, 1e-8
# beyond.
_MANTISSA = "round(datum.value / pow(10, floor(log(datum.value) / LN10 + 1e-9)) * 100) / 100"
PX_PER_DECADE_FOR_125 = 90
TRANSFER_PX, ERROR_PX, PARETO_PX = 340, 300, 320  # plot heights
X_PX = 700  # the least width of a plot at full width on a 1400 px page (the sidebar open)


def log_axis(values: pd.Series, length_px: int, fmt: str | None = None) -> alt.Axis:
    """A log axis over ``values`` drawn ``length_px`` long (at least); ``fmt``: one d3 format
    for every label (``"~s"``: 10M, 20M)."""
    positive = values[values > 0]
    if len(positive) == 0 or math.log10(positive.max() / positive.min()) < 1.5:
        # Within a decade or so Vega's own ticks (0.6, 0.7, 0.8) are the ones to label.
        return alt.Axis(format=fmt or "~g", labelOverlap="greedy", labelSeparation=6)
    # The decades a nice domain would span: an upper bound for either kind of domain.
    decades = math.ceil(math.log10(positive.max())) - math.floor(math.log10(positive.min()))
    steps = "[1, 2, 5]" if decades * PX_PER_DECADE_FOR_125 <= length_px else "[1]"
    text = (f"format(datum.value, '{fmt}')" if fmt else
            "datum.value >= 0.001 && datum.value < 10000 ? format(datum.value, '~g') "
            ": format(datum.value, '.0e')")
    return alt.Axis(labelExpr=f"indexof({steps}, {_MANTISSA}) < 0 ? '' : {text}",
                    labelOverlap="greedy", labelSeparation=6)


def log_scale(nice: bool = False) -> alt.Scale:
    """``nice``: the domain reaches the enclosing powers of ten (on an error axis, 1 at the
    top); on the x axes that left up to half the plot empty, so they end at the data, padded
    to keep the extreme points off the frame."""
    return alt.Scale(type="log", nice=True) if nice else \
        alt.Scale(type="log", nice=False, padding=10)


# -- method names as people write them --------------------------------------------------------

MAP_NAMES = {
    "newton_schulz": "Newton–Schulz", "qdwh": "QDWH", "freon": "Freon",
    "gram_eigh": "Gram eigh", "spectral_power": "SVD power", "svd_polar": "SVD polar",
    "kaon_chaos": "Kaon chaotic map", "kaon_iid": "Kaon i.i.d. σ", "truncated_sgd": "TruncatedSGD",
}
SCHEDULE_NAMES = {"keller": "Keller", "polar_express": "Polar Express", "cans": "CANS",
                  "classical": "classical"}
_SYMBOLS = {"c": "c", "delta": "δ", "l0": "ℓ₀", "eps": "ε", "tol": "tol", "low": "low",
            "high": "high", "norm_bound": "norm bound"}


def fraction_text(c: float) -> str:
    """``c`` as the study page writes it (``app.labels``): ⅔ for 0.6666…, ½, ¼; whole numbers
    as they are; anything else to four significant digits (0.3, 0.4167)."""
    for frac, glyph in GLYPHS.items():
        if abs(c - float(frac)) < 5e-5:  # 0.6667 typed into the form is ⅔, as on that page
            return glyph
    return str(round(c)) if float(c).is_integer() else f"{c:.4g}"


def _value(key: str, v: Any) -> str:
    if isinstance(v, bool):
        return "on" if v else "off"
    if key == "c" and isinstance(v, int | float):
        return fraction_text(float(v))
    return f"{v:g}" if isinstance(v, float) else str(v)


def method_name(map_name: str, options: dict[str, Any], c: float | None = None) -> str:
    """A lab method as people write it: ``Newton–Schulz (Keller ×5)``, ``Freon (c = ⅔)``.

    ``c`` is the job's power, shown for the maps that take it. Every option given is shown, so
    two methods of one job never share a name (a job refuses two identical methods).
    """
    opts = dict(options)
    parts: list[str] = []
    if map_name == "newton_schulz":
        schedule = str(opts.pop("schedule", "keller"))
        steps = opts.pop("steps", None)
        if steps is None:
            steps = _schedule_steps(schedule)
        head = SCHEDULE_NAMES.get(schedule, schedule)
        parts.append(f"{head} ×{steps}" if steps is not None else head)
    elif map_name == "kaon_chaos" and "steps" in opts:
        parts.append(f"×{opts.pop('steps')}")
    elif map_name == "truncated_sgd" and "fraction" in opts:
        parts.append(f"top {float(opts.pop('fraction')) * 100:g}% zeroed")
    elif map_name == "kaon_iid" and "distribution" in opts:
        parts.append(str(opts.pop("distribution")))
    if map_name in POWER_MAPS:  # the job's c is theirs unless the method sets its own
        power = opts.pop("c", c)
        if power is not None:
            parts.append(f"c = {_value('c', power)}")
    for bound, unit in (("max_iter", "iterations"), ("max_steps", "steps")):
        if bound in opts:
            parts.append(f"≤ {opts.pop(bound)} {unit}")
    parts += [f"{_SYMBOLS.get(k, k)} = {_value(k, v)}" for k, v in sorted(opts.items())]
    head = MAP_NAMES.get(map_name, map_name)
    return f"{head} ({', '.join(parts)})" if parts else head


def _schedule_steps(schedule: str) -> int | None:
    from approximant.engine.spectral.newton_schulz import newton_schulz_rows

    try:
        return len(newton_schulz_rows(schedule, None))
    except ValueError:
        return None


def method_names(spec: dict[str, Any]) -> dict[str, str]:
    """Each method's label (as stored with its results) → its display name, in the job's order.

    ``spec`` is the job's spec as stored (``LabSpec.model_dump(mode="json")``).
    """
    from approximant.engine.approx.spec import LabMethod

    c = spec.get("c")
    out: dict[str, str] = {}
    for m in spec.get("methods", []):
        method = LabMethod.model_validate(m)
        name = method_name(method.map, dict(method.options), c)
        # ``newton_schulz`` and ``newton_schulz[schedule=keller,steps=5]`` are one method
        # written twice: the label keeps their colours (and legend entries) apart.
        out[method.label] = f"{name} · {method.label}" if name in out.values() else name
    return out


# -- charts -----------------------------------------------------------------------------------

def method_color(domain: list[str]) -> alt.Color:
    """Colour by display name over the job's whole method list, its legend above the plot (at
    full width a legend on the right takes a quarter of it; one below is far from the title)."""
    return alt.Color(
        "name:N", title=None, scale=palette_scale(domain),
        legend=alt.Legend(orient="top", columns=min(LEGEND_COLUMNS, max(1, len(domain))),
                          labelLimit=320, symbolType="stroke", symbolStrokeWidth=3,
                          symbolOpacity=1, columnPadding=18),
    )


def _dtype_legend(data: pd.DataFrame, **symbol: Any) -> alt.Legend | None:
    """On the right, where two short entries cost little width (beside the methods' legend on
    top it ran off the chart); none when there is only one dtype to tell apart."""
    return alt.Legend(orient="right", **symbol) if data["dtype"].nunique() > 1 else None


def _dtype_dash(data: pd.DataFrame) -> alt.StrokeDash:
    # Drawn as a stroke: a line with points otherwise shows a dot, which hides the dashes.
    return alt.StrokeDash("dtype:N", title="dtype", legend=_dtype_legend(
        data, symbolType="stroke", symbolStrokeWidth=2, symbolStrokeColor="#444444"))


def _tooltips(*extra: alt.Tooltip) -> list[alt.Tooltip]:
    return [alt.Tooltip("name:N", title="method"), alt.Tooltip("method:N", title="as in the form"),
            alt.Tooltip("dtype:N"), alt.Tooltip("iteration:Q"), *extra]


# Fit the width to the page, keep the height for the plot itself: Streamlit's default ("fit")
# counts title and legend rows into the height, which left a 60 px plot under a long legend.
FIT_WIDTH = alt.AutoSizeParams(type="fit-x", contains="padding")


def _title(text: str, subtitle: str | None = None) -> alt.TitleParams:
    # offset: Streamlit's theme puts 26 px between a title and a legend on top.
    return alt.TitleParams(text, subtitle=subtitle or alt.Undefined, anchor="start",
                           subtitleColor="#555555", offset=8)


def transfer_chart(curves: pd.DataFrame, domain: list[str], log_y: bool = True) -> alt.Chart:
    """φ(σ): output value on each input singular direction against σ/σ_max, log–log.

    One line per method × dtype × iteration; later iterations are drawn more opaque, so a
    method's convergence reads left to right as its curves lift towards the target.
    """
    data = curves[curves["y"] > 0] if log_y else curves
    yscale = log_scale(nice=True) if log_y else alt.Scale(zero=False)
    return (
        alt.Chart(data, title=_title("Transfer function φ(σ)",
                                     "later iterations drawn darker"))
        .mark_line(strokeWidth=1.4)
        .encode(
            x=alt.X("x:Q", title="input singular value σ / σ_max", scale=log_scale(),
                    axis=log_axis(data["x"], X_PX)),
            y=alt.Y("y:Q", title="output φ(σ)", scale=yscale,
                    axis=log_axis(data["y"], TRANSFER_PX) if log_y
                    else alt.Axis(labelOverlap=True)),
            color=method_color(domain),
            strokeDash=_dtype_dash(data),
            opacity=alt.Opacity("iteration:Q", scale=alt.Scale(range=[0.15, 1.0]),
                                legend=None),
            detail="iteration:N",
            tooltip=_tooltips(alt.Tooltip("x:Q", title="σ/σ_max", format=".3g"),
                              alt.Tooltip("y:Q", title="φ", format=".4g")),
        )
        .properties(height=TRANSFER_PX, width="container", autosize=FIT_WIDTH)
        .interactive()
    )


ERROR_X = {"iteration": "iteration", "matmuls": "matrix multiplications",
           "flops": "floating-point operations (analytic count)"}


def error_chart(results: pd.DataFrame, x: str, domain: list[str],
                log_x: bool = False) -> alt.LayerChart:
    """Relative spectral error against ``x`` (``iteration``, ``matmuls`` or ``flops``), one line
    per method × dtype."""
    data = results[results["err_spec"] > 0].dropna(subset=["err_spec"])
    x_title = ERROR_X[x]
    # "~s": 10M, 20M instead of 10,000,000, which overlapped its neighbours.
    axis = log_axis(data[x], X_PX, "~s" if x == "flops" else None) if log_x else \
        alt.Axis(format="~s" if x == "flops" else "d", tickMinStep=1, labelOverlap="greedy")
    xscale = log_scale() if log_x else alt.Scale(zero=False, nice=False, padding=10)
    base = alt.Chart(data).encode(
        x=alt.X(f"{x}:Q", title=x_title, scale=xscale, axis=axis),
        y=alt.Y("err_spec:Q", title=ERROR_TITLE, scale=log_scale(nice=True),
                axis=log_axis(data["err_spec"], ERROR_PX)),
        color=method_color(domain),
    )
    # Points in a layer of their own: drawn on the line (point=True), they made the dtype
    # legend's symbols dots, which hide the dashes it is there to explain.
    return (
        alt.layer(
            base.mark_line(strokeWidth=1.6).encode(strokeDash=_dtype_dash(data)),
            base.mark_point(filled=True, size=28, opacity=1).encode(
                detail="dtype:N",
                tooltip=_tooltips(alt.Tooltip(f"{x}:Q", title=x_title, format=".4~s"),
                                  alt.Tooltip("err_spec:Q", title="relative error",
                                              format=".3g"))),
            title=_title(f"Error vs {x_title}", ERROR_SUBTITLE))
        .properties(height=ERROR_PX, width="container", autosize=FIT_WIDTH)
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


def _in_ms(df: pd.DataFrame) -> pd.DataFrame:
    return df.assign(wall_median_ms=df["wall_median_s"] * 1e3, wall_min_ms=df["wall_min_s"] * 1e3,
                     wall_max_ms=df["wall_max_s"] * 1e3)


def pareto_chart(results: pd.DataFrame, domain: list[str]) -> alt.LayerChart:
    """Error against median time per call (bars: min–max over repeats); the Pareto front per
    dtype as a dashed grey step line."""
    data = _in_ms(results[results["err_spec"] > 0].dropna(subset=["err_spec", "wall_median_s"]))
    front = _in_ms(pareto_front(data))
    base = alt.Chart(data)
    x = alt.X("wall_median_ms:Q", title=TIME_TITLE, scale=log_scale(),
              axis=log_axis(data["wall_median_ms"], X_PX))
    y = alt.Y("err_spec:Q", title=ERROR_TITLE, scale=log_scale(nice=True),
              axis=log_axis(data["err_spec"], PARETO_PX))
    color = method_color(domain)
    points = base.mark_point(filled=True, size=45).encode(
        x=x, y=y, color=color, shape=alt.Shape("dtype:N", title="dtype",
                                               legend=_dtype_legend(data)),
        tooltip=_tooltips(alt.Tooltip("wall_median_ms:Q", title="median ms", format=".3g"),
                          alt.Tooltip("wall_min_ms:Q", title="fastest ms", format=".3g"),
                          alt.Tooltip("wall_max_ms:Q", title="slowest ms", format=".3g"),
                          alt.Tooltip("err_spec:Q", title="relative error", format=".3g"),
                          alt.Tooltip("gemm_frac:Q", title="share of GEMM speed",
                                      format=".2f")),
    )
    spread = base.mark_rule(opacity=0.5).encode(
        x="wall_min_ms:Q", x2="wall_max_ms:Q", y=y, color=color)
    line = alt.Chart(front).mark_line(interpolate="step-after", color=FRONT_COLOR,
                                      strokeDash=[5, 3], strokeWidth=1.2).encode(
        x=x, y=y, detail="dtype:N")
    return (
        alt.layer(spread, points, line, title=_title(
            "Error vs time per call",
            "dashed grey: the Pareto front (nothing is both faster and more accurate); "
            "bars: fastest–slowest repeat"))
        .properties(height=PARETO_PX, width="container", autosize=FIT_WIDTH)
        .interactive()
    )


def spectrum_chart(spec_pts: pd.DataFrame, domain: list[str]) -> alt.Chart:
    """The output's singular values at the final iteration, one strip per method (and dtype).

    Each stored quantile is an equal share of the singular values, so where ticks crowd is where
    the spectrum sits; a polar method's ticks all lie on 1.
    """
    data = spec_pts[spec_pts["y"] > 0]
    rows = max(1, data[["name", "dtype"]].drop_duplicates().shape[0])
    shown = data["dtype"].nunique() > 1
    return (
        alt.Chart(data, title=_title("Output singular values (final iteration)",
                                     "one tick per quantile: ticks crowd where the spectrum "
                                     "sits"))
        .mark_tick(thickness=1.5, opacity=0.7)
        .encode(
            x=alt.X("y:Q", title="output singular value σ", scale=log_scale(),
                    axis=log_axis(data["y"], X_PX)),
            y=alt.Y("name:N", title=None, sort=domain, axis=alt.Axis(labelLimit=320)),
            yOffset=alt.YOffset("dtype:N") if shown else alt.Undefined,
            color=alt.Color("name:N", scale=palette_scale(domain), legend=None),
            tooltip=[alt.Tooltip("name:N", title="method"), alt.Tooltip("dtype:N"),
                     alt.Tooltip("y:Q", title="σ", format=".4g")],
        )
        .properties(height=max(120, 26 * rows), width="container",
                    autosize=FIT_WIDTH)
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
