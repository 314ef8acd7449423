"""Studies: every study in the data directory, newest first."""

from __future__ import annotations

import streamlit as st

from approximant.app.services import get_services


def render() -> None:
    from approximant.app.navigation import page

    st.title("Studies")
    services = get_services()
    services.refresh()
    df = services.queries.studies()
    if df.empty:
        st.info("No studies yet. Start one from **New study**.")
        st.page_link(page("new"), label="New study", icon=":material/add_circle:")
        return
    df = df.assign(
        open=[f"study?study={sid}" for sid in df["study_id"]],
        progress=(df["done"] / df["n_runs"].clip(lower=1)),
    )
    st.dataframe(
        df[["open", "name", "workload", "n_runs", "progress", "running", "queued", "failed",
            "created_at", "study_id"]],
        hide_index=True,
        width="stretch",
        column_config={
            "open": st.column_config.LinkColumn("open", display_text="open ↗"),
            "n_runs": st.column_config.NumberColumn("runs"),
            "progress": st.column_config.ProgressColumn("done", min_value=0, max_value=1),
            "failed": st.column_config.NumberColumn("failed/diverged"),
            "created_at": st.column_config.DatetimeColumn("created", format="YYYY-MM-DD HH:mm"),
        },
        key="studies_table",
    )
    choice = st.selectbox(
        "Study", df["study_id"], format_func=lambda s: f"{df.set_index('study_id').at[s, 'name']}"
        f" ({s})", key="studies_pick",
    )
    if st.button("Open study", key="studies_open"):
        st.switch_page(page("study"), query_params={"study": choice})
