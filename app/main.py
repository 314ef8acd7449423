"""Streamlit entry point, run by ``approximant up`` (or ``streamlit run app/main.py`` from a
checkout installed with ``pip install -e .``: its imports are ``approximant.*``).

Each script run first decides the session's principal (``app.access``); the pages it may open
are the only pages registered for it, so a page it may not open cannot run at all.
"""

from __future__ import annotations

import logging

import streamlit as st

from approximant.app import access
from approximant.app.banner import LIVE_PAGES, broker_banner
from approximant.app.navigation import all_pages, every_path
from approximant.app.services import get_services
from approximant.app.text import plain
from approximant.app.views.signin import render_signed_in, render_signin
from approximant.app.views.study import render_shared

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
