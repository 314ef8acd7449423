"""Streamlit entry point: ``streamlit run app/main.py`` (``approximant up`` does this for you).

Each script run first decides the session's principal (``app.access``); the pages it may open
are the only pages registered for it, so a page it may not open cannot run at all.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

# Streamlit runs this file as a script; make the project's packages importable from a checkout.
_root = str(Path(__file__).resolve().parent.parent)
if _root not in sys.path:
    sys.path.insert(0, _root)

import streamlit as st  # noqa: E402

from app import access  # noqa: E402
from app.banner import LIVE_PAGES, broker_banner  # noqa: E402
from app.navigation import all_pages, every_path  # noqa: E402
from app.services import get_services  # noqa: E402
from app.text import plain  # noqa: E402
from app.views.signin import render_signed_in, render_signin  # noqa: E402
from app.views.study import render_shared  # noqa: E402

st.set_page_config(page_title="Approximant", page_icon=":material/science:", layout="wide")
services = get_services()
try:
    who = access.current()
except ValueError as err:  # the operator's access configuration is broken: open nothing
    # The details (a file path, a length) are the operator's business, not a visitor's.
    logging.getLogger("approximant.access").error("access control misconfigured: %s", err)
    st.error("Access control is misconfigured on this server; its log says why.")
    st.stop()
if "token" in st.query_params:
    # A share link shows its study and nothing else: no sidebar, no other pages, whatever path
    # the link names.
    pg = st.navigation(every_path(render_shared, "Shared study"), position="hidden")
elif who.is_editor:
    with st.sidebar:
        st.caption(f"Data: {plain(services.data_dir)}")
        if services.broker_error:
            st.warning(plain(services.broker_error))
        render_signed_in(who)
    pg = st.navigation(all_pages())
else:
    pg = st.navigation(every_path(lambda: render_signin(who), "Sign in"), position="hidden")
if who.is_editor and "token" not in st.query_params and pg.url_path not in LIVE_PAGES:
    broker_banner(services)  # a study page shows it in its live part, refreshed with it
pg.run()
