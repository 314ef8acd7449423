"""Study: live status, seed-aggregated curves with honest bands, comparisons against a baseline,
learning-rate sensitivity, time to target, diagnostics, the runs, and sharing.

Every view setting lives in the URL (``app.view_state``), so a link reproduces the view. The same
page renders read-only for a share token: no cancel, re-run, add-seed or share controls.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pandas as pd
import streamlit as st
from streamlit.runtime.scriptrunner_utils.exceptions import RerunException, StopException

from approximant.app import access, actions, labels, report
from approximant.app.banner import broker_banner
from approximant.app.labels import MISSING
from approximant.app.report import BAND_LABELS, SETTINGS, View, title
from approximant.app.services import Services, get_services
from approximant.app.snapshot import build_snapshot
from approximant.app.text import plain, plain_lines
from approximant.app.view_state import ViewState
from approximant.storage import analytics as an
from approximant.storage import stats
from approximant.storage.events import SCRIPT
from approximant.storage.export import study_parquet
from approximant.storage.queries import Queries
from approximant.storage.stream import TERMINAL

log = logging.getLogger(__name__)

REFRESH_S = 2.0
# While a live study has no metric row yet: a person who just pressed Run waits for the first
# point, and a page with nothing to draw is cheap to refresh.
FIRST_ROWS_S = 0.5
SILENT_S = 180  # a running run reports every second; this long without a word means trouble
RERUNNABLE = ("failed", "cancelled")


# --- cached data: keyed by the study's data version, which changes with every new row -------

@st.cache_data(max_entries=512, show_spinner=False)
def _query(_a: an.Analytics, study_id: str, version: tuple, name: str, args: tuple) -> Any:
    return report.StudyData(_a, study_id).query(name, *args)


@st.cache_data(max_entries=64, show_spinner=False)
def _status_runs(_q: Queries, study_id: str, version: tuple) -> pd.DataFrame:
    return _q.runs(study_id)


class _CachedData(report.StudyData):
    """The report's queries through Streamlit's cache, keyed by the study's data version."""

    def __init__(self, a: an.Analytics, study_id: str, version: tuple) -> None:
        super().__init__(a, study_id)
        self.version = version

    def query(self, name: str, *args: Any) -> Any:
        return _query(self.a, self.study_id, self.version, name, args)


# --- small helpers ----------------------------------------------------------------------------

def _silent_s(updated_at: pd.Series) -> pd.Series:
    """Seconds since each run last reported, on the clock of this rerun: the runs frame is
    cached by data version, which a run that went quiet does not change."""
    return _now() - updated_at.map(lambda t: t.timestamp())


_now = time.time  # one indirection, so a test can move the clock


def _status_text(status: str, silent_s: float) -> str:
    if status == "running" and silent_s > SILENT_S:
        # Its worker was stopped or died: the run is redelivered when a worker starts again.
        return f"running? silent {silent_s / 60:.0f} min"
    return status


# --- page parts -------------------------------------------------------------------------------

@contextmanager
def _tab(container, name: str) -> Iterator[None]:
    """Draw one tab; a failure in it is said there, and the other tabs still draw."""
    with container:
        try:
            yield
        except (RerunException, StopException):
            raise  # Streamlit's own control flow, not a failure
        except Exception as err:
            log.exception("study page: the %s tab failed", name)
            st.error(f"The {name} tab could not be drawn ({type(err).__name__}); the other "
                     "tabs are unaffected, and the dashboard's log has the details.")


def _header(runs: pd.DataFrame) -> None:
    counts = runs["status"].value_counts()
    done = int(sum(counts.get(s, 0) for s in TERMINAL))
    cols = st.columns(5)
    cols[0].metric("runs", len(runs))
    cols[1].metric("finished", int(counts.get("finished", 0)))
    cols[2].metric("running", int(counts.get("running", 0)))
    cols[3].metric("queued", int(counts.get("queued", 0)))
    cols[4].metric("diverged / failed",
                   int(counts.get("diverged", 0)) + int(counts.get("failed", 0)))
    st.progress(done / max(1, len(runs)), text=f"{done} of {len(runs)} runs done")


