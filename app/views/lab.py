"""Approximation lab: configure a benchmark of the spectral maps, run it on a worker, and read
transfer functions, convergence, cost and the Pareto front from the results."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from approximant.app import access, actions
from approximant.app import lab_charts as charts
from approximant.app.labels import MISSING
from approximant.app.services import Services, get_services
from approximant.app.text import plain, plain_lines
from approximant.engine.approx.cases import EDGE_SPECTRA, GPT2_SHAPES, SPECTRA
from approximant.engine.approx.spec import (
    DEFAULT_SHAPES,
    DEFAULT_SPECTRA,
    POLAR_METHODS,
    POWER_METHODS,
    LabSpec,
    method_lines,
    parse_lab,
    parse_method_lines,
)
from approximant.engine.errors import SpecError
from approximant.storage.lab import LabQueries

REFRESH_S = 2.0
EXPORT_WIDTH = 900  # px of an exported SVG/PNG
# Shown in a table cell with no value (Streamlit's own default prints "None").
SPECTRUM_CHOICES = tuple(dict.fromkeys((
    "loguniform:1e-1", "loguniform:1e-2", "loguniform:1e-3", "loguniform:1e-4",
    "loguniform:1e-6", "loguniform:1e-8", "powerlaw:0.5", "powerlaw:1", "powerlaw:2",
    "lowrank:16", "gaussian", "scaled:1e20", "scaled:1e-20",
    # The edge cases every map is tested on (scale at the dtype's ends, rank one, rank-half,
    # zero): offered here so the page can show how each map behaves there.
    *EDGE_SPECTRA,
)))
SHAPE_CHOICES = ("256x256", "1024x256", "512x1024", "1024x1024", "97x131", "8x64x96",
                 *GPT2_SHAPES)
TOLERANCES = (1e-1, 1e-2, 1e-3, 1e-4, 1e-6, 1e-8, 1e-12)


def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _captured_label(row: pd.Series) -> str:
    who = row["label"] if isinstance(row["label"], str) else row["run_id"]
    return f"{who} · step {row['step']} · {row['param']} · {row['kind']} ({row['rows']}×" \
           f"{row['cols']})"


def _captured_ref(cap: pd.DataFrame, matrix_id: str) -> dict[str, str]:
    row = cap.set_index("matrix_id").loc[matrix_id]
    # The label names the case in every chart; the run id's tail keeps two runs apart.
    return {"key": matrix_id,
            "label": f"{row['param']} {row['kind']} @{row['step']} · {row['run_id'][-10:]}"}


# -- the form ---------------------------------------------------------------------------------

def _form(services: Services, lq: LabQueries) -> None:
    """Build a job from widgets; show every problem; submit when valid."""
    c1, c2, c3 = st.columns([2, 1, 1])
    name = c1.text_input("Name", "approximation lab", key="lab.name")
    target = c2.selectbox("Target", ["polar", "power"], key="lab.target",
                          help="polar: U Vᵀ. power: (GGᵀ)^(−c) G = U Σ^(1−2c) Vᵀ.")
    c = c3.number_input("c", value=0.5 if target == "polar" else 2 / 3, step=1 / 12,
                        format="%.4f", key=f"lab.c.{target}", disabled=target == "polar")
    defaults = POLAR_METHODS if target == "polar" else POWER_METHODS
    methods_text = st.text_area(
        "Methods, one per line as `map[option=value,…]`", method_lines(defaults), height=200,
        key=f"lab.methods.{target}",
        help="Maps: " + ", ".join(sorted(_lab_maps())) + ". Iterations are each map's own "
        "option (newton_schulz/kaon_chaos: steps; qdwh: max_iter; freon: max_steps); "
        "schedules: keller, polar_express, cans, classical.",
    )
    s1, s2 = st.columns(2)
    spectra = s1.multiselect("Spectra", SPECTRUM_CHOICES, list(DEFAULT_SPECTRA),
                             key="lab.spectra")
    more_spectra = s1.text_input("More spectra (comma-separated)", "", key="lab.spectra_more",
                                 help="kinds: " + ", ".join(SPECTRA) +
                                 "; e.g. loguniform:1e-12, powerlaw:1.5")
    shapes = s2.multiselect("Shapes", SHAPE_CHOICES, list(DEFAULT_SHAPES), key="lab.shapes")
    more_shapes = s2.text_input("More shapes (comma-separated)", "", key="lab.shapes_more",
                                help="ROWSxCOLS or BATCHxROWSxCOLS, up to 4096 per side")
    cap = lq.captured()
    chosen: list[str] = []
    if not cap.empty:
        labels = {r["matrix_id"]: _captured_label(r) for _, r in cap.iterrows()}
        chosen = st.multiselect("Captured gradient / momentum matrices", list(labels),
                                format_func=labels.get, key="lab.captured")
    else:
        st.caption("No captured matrices yet: set `capture_steps` in a study (TOML) to save "
                   "its gradient and momentum matrices at those steps.")
    d1, d2, d3, d4 = st.columns(4)
    dtypes = d1.multiselect("dtypes", ["float32", "float64", "bfloat16"], ["float32"],
                            key="lab.dtypes")
    repeats = d2.number_input("Timed repeats", 1, 50, 3, key="lab.repeats")
    seed = d3.number_input("Seed", 0, 2**31 - 1, 0, key="lab.seed")
    device = d4.selectbox("Device", ["auto", "cpu", "cuda"], key="lab.device")

    problems: list[str] = []
    try:
        methods = parse_method_lines(methods_text)
    except ValueError as err:
        methods, problems = [], [str(err)]
    data: dict[str, Any] = {
        "name": name, "target": target, "c": 0.5 if target == "polar" else float(c),
        "methods": methods, "spectra": [*spectra, *_split(more_spectra)],
        "shapes": [*shapes, *_split(more_shapes)],
        "captured": [_captured_ref(cap, k) for k in chosen],
        "dtypes": dtypes, "repeats": int(repeats), "seed": int(seed), "device": device,
    }
    spec: LabSpec | None = None
    if not problems:
        try:
            spec = parse_lab(data)
        except SpecError as err:
            problems = str(err).splitlines()
    if problems:
        st.error(plain_lines("\n".join(problems)))
    else:
        n_cases = len(spec.cases()) + len(spec.captured)
        st.info(f"{len(spec.methods)} methods × {n_cases} test matrices × {len(spec.dtypes)} "
                f"dtypes, {spec.repeats} timed repeats each. Job id `{spec.job_id}`.")
    can_run = spec is not None and services.broker_url is not None and \
        services.recorder is not None
    if st.button("Run", type="primary", disabled=not can_run, key="lab.run"):
        matrices = {k.key: lq.captured_matrix(k.key) for k in spec.captured}
        sub = actions.submit_lab(access.current(), services, spec, matrices)
        st.session_state["lab.flash"] = (
            f"Queued lab job {sub.job_id}." if sub.queued
            else f"Job {sub.job_id} was submitted before: showing its results.")
        st.query_params["job"] = sub.job_id
        # The results' job picker keeps its own choice across reruns; drop it so the page
        # follows the job just submitted (named in the URL) rather than the one shown before.
        st.session_state.pop("lab.job", None)
        st.rerun()


def _lab_maps() -> list[str]:
    from approximant.engine.approx.spec import LAB_MAPS

    return list(LAB_MAPS)


# -- results ----------------------------------------------------------------------------------

def _downloads(key: str, df: pd.DataFrame, chart: alt.TopLevelMixin | None = None) -> None:
    """CSV, Parquet, SVG and PNG of a chart, each built on demand on the server (the page
    reruns every 2 s while a job runs; nine of these sit on it).

    The buttons sit side by side at their own width: in equal columns a narrow chart's row
    clipped their labels. ``on_click="ignore"``: a download does not rerun the page (nothing on
    it changes).
    """
    row = st.container(horizontal=True, gap="small", key=f"dl.{key}")
    csv: Callable[[], bytes] = lambda: charts.to_csv(df)  # noqa: E731
    parquet: Callable[[], bytes] = lambda: charts.to_parquet(df)  # noqa: E731
    row.download_button("CSV", csv, f"{key}.csv", "text/csv",
                        key=f"dl.{key}.csv", icon=":material/download:", on_click="ignore")
    row.download_button("Parquet", parquet, f"{key}.parquet",
                        "application/vnd.apache.parquet", key=f"dl.{key}.parquet",
                        icon=":material/download:", on_click="ignore")
    if chart is not None:
        # "container" means nothing off the page: the export gets a fixed width.
        fixed = chart.properties(width=EXPORT_WIDTH)
        svg: Callable[[], bytes] = lambda: charts.chart_svg(fixed)  # noqa: E731
        png: Callable[[], bytes] = lambda: charts.chart_png(fixed)  # noqa: E731
        row.download_button("SVG", svg, f"{key}.svg", "image/svg+xml", key=f"dl.{key}.svg",
                            icon=":material/image:", on_click="ignore")
        row.download_button("PNG", png, f"{key}.png", "image/png", key=f"dl.{key}.png",
                            icon=":material/image:", on_click="ignore")


MAX_POINTS = 4500  # below Altair's 5 000-row guard


def _thin(curves: pd.DataFrame) -> pd.DataFrame:
    """Every k-th point of every curve (ends kept) so a chart stays under ``MAX_POINTS``;
    the download buttons still carry every point."""
    k = -(-len(curves) // MAX_POINTS)
    if k <= 1:
        return curves
    last = curves.groupby(["method", "dtype", "iteration"])["idx"].transform("max")
    return curves[(curves["idx"] % k == 0) | (curves["idx"] == last)]


def _chart(key: str, chart: alt.TopLevelMixin, data: pd.DataFrame) -> None:
    # One chart a row at the page's full width: side by side, long legends left each plot
    # a sliver.
    st.altair_chart(chart, width="stretch", key=f"lab.chart.{key}")
    _downloads(key, data, chart)


@st.cache_data(max_entries=32, show_spinner=False)
def _results(_lq: LabQueries, job_id: str, version: tuple) -> pd.DataFrame:
    return _lq.results(job_id)


def _final_rows(sel: pd.DataFrame) -> pd.DataFrame:
    """The last iteration of each method × dtype on the selected case, cost beside accuracy.

    Times in ms; a value that does not exist (a failed method's error, a band with no σ) is
    missing, shown as ``MISSING``, never as "nan" inside a text cell.
    """
    if sel.empty:
        return sel
    last = sel[sel["iteration"] == sel.groupby(["name", "dtype"])["iteration"].transform("max")]
    out = last.assign(
        band=[f"[{a:.4g}, {b:.4g}]" if pd.notna(a) and pd.notna(b) else None
              for a, b in zip(last["band_min"], last["band_max"], strict=True)],
        wall_ms=last["wall_median_s"] * 1e3,
        spread=[f"{a * 1e3:.3g}–{b * 1e3:.3g}" if pd.notna(a) and pd.notna(b) else None
                for a, b in zip(last["wall_min_s"], last["wall_max_s"], strict=True)],
        peak_mib=last["peak_bytes"] / 2**20,
    )
    return out[["name", "dtype", "iteration", "err_spec", "err_rms", "band", "orth_err",
                "nuclear_frac", "matmuls", "factorisations", "flops", "wall_ms", "spread",
                "gflops", "gemm_frac", "peak_mib", "finite", "method"]]


# Column titles of the result tables: words with units; the method's form text comes last.
COLUMNS = {
    "name": st.column_config.TextColumn("method"),
    "case_id": st.column_config.TextColumn("test matrix"),
    "dtype": st.column_config.TextColumn("dtype"),
    "iteration": st.column_config.NumberColumn("iteration", format="%d"),
    "err_spec": st.column_config.NumberColumn(
        "relative error ‖·‖₂", format="%.2e",
        help="‖X − T‖₂ / ‖T‖₂ against the fp64 SVD reference T"),
    "err_rms": st.column_config.NumberColumn("relative error (RMS)", format="%.2e"),
    "band": st.column_config.TextColumn("output σ band [min, max]"),
    "orth_err": st.column_config.NumberColumn("orthogonality ‖XXᵀ − I‖_F", format="%.2e"),
    "nuclear_frac": st.column_config.NumberColumn(
        "⟨G, X⟩ / ‖G‖_*", format="%.4f", help="share of the nuclear norm the output recovers"),
    "matmuls": st.column_config.NumberColumn("matrix multiplications", format="%d"),
    "factorisations": st.column_config.NumberColumn("factorisations (QR, Cholesky, eigh, SVD)",
                                                    format="%d"),
    "flops": st.column_config.NumberColumn("flops (analytic)", format="%.3g"),
    "wall_ms": st.column_config.NumberColumn("time per call (ms, median)", format="%.3g"),
    "spread": st.column_config.TextColumn("time per call (ms, fastest–slowest)"),
    "gflops": st.column_config.NumberColumn("throughput (GFLOP/s)", format="%.1f"),
    "gemm_frac": st.column_config.NumberColumn(
        "share of GEMM speed", format="%.2f",
        help="throughput over a plain matrix multiplication's on this worker"),
    "peak_mib": st.column_config.NumberColumn("peak extra memory (MiB)", format="%.2f"),
    "finite": st.column_config.CheckboxColumn("finite output"),
    "method": st.column_config.TextColumn("as in the form"),
}


def _table(df: pd.DataFrame, key: str, **column_config: Any) -> None:
    order = ["name", *(c for c in df.columns if c != "name")] if "name" in df else None
    st.dataframe(df, hide_index=True, width="stretch", key=key, placeholder=MISSING,
                 column_order=order, column_config={**COLUMNS, **column_config})


def _named(df: pd.DataFrame, names: dict[str, str]) -> pd.DataFrame:
    """``df`` with a ``name`` column: each method's display name (its label if the job's spec
    does not list it)."""
    return df.assign(name=[names.get(m, m) for m in df["method"]])


def _in_job_order(df: pd.DataFrame, domain: list[str], first: tuple[str, ...] = (),
                  then: tuple[str, ...] = ("dtype",)) -> pd.DataFrame:
    """Rows by ``first``, then the methods in the job's order (the legends' order), then
    ``then``; stored results come sorted by the methods' labels."""
    rank = {n: i for i, n in enumerate(domain)}
    keys = [*first, "_rank", *then]
    return df.assign(_rank=df["name"].map(rank)).sort_values(keys, kind="stable") \
        .drop(columns="_rank").reset_index(drop=True)


