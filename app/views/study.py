"""Study: status and progress of every run, live loss curves, final metrics."""

from __future__ import annotations

import time

import pandas as pd
import streamlit as st

from app.charts import loss_chart
from app.services import get_services
from storage.queries import Queries
from storage.stream import TERMINAL

REFRESH_S = 2.0


@st.cache_data(max_entries=64, show_spinner=False)
def _curves(_q: Queries, study_id: str, version: tuple, names: tuple[str, ...]) -> pd.DataFrame:
    # ``version`` changes whenever the study's data does; it is the cache key, not an input.
    return _q.curves(study_id, list(names))


def _pick_study(q: Queries) -> str | None:
    studies = q.studies()
    if studies.empty:
        st.info("No studies yet. Start one from **New study**.")
        return None
    sid = st.selectbox("Study", studies["study_id"],
                       format_func=lambda s: studies.set_index("study_id").at[s, "name"])
    st.query_params["study"] = sid
    return sid


SILENT_S = 180  # a running run reports every second; this long without a word means trouble


def _status_text(status: str, silent_s: float) -> str:
    if status == "running" and silent_s > SILENT_S:
        # Its worker was stopped or died: the run is redelivered when a worker starts again.
        return f"running? silent {silent_s / 60:.0f} min"
    return status


def _runs_table(runs: pd.DataFrame) -> None:
    columns = ["label", "seed", "status", "progress", "last_step", "train_loss", "val_loss",
               "val_accuracy", "attempt", "message", "run_id"]
    table = runs.assign(
        message=runs["message"].fillna(""),
        status=[_status_text(s, q) for s, q in zip(runs["status"], runs["silent_s"],
                                                    strict=True)],
    )[columns]
    st.dataframe(
        table, hide_index=True, width="stretch", key="runs_table",
        column_config={
            "label": st.column_config.TextColumn("config"),
            "progress": st.column_config.ProgressColumn("progress", min_value=0, max_value=1),
            "last_step": st.column_config.NumberColumn("step"),
            "train_loss": st.column_config.NumberColumn("train loss", format="%.4f"),
            "val_loss": st.column_config.NumberColumn("val loss", format="%.4f"),
            "val_accuracy": st.column_config.NumberColumn("val acc", format="%.3f"),
        },
    )


def _body(q: Queries, study_id: str, log_y: bool) -> bool:
    """Draw the live part; return whether runs are still active."""
    runs = q.runs(study_id)
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
    curves = _curves(q, study_id, q.data_version(study_id), ("train_loss", "val_loss"))
    left, right = st.columns(2)
    with left:
        if (curves["name"] == "train_loss").any():
            st.altair_chart(loss_chart(curves, "train_loss", log_y), width="stretch",
                            key="chart_train")
        else:
            st.caption("Training loss appears here once runs start.")
    with right:
        if (curves["name"] == "val_loss").any():
            st.altair_chart(loss_chart(curves, "val_loss", log_y), width="stretch",
                            key="chart_val")
        else:
            st.caption("Validation loss appears here after the first evaluation.")
    st.subheader("Runs")
    _runs_table(runs)
    return q.is_active(study_id)


def render() -> None:
    services = get_services()
    q = services.queries
    services.refresh()
    study_id = st.query_params.get("study") or _pick_study(q)
    if not study_id:
        return
    study = q.study(study_id)
    for _ in range(10 if study is None and services.recorder is not None else 0):
        # Just submitted: the registration may be a moment behind on the stream.
        time.sleep(0.2)
        services.refresh()
        study = q.study(study_id)
        if study is not None:
            break
    if study is None:
        st.error(f"No study with id `{study_id}` in {services.data_dir}. It may still be "
                 "registering; this page refreshes when it arrives.")
        if services.recorder is not None:
            st.button("Check again", key="check_again")
        return
    if flash := st.session_state.pop("flash", None):
        st.success(flash)
    spec = study["spec"]
    st.title(study["name"])
    opts = ", ".join(sorted({o["name"] for o in spec["optimizers"]}))
    st.caption(
        f"`{study_id}` · workload **{spec['workload']['name']}** · optimizers {opts} · "
        f"seeds {spec['seeds']} · {spec['steps']} steps · "
        f"created {study['created_at']:%Y-%m-%d %H:%M}"
    )
    c1, c2 = st.columns([1, 5])
    log_y = c1.toggle("log y", value=False, key="log_y")
    active = q.is_active(study_id)
    if active and services.broker_url and c2.button("Cancel study", key="cancel"):
        from tasks.submit import cancel_study

        cancel_study(study_id, services.broker_url)
        st.toast("Cancellation requested: runs stop at their next step.")

    @st.fragment(run_every=REFRESH_S if active else None)
    def live() -> None:
        if active:
            services.refresh()
        still_active = _body(q, study_id, log_y)
        if active and not still_active:
            # Redraw the whole page once so the fragment stops refreshing.
            st.rerun()

    live()
    with st.expander("Spec"):
        st.json(spec)
