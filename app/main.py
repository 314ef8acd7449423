"""Streamlit entry point: ``streamlit run app/main.py`` (``approximant up`` does this for you).

Each script run first decides the session's principal (``app.access``); the pages it may open
are the only pages registered for it, so a page it may not open cannot run at all.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

# Streamlit runs this file as a script; make the project's packages importable from a checkout.
_root = str(Path(__file__).resolve().parent.parent)
if _root not in sys.path:
    sys.path.insert(0, _root)

import streamlit as st  # noqa: E402

from app import access  # noqa: E402
from app.navigation import all_pages, every_path  # noqa: E402
from app.services import get_services  # noqa: E402
from app.text import plain  # noqa: E402
from app.views.signin import render_signed_in, render_signin  # noqa: E402
from app.views.study import render_shared  # noqa: E402

BANNER_REFRESH_S = 3.0

st.set_page_config(page_title="Approximant", page_icon=":material/science:", layout="wide")
services = get_services()


@st.fragment(run_every=BANNER_REFRESH_S)
def broker_banner() -> None:
    """A lost broker is said on every page, live, until it is back (pages keep showing what
    DuckDB holds, which would otherwise look like runs that stopped)."""
    reachable, since = services.broker_state()
    if reachable or since is None:
        return
    down_s = max(0.0, time.time() - since)
    st.error(f"Broker unreachable since {time.strftime('%H:%M:%S', time.localtime(since))} "
             f"({down_s:.0f} s): the figures below are as last recorded. Workers keep their "
             "rows and go on when it is back; nothing needs restarting.",
             icon=":material/cloud_off:")


broker_banner()
try:
    who = access.current()
except ValueError as err:  # the operator's access configuration is broken: say so, open nothing
    st.error(f"Access control is misconfigured: {plain(err)}")
    st.stop()
if "token" in st.query_params:
    # A share link shows its study and nothing else: no sidebar, no other pages, whatever path
    # the link names.
    st.navigation(every_path(render_shared, "Shared study"), position="hidden").run()
elif who.is_editor:
    with st.sidebar:
        st.caption(f"Data: {plain(services.data_dir)}")
        if services.broker_error:
            st.warning(plain(services.broker_error))
        render_signed_in(who)
    st.navigation(all_pages()).run()
else:
    st.navigation(every_path(lambda: render_signin(who), "Sign in"), position="hidden").run()