def _header(job: dict[str, Any]) -> None:
    info = job["info"] or {}
    st.subheader(plain(job["name"]), anchor=False)
    st.progress(job["cases_done"] / max(1, job["n_cases"]),
                text=f"{job['status']} · {job['cases_done']} of {job['n_cases']} test "
                     f"matrices · attempt {job['attempt']}")
    facts = [job["job_id"]]
    for k in ("device", "torch", "threads", "wall_s"):
        if k in info:
            facts.append(f"{k} {info[k]}")
    # What a worker reports is shown as text, like any other text that did not come from us.
    st.caption(plain(" · ".join(str(f) for f in facts)))
    if info.get("bf16_matmul"):
        st.caption(f"bf16 matmuls on this worker: {plain(info['bf16_matmul'])}")
    for note in info.get("skipped", []) + info.get("failures", []):
        st.warning(plain(note))
    if job["status"] == "failed":
        st.error(plain(job["message"] or "failed"))


def _body(lq: LabQueries, job_id: str) -> None:
    job = lq.job(job_id)
    _header(job)
    res = _results(lq, job_id, lq.data_version(job_id))
    names = charts.method_names(job["spec"])
    domain = list(dict.fromkeys([*names.values(), *(names.get(m, m) for m in res["method"])]))
    res = _in_job_order(_named(res, names), domain, ("case_id",), ("dtype", "iteration"))
    if res.empty:
        st.caption("Results appear here as each test matrix is measured.")
        return
    cases = list(dict.fromkeys(res["case_id"]))
    c1, c2, c3 = st.columns([2, 2, 1])
    case = c1.selectbox("Test matrix", cases, key="lab.case")
    dtypes = c2.multiselect("dtypes", sorted(set(res["dtype"])), sorted(set(res["dtype"])),
                            key="lab.show_dtypes")
    final_only = c3.toggle("final iteration only", value=False, key="lab.final")
    sel = res[(res["case_id"] == case) & res["dtype"].isin(dtypes)]
    meta = lq.cases(job_id)
    m = meta[meta["case_id"] == case]
    if not m.empty:
        row = m.iloc[0]
        st.caption(f"{row['rows']}×{row['cols']}" +
                   (f" × batch {int(row['batch'])}" if pd.notna(row["batch"]) else "") +
                   f" · κ = {row['kappa']:.3g} · ℓ_eff = {row['l_eff']:.3g} "
                   f"(smallest σ of G/‖G‖_F) · σ_max = {row['sigma_max']:.3g} · GEMM "
                   f"{row['gemm_gflops']:.1f} GFLOP/s")

    curves = _named(lq.curves(job_id, "transfer", case), names)
    curves = curves[curves["dtype"].isin(dtypes)]
    if final_only and not curves.empty:
        last = curves.groupby(["method", "dtype"])["iteration"].transform("max")
        curves = curves[curves["iteration"] == last]
    if not curves.empty:
        _chart("transfer", charts.transfer_chart(_thin(curves), domain), curves)
    _chart("error_vs_iteration", charts.error_chart(sel, "iteration", domain), sel)
    _chart("error_vs_flops", charts.error_chart(sel, "flops", domain, log_x=True), sel)
    _chart("error_vs_matmuls", charts.error_chart(sel, "matmuls", domain), sel)
    _chart("error_vs_time", charts.pareto_chart(sel, domain), sel)

    spectrum = _named(lq.curves(job_id, "spectrum", case), names)
    spectrum = spectrum[spectrum["dtype"].isin(dtypes)]
    if not spectrum.empty:
        last = spectrum.groupby(["method", "dtype"])["iteration"].transform("max")
        spectrum = spectrum[spectrum["iteration"] == last]
        _chart("output_spectrum", charts.spectrum_chart(spectrum, domain), spectrum)

    st.subheader("Cost and accuracy at the final iteration", anchor=False)
    final = _in_job_order(_final_rows(sel), domain)
    _table(final, "lab.table.final")
    _downloads("final_iteration", final)

    st.subheader("Iterations to reach a tolerance", anchor=False)
    tol = st.selectbox("tolerance on the relative spectral error", TOLERANCES, index=2,
                       format_func=lambda t: f"{t:g}", key="lab.tol")
    table = _in_job_order(_named(lq.iterations_to(job_id, tol), names), domain, ("case_id",))
    table = table.assign(wall_ms=table["wall_s"] * 1e3)
    _table(table[["case_id", "name", "dtype", "iterations", "matmuls", "wall_ms", "best_err",
                  "method"]],
           "lab.table.tol",
           iterations=st.column_config.NumberColumn(
               "iterations", format="%d", help=f"{MISSING}: never reached"),
           wall_ms=st.column_config.NumberColumn("time per call (ms, median)", format="%.3g"),
           best_err=st.column_config.NumberColumn("best relative error ‖·‖₂", format="%.2e"))
    _downloads("iterations_to_tolerance", table)

    with st.expander("All measurements"):
        _table(res, "lab.table.all")
        _downloads("lab_results", res)
    with st.expander("Spec"):
        st.code(json.dumps(job["spec"], indent=2), language="json")