def _controls(view: ViewState, metrics: list[str], groups: list[str]) -> None:
    """The view settings, in the sidebar so the page itself is status and results."""
    curves = [m for m in metrics if not m.startswith("diag_")]
    defaults = {"metric": "val_loss", "metric2": "train_loss"}
    for key, fallback in defaults.items():
        if curves and view.value(key) not in curves:
            st.session_state[view.key(key)] = fallback if fallback in curves else curves[0]
    options = sorted(set(curves) | {view.value("metric"), view.value("metric2")})
    sb = st.sidebar
    sb.subheader("View")
    sb.selectbox("Metric", options, key=view.key("metric"), format_func=title)
    sb.selectbox("Second metric", options, key=view.key("metric2"), format_func=title)
    sb.selectbox("X axis", list(an.X_AXES), key=view.key("x"),
                 format_func=lambda x: an.X_TITLES[x])
    sb.selectbox("Group by", list(an.GROUP_BYS), key=view.key("group"),
                 format_func=lambda g: {"config": "optimizer config",
                                        "optimizer": "optimizer"}[g])
    c = sb.columns(2)
    c[0].selectbox("Centre", list(stats.CENTERS), key=view.key("center"))
    c[1].selectbox("Band", list(stats.BANDS), key=view.key("band"),
                   format_func=BAND_LABELS.__getitem__)
    sb.slider("Smoothing (EMA per run, before aggregation)", 0.0, 0.95, step=0.05,
              key=view.key("smooth"))
    c = sb.columns(2)
    c[0].number_input("x from", value=None, key=view.key("xmin"), placeholder="auto")
    c[1].number_input("x to", value=None, key=view.key("xmax"), placeholder="auto")
    sb.toggle("log y", key=view.key("logy"))
    sb.toggle("pause live updates", key=view.key("pause"))
    if view.value("baseline") not in groups and groups:
        st.session_state[view.key("baseline")] = groups[0]


def _curves_tab(data: _CachedData, runs: pd.DataFrame, v: View) -> None:
    for metric in dict.fromkeys((v.metric, v.metric2)):
        chart = report.curve_chart(data, runs, v, metric)
        if chart is None:
            st.caption(f"{title(metric)} appears here once runs report it.")
        else:
            st.altair_chart(chart, width="stretch", key=f"chart_{metric}")
    n_seeds = runs.groupby(an.group_key(runs, v.group)).size()
    st.caption(
        f"Lines: {v.center} over seeds; band: {BAND_LABELS[v.band]}; point opacity: seeds at "
        f"that point (groups have {_span(n_seeds)} runs). Diverged seeds leave "
        "the band from the step they diverge and are counted in the comparison table. Bands of "
        "a metric whose values are all positive (a loss) are multiplicative, so they stay above "
        "zero. Hover for every group's value at one step; click a group (its line or legend "
        "entry) to draw its seeds; drag or scroll to pan and zoom the x axis; double-click "
        "clears both." + (" Faint line: before smoothing." if v.smooth else "")
    )


