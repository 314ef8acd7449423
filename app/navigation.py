"""The dashboard's pages. A page's url path is stable, so links like ``/study?study=<id>`` last.

Pages are files (``app/screens/*.py``, thin scripts over ``app.views``) so Streamlit's AppTest can
switch to them; paths are relative to ``app/main.py``. The folder must not be called ``pages/``:
Streamlit would also scan it as a legacy multipage app and resolve a first deep link by file name,
showing "Page not found" for ``/new``.
"""

from __future__ import annotations

import streamlit as st

PAGES = {
    "studies": ("screens/studies.py", "Studies", ":material/list:", "studies"),
    "new": ("screens/new_study.py", "New study", ":material/add_circle:", "new"),
    "study": ("screens/study.py", "Study", ":material/monitoring:", "study"),
    "profiles": ("screens/profiles.py", "Profiles", ":material/leaderboard:", "profiles"),
    "lab": ("screens/lab.py", "Approximation lab", ":material/function:", "lab"),
}
# The path a share link names (``/shared?token=…``); any other path shows its study too.
SHARED_PATH = "shared"


def page(name: str) -> st.Page:
    path, title, icon, url_path = PAGES[name]
    # The first page listed is the default one, served at "/".
    return st.Page(path, title=title, icon=icon, url_path=url_path)


def all_pages() -> list[st.Page]:
    return [page(n) for n in PAGES]


def every_path(render, title: str) -> list[st.Page]:
    """``render`` under every url path the dashboard has, so any link a session opens lands on
    it (a sign-in form, a share link's study) instead of Streamlit's "Page not found" modal.

    The first is the default page, served at "/".
    """
    paths = [url for *_, url in PAGES.values()] + [SHARED_PATH]
    return [st.Page(render, title=title, url_path=url, default=i == 0)
            for i, url in enumerate(paths)]