def _results_section(services: Services, lq: LabQueries) -> None:
    jobs = lq.jobs()
    job_id = st.query_params.get("job")
    if job_id and services.await_registration(lambda: lq.job(job_id) is not None):
        jobs = lq.jobs()  # it may have arrived only now
    if jobs.empty:
        st.info("No lab jobs yet. Configure one under **New job** and press **Run**.")
        return
    ids = list(jobs["job_id"])
    if job_id not in ids:
        if job_id:
            st.error(f"No lab job with id {plain(job_id, 80)} in this dashboard.")
        job_id = ids[0]
    names = jobs.set_index("job_id")
    job_id = st.selectbox("Job", ids, index=ids.index(job_id), key="lab.job",
                          format_func=lambda j: f"{names.at[j, 'name']} · {names.at[j, 'status']}"
                          f" · {j}")
    st.query_params["job"] = job_id
    active = lq.is_active(job_id)
    if active and services.broker_url and st.button("Cancel job", key="lab.cancel"):
        actions.cancel_lab(access.current(), services, job_id)
        st.toast("Cancellation requested: the job stops after its current test matrix.")

    @st.fragment(run_every=REFRESH_S if active else None)
    def live() -> None:
        if not access.current().is_editor:  # signed out or a new password since the page ran
            st.rerun(scope="app")
        if active:
            services.refresh()
        _body(lq, job_id)
        if active and not lq.is_active(job_id):
            st.rerun()

    live()


def render() -> None:
    services = get_services()
    services.refresh()
    lq = LabQueries(services.db)
    st.title("Approximation lab")
    if flash := st.session_state.pop("lab.flash", None):
        st.success(plain(flash))
    results_tab, new_tab = st.tabs(["Results", "New job"])
    with new_tab:
        _form(services, lq)
    with results_tab:
        _results_section(services, lq)