def _compare_tab(data: _CachedData, runs: pd.DataFrame, v: View, view: ViewState,
                 groups: list[str]) -> None:
    c = st.columns([2, 3])
    c[0].radio("Measure", list(an.MEASURES), key=view.key("measure"), horizontal=True,
               format_func=lambda m: {"final": "final value", "best": "best value"}[m])
    names = labels.group_titles(groups)
    c[1].selectbox("Baseline", groups, key=view.key("baseline"), format_func=names.get)
    table = report.compare_table(data, runs, v)
    if table is None:
        st.caption(f"The comparison appears once runs report {title(v.metric).lower()}.")
        return
    # The forest plot right under the table, rows in the same order: thirteen columns need
    # the page's whole width, and a plot squeezed beside them would be too narrow to read.
    st.dataframe(table, hide_index=True, width="stretch", key="group_table",
                 placeholder=MISSING,
                 column_config={c: st.column_config.NumberColumn(format="%.4g")
                                for c in table.columns if table[c].dtype.kind == "f"})
    forest = report.forest_figure(table, v, runs)
    if forest is not None:
        st.altair_chart(forest, width="stretch", key="chart_forest")
    st.caption(
        ("Higher" if v.metric in labels.HIGHER_IS_BETTER else "Lower") +
        " is better. Statistics use finished runs only; finished seeds: n per group. CI: "
        "Student-t 95 % interval of the mean; for a metric whose values are all positive (a "
        "loss) it is laid off on the log scale, c·e^(∓h/c), so it stays positive. Δ: group mean "
        f"− baseline ({plain(labels.config_title(v.baseline))}) mean, with its Welch 95 % "
        "interval (the bars beside the table). Welch p: two-sided Welch t-test of equal means. "
        "P(better): probability, under the same Welch model, that the group's true mean is "
        f"{'above' if v.metric in labels.HIGHER_IS_BETTER else 'below'} the baseline's (1 − "
        "one-sided Welch p), so p = 2·min(P(better), 1 − P(better)). "
        f"Intervals and tests need {stats.MIN_SEEDS} finished seeds a side; below that the "
        "note says \"too few seeds\". Diverged/failed and unfinished runs are counted, not "
        "averaged (docs/analytics.md)."
    )


def _lr_tab(data: _CachedData, runs: pd.DataFrame, v: View, view: ViewState) -> None:
    figures = report.lr_figures(data, runs, v)
    if figures is None:
        st.caption("Learning-rate sensitivity appears once runs report "
                   f"{title(v.metric).lower()}.")
        return
    chart, tune = figures
    st.altair_chart(chart, width="stretch", key="chart_lr")
    st.number_input("Tuneability: within % of the best", min_value=0.1, max_value=1000.0,
                    step=1.0, key=view.key("within"))
    st.dataframe(tune, hide_index=True, key="tune_table", placeholder=MISSING)
    st.caption("Crosses: learning rates at which every seed diverged or failed. Tuneability is "
               "the width of the contiguous lr range around the best whose value stays within "
               f"{v.within:g} % of the best (other grid axes at their best).")


def _budget_tab(data: _CachedData, runs: pd.DataFrame, v: View) -> None:
    figures = report.budget_figures(data, runs, v)
    if figures is None:
        st.caption("The tuning budget appears once runs have ended with "
                   f"{title(v.metric).lower()}.")
        return
    chart, table = figures
    st.altair_chart(chart, width="stretch", key="chart_budget")
    st.dataframe(table, hide_index=True, width="stretch", key="budget_table",
                 placeholder=MISSING,
                 column_config={c: st.column_config.NumberColumn(format="%.4g")
                                for c in table.columns if table[c].dtype.kind == "f"})
    st.caption(
        f"Which optimizer wins when each gets the same number of tuning trials: the expected "
        f"best {v.measure} {title(v.metric).lower()} after k runs drawn at random (with "
        "replacement) from its lr grid × seeds, k = 1 (an average trial) up to as many as it "
        "has (Dodge et al. 2019's expected validation performance). An optimizer is a config "
        "without its lr. Each (lr, seed) run is one trial; a diverged or failed run counts as "
        "the untrained model (the study's worst first value). Band: bootstrap 95 % interval "
        "over the observed trials. The dashed line is the largest budget every optimizer "
        "has; ranks are read there (docs/analytics.md).")


def _ttt_tab(data: _CachedData, runs: pd.DataFrame, v: View, view: ViewState) -> None:
    auto = report.auto_target(data, v.metric)
    if auto is None:
        st.caption(f"Time to target appears once runs report {title(v.metric).lower()}.")
        return
    st.number_input(f"Target {title(v.metric).lower()} (reached when ≤ target)", value=None,
                    key=view.key("target"), placeholder=f"auto: {auto:.4g}", format="%.6g")
    target = v.target if v.target is not None else auto
    chart, summary = report.ttt_figures(data, runs, v, target)
    st.altair_chart(chart, width="stretch", key="chart_ttt")
    st.dataframe(summary, hide_index=True, key="ttt_table", placeholder=MISSING)
    st.caption("Runs that have not reached the target are kept, not dropped: censored (∞) if "
               "they ended, \"not yet\" while they run. A group's median is ∞ when half or "
               "more of its runs are not there.")


