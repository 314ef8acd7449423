"""Streamlit entry point: ``streamlit run app/main.py`` (``approximant up`` does this for you)."""

from __future__ import annotations

import sys
from pathlib import Path

# Streamlit runs this file as a script; make the project's packages importable from a checkout.
_root = str(Path(__file__).resolve().parent.parent)
if _root not in sys.path:
    sys.path.insert(0, _root)

import streamlit as st  # noqa: E402

from app.navigation import all_pages, shared_page  # noqa: E402
from app.services import get_services  # noqa: E402

st.set_page_config(page_title="Approximant", page_icon=":material/science:", layout="wide")
services = get_services()
if "token" in st.query_params:
    # A share link shows its study and nothing else: no sidebar, no other pages.
    st.navigation([shared_page()], position="hidden").run()
else:
    with st.sidebar:
        st.caption(f"Data: `{services.data_dir}`")
        if services.broker_error:
            st.warning(services.broker_error)
    st.navigation(all_pages()).run()
