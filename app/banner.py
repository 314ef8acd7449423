"""The "broker unreachable since …" banner.

A study page (also the shared view) draws it inside its live fragment, so it appears and goes
away with that refresh; ``app/main.py`` draws it for every other page on each rerun. (A
fragment of its own in the main script would rerun on a timer beside the page's, which leaves
Streamlit's page greyed out and cancels downloads.)
"""

from __future__ import annotations

import time

import streamlit as st

from approximant.app.services import Services

# url paths whose page calls ``broker_banner`` inside its live fragment
LIVE_PAGES = ("study",)


def broker_banner(services: Services) -> None:
    reachable, since = services.broker_state()
    if reachable or since is None:
        return
    down_s = max(0.0, time.time() - since)
    st.error(f"Broker unreachable since {time.strftime('%H:%M:%S', time.localtime(since))} "
             f"({down_s:.0f} s): the figures below are as last recorded. Workers keep their "
             "rows and go on when it is back; nothing needs restarting.",
             icon=":material/cloud_off:")