def _span(counts: pd.Series) -> str:
    """``3`` or ``2–5``: the range of some counts, as a person would write it."""
    low, high = int(counts.min()), int(counts.max())
    return str(low) if low == high else f"{low}–{high}"


def _diagnostics_tab(data: _CachedData, runs: pd.DataFrame, v: View, metrics: list[str]) -> None:
    diag = report.diagnostic_names(metrics)
    if not diag:
        if not runs.empty and (runs["workload"] == SCRIPT).all():
            st.caption("No diagnostics recorded: a script logs only what it passes to "
                       "`run.log`.")
            return
        st.caption("No diagnostics recorded. Set *diagnostics every* in the study's training "
                   "settings to measure alignment γ, descent potential Φ and the optimal step "
                   "η* (workloads with a full-data loss).")
        return
    default = [m for m in ("diag_gamma", "diag_phi") if m in diag] or diag[:1]
    chosen = st.multiselect("Diagnostics", diag, default=default, key="diag_pick",
                            format_func=labels.metric_title)
    for metric in chosen:
        chart = report.curve_chart(data, runs, v, metric)
        if chart is not None:
            st.altair_chart(chart, width="stretch", key=f"chart_{metric}")
    if "diag_eta_opt" in diag and "lr" in metrics:
        chart = report.eta_chart(data, runs, v)
        if chart is not None:
            st.altair_chart(chart, width="stretch", key="chart_eta")


def _runs_tab(services: Services, who: access.Principal, study: dict, runs: pd.DataFrame,
              status: pd.DataFrame, varying: list[str]) -> None:
    table = report.runs_table(status.assign(status=[
        _status_text(s, q)
        for s, q in zip(status["status"], _silent_s(status["updated_at"]), strict=True)
    ]), runs, varying)
    config = {
        "label": st.column_config.TextColumn("config"),
        "progress": st.column_config.ProgressColumn("progress", min_value=0, max_value=1),
        "last_step": st.column_config.NumberColumn("step"),
        "train_loss": st.column_config.NumberColumn("train loss", format="%.4f"),
        "val_loss": st.column_config.NumberColumn("val loss", format="%.4f"),
        "val_accuracy": st.column_config.NumberColumn("val acc", format="%.3f"),
        "wall_s": st.column_config.NumberColumn(
            "wall time (s)", format="%.1f",
            help="This attempt's time from start to end (to its last report while it runs): "
                 "data loading and evaluation included."),
        "ms_per_step": st.column_config.NumberColumn(
            "ms / step", format="%.1f", help="Wall time over steps done: what a step costs."),
    }
    if not who.is_editor or not services.broker_url:
        st.dataframe(table, hide_index=True, width="stretch", key="runs_table",
                     column_config=config, placeholder=MISSING)
        return
    event = st.dataframe(table, hide_index=True, width="stretch", key="runs_table",
                         column_config=config, on_select="rerun", selection_mode="multi-row",
                         placeholder=MISSING)
    picked = table.iloc[event.selection.rows] if event and event.selection.rows else table[:0]
    _run_actions(services, who, study, runs, status, picked)


