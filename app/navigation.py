"""The dashboard's pages. A page's url path is stable, so links like ``/study?study=<id>`` last.

Pages are files (``app/pages/*.py``, thin scripts over ``app.views``) so Streamlit's AppTest can
switch to them; paths are relative to ``app/main.py``.
"""

from __future__ import annotations

import streamlit as st

PAGES = {
    "studies": ("pages/studies.py", "Studies", ":material/list:", "studies"),
    "new": ("pages/new_study.py", "New study", ":material/add_circle:", "new"),
    "study": ("pages/study.py", "Study", ":material/monitoring:", "study"),
}


def page(name: str) -> st.Page:
    path, title, icon, url_path = PAGES[name]
    return st.Page(path, title=title, icon=icon, url_path=url_path, default=name == "studies")


def all_pages() -> list[st.Page]:
    return [page(n) for n in PAGES]