def _run_actions(services: Services, who: access.Principal, study: dict, runs: pd.DataFrame,
                 status: pd.DataFrame, picked: pd.DataFrame) -> None:
    from approximant.engine.errors import SpecError
    from approximant.engine.specs import RunSpec, parse_study

    raw = status["status"]
    active = picked[~raw.loc[picked.index].isin(TERMINAL)]
    again = picked[raw.loc[picked.index].isin(RERUNNABLE)]
    c = st.columns([2, 2, 3])
    if c[0].button(f"Cancel selected ({len(active)})", key="cancel_runs",
                   disabled=active.empty):
        actions.cancel_runs(who, services, list(active["run_id"]))
        _after_action(f"Cancellation requested for {len(active)} run(s).")
    if is_script(study):
        c[1].caption("Logged from a script: run the script again to continue a run, with "
                     "another seed to add one. A script sees a cancel as `run.cancelled`.")
        return
    if c[1].button(f"Re-run selected ({len(again)})", key="rerun_runs", disabled=again.empty,
                   help="Failed or cancelled runs train again as a new attempt."):
        specs = [RunSpec.model_validate(s) for s in
                 _specs(runs, again["run_id"])]
        others = status.loc[~raw.isin(TERMINAL) & ~status["run_id"].isin(again["run_id"]),
                            "run_id"].tolist()
        n = actions.rerun_runs(who, services, specs, keep_cancelled=others)
        _after_action(f"{n} run(s) queued again." if n else
                      "Those runs are already queued or running.")
    with c[2].popover("Add seeds to a config"):
        configs = list(dict.fromkeys(status["label"]))
        label = st.selectbox("Config", configs, key="seed_label",
                             format_func=labels.config_title)
        have = sorted(status.loc[status["label"] == label, "seed"])
        suggestion = ", ".join(str(max(have) + 1 + i) for i in range(2)) if have else "0"
        text = st.text_input("Seeds (comma-separated)", value=suggestion, key="seed_new")
        if st.button("Add and queue", key="seed_add"):
            try:
                seeds = _parse_seeds(text)
                spec = parse_study(study["spec"])  # may fail: a workload since removed
                existing = [RunSpec.model_validate(s) for s in
                            _specs(runs, status["run_id"])]
                others = status.loc[~raw.isin(TERMINAL), "run_id"].tolist()
                sub = actions.add_seeds(who, services, spec, existing, label, seeds,
                                        keep_cancelled=others)
            except SpecError as err:
                st.error(plain_lines(err))
            else:
                _after_action(f"{sub.queued} new run(s) of {label} queued." if sub.queued else
                              f"{label} already has seeds {', '.join(map(str, seeds))}.")


def _meta(study: dict, runs: pd.DataFrame) -> str:
    """The line under the title: what the study is and when it was made."""
    spec, created = study["spec"], f"{study['created_at']:%Y-%m-%d %H:%M}"
    if is_script(study):
        # A script study's spec is its first run's; what it holds now is in its runs.
        names = runs["optimizer"] if not runs.empty else []
        seeds = sorted(set(runs["seed"])) if not runs.empty else []
        opts = ", ".join(dict.fromkeys(labels.optimizer_title(o) for o in names))
        return (f"{study['study_id']} · logged from scripts · optimizers {opts or labels.MISSING}"
                f" · seeds {seeds} · created {created}")
    opts = ", ".join(dict.fromkeys(labels.optimizer_title(o["name"]) for o in spec["optimizers"]))
    return (f"{study['study_id']} · workload {spec['workload']['name']} · optimizers {opts} · "
            f"seeds {spec['seeds']} · {spec['steps']} steps · created {created}")


def is_script(study: dict) -> bool:
    """Logged by a training script (approximant.client): no worker can re-run it."""
    return study["spec"].get("source") == SCRIPT


def _after_action(message: str) -> None:
    # The action may have made the study active again: redraw the whole page (not only this
    # fragment) so live refresh, the cancel button and the counts follow.
    st.session_state["flash"] = message
    st.rerun(scope="app")


def _parse_seeds(text: str) -> list[int]:
    from approximant.engine.errors import SpecError

    seeds = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            seeds.append(int(part))
        except ValueError:
            raise SpecError(f"seeds: {part!r} is not a valid int") from None
    if not seeds:
        raise SpecError("seeds: give at least one seed, e.g. 3, 4")
    return seeds


def _specs(runs: pd.DataFrame, run_ids: pd.Series) -> list[dict]:
    """Each run's stored spec, from the runs frame the page already holds."""
    by_id = runs.set_index("run_id")["spec"]
    return [by_id[rid] for rid in run_ids]


def _share(services: Services, who: access.Principal, study: dict, view: ViewState,
           out: dict) -> None:
    from approximant.storage.shares import Shares

    sid = study["study_id"]
    base = str(getattr(st.context, "url", "") or "").split("?")[0].rsplit("/", 1)[0]
    st.markdown("**Permalink** (this view, with its settings)")
    st.code(f"{base}/study?{view.query(study=sid)}", language=None)
    shares = Shares(services.db)
    tokens = shares.of_study(sid)
    st.markdown("**Read-only links** (no cancel, re-run or share controls)")
    for token in tokens["token"]:
        c = st.columns([6, 1])
        c[0].code(f"{base}/shared?{view.query(token=token)}", language=None)
        if c[1].button("Revoke", key=f"revoke_{token}"):
            actions.revoke_share(who, services, token)
            st.rerun()
    if st.button("Create a read-only link", key="share_create"):
        actions.create_share(who, services, sid)
        st.rerun()
    st.markdown("**Downloads**")
    c = st.columns(2)
    name = "".join(ch if ch.isalnum() else "-" for ch in study["name"]).strip("-") or sid
    v = View(**{name: view.value(name) for name in View.__dataclass_fields__})

    def snapshot() -> str:
        # Every chart and table of this view, built when asked: the page draws only the open
        # tab. No st.* here: Streamlit may call this outside the script run.
        figures, tables = report.build(report.StudyData(an.Analytics(services.db), sid),
                                       services.queries, study["spec"], out.get("view", v))
        return build_snapshot(study["name"], out["meta"], figures, tables, study["spec"])

    c[0].download_button(
        "Snapshot (one HTML file, opens offline)", key="snapshot",
        data=snapshot,
        file_name=f"{name}-snapshot.html", mime="text/html",
    )
    c[1].download_button(
        "Raw data (Parquet: every metric row)", key="parquet",
        data=lambda: study_parquet(services.db, sid),
        file_name=f"{name}-metrics.parquet", mime="application/vnd.apache.parquet",
    )
    from approximant.app import reproduction

    st.download_button(
        "Reproduction report (zip: Markdown + SVG figures)", key="repro_report",
        data=lambda: reproduction.zipped(services.db, sid),
        file_name=f"{name}-report.zip", mime="application/zip",
        help="Each claim of 'Muon is Not That Special' this study can test, with its numbers, "
             "figure and verdict (as `approximant report`).",
    )


def _pick_study(q: Queries) -> str | None:
    studies = q.studies()
    if studies.empty:
        st.info("No studies yet. Start one from **New study**.")
        return None
    names = dict(zip(studies["study_id"], studies["name"], strict=True))
    # Option labels are plain text (not Markdown), so names need no escaping here.
    sid = st.selectbox("Study", studies["study_id"], format_func=names.__getitem__)
    st.query_params["study"] = sid
    return sid


def show(services: Services, who: access.Principal, study: dict) -> None:
    """The study page body; read-only unless ``who`` is an editor (the shared view)."""
    readonly = not who.is_editor
    if not who.may_view(study["study_id"]):
        raise access.AccessDenied(f"study {study['study_id']}: not visible to this session")
    q = services.queries
    a = an.Analytics(services.db)
    study_id, spec = study["study_id"], study["spec"]
    view = ViewState(SETTINGS, scope=f"{study_id}:{readonly}")
    view.load()
    st.title(plain(study["name"]), anchor=False)
    cached = _CachedData(a, study_id, q.data_version(study_id))
    runs = cached.runs()
    meta = _meta(study, runs)
    st.caption(plain(meta) + (" · read\\-only view" if readonly else ""))
    # Config order, as the table and every legend: the default baseline is the first config.
    groups = list(dict.fromkeys(an.group_key(runs, view.value("group")))) if not runs.empty \
        else []
    _controls(view, cached.metric_names(), groups)
    view.save()
    active = q.is_active(study_id)
    if active and not readonly and services.broker_url and st.button("Cancel study",
                                                                      key="cancel"):
        actions.cancel_study(who, services, study_id)
        st.toast("Cancellation requested: runs stop at their next step.")
    live = active and not view.value("pause")
    waiting = live and not cached.metric_names()
    # What the snapshot download needs from the live part: the header and the settings in force.
    out: dict = {"meta": meta}

    @st.fragment(run_every=(FIRST_ROWS_S if waiting else REFRESH_S) if live else None)
    def body() -> None:
        # A tab's widgets exist only while it is open, and Streamlit drops the state of a
        # widget it did not draw: put back what was dropped (from the URL or this view's
        # memory) so a baseline or a target survives a look at another tab.
        view.load()
        # Decided again on each refresh of this live part, which runs without the page: a
        # revoked link or a changed password takes effect here too.
        now_who = access.current()
        if not now_who.may_view(study_id):
            st.rerun(scope="app")  # the whole page then shows what this session may see
        broker_banner(services)
        if live:
            services.refresh()
        data = _CachedData(a, study_id, q.data_version(study_id))
        v = View(**{name: view.value(name) for name in View.__dataclass_fields__})
        out["view"] = v  # the settings the snapshot download builds with
        runs = data.runs()
        status = _status_runs(q, study_id, data.version)
        _header(status)
        parts = {
            "Curves": lambda: _curves_tab(data, runs, v),
            "Compare": lambda: _compare_tab(data, runs, v, view, groups),
            "Learning rate": lambda: _lr_tab(data, runs, v, view),
            "Tuning budget": lambda: _budget_tab(data, runs, v),
            "Time to target": lambda: _ttt_tab(data, runs, v, view),
            "Diagnostics": lambda: _diagnostics_tab(data, runs, v, data.metric_names()),
            "Runs": lambda: _runs_tab(services, now_who, study, runs, status,
                                      a.varying_hparams(runs, report.grid_axes(spec))),
        }
        # Only the open tab is computed and sent: the others would cost the server their
        # queries and the browser their charts and tables on every load and refresh.
        # The open tab is in the URL (?tab=…), so a link or a reload opens the same one.
        tabs = st.tabs(list(parts), key="tab", on_change="rerun", bind="query-params")
        for (name, draw), tab in zip(parts.items(), tabs, strict=True):
            if tab.open:
                with _tab(tab, name):
                    draw()
        view.save()  # widgets inside this fragment rerun only the fragment
        if live and not q.is_active(study_id):
            st.rerun()  # redraw the whole page once so the fragment stops refreshing
        if waiting and data.metric_names():
            st.rerun()  # the first rows are in: back to the usual refresh period

    body()
    # Drawn only once opened, like the tabs: their code blocks and JSON viewer are the
    # browser's largest scripts after the charts'.
    if not readonly:
        share = st.expander("Share and export", key="share_open", on_change="rerun")
        if share.open:
            with share:
                _share(services, who, study, view, out)
    spec_box = st.expander("Spec", key="spec_open", on_change="rerun")
    if spec_box.open:
        with spec_box:
            if is_script(study):
                # No spec: each script registered its own run, with its own config.
                st.caption("Logged from scripts: each run's optimizer, config and seed as its "
                           "script gave them.")
                st.json({label: sorted(int(s) for s in g["seed"]) for label, g in
                         cached.runs().groupby("label", sort=False)})
            else:
                st.json(spec)


def _missing(services: Services, what: str) -> None:
    st.error(f"No study with id {plain(what, 80)} in this dashboard. It may still be "
             "registering; this page refreshes when it arrives.")
    if services.recorder is not None:
        st.button("Check again", key="check_again")


def render() -> None:
    services = get_services()
    services.refresh()
    study_id = st.query_params.get("study") or _pick_study(services.queries)
    if not study_id:
        return
    services.await_registration(lambda: services.queries.study(study_id) is not None)
    study = services.queries.study(study_id)
    if study is None:
        _missing(services, study_id)
        return
    if flash := st.session_state.pop("flash", None):
        st.success(plain(flash))
    show(services, access.current(), study)


def render_shared() -> None:
    """The read-only page behind a share token."""
    services = get_services()
    services.refresh()
    who = access.current()
    study = services.queries.study(who.study_id) if who.study_id else None
    if study is None:
        st.error("This share link is unknown or was revoked.")
        return
    show(services, who, study)
