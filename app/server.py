"""The dashboard process: owns DuckDB, hosts the recorder thread, serves Streamlit.

The services are opened before the Streamlit server starts, so metrics are recorded from the
first second even if no browser is connected yet; page scripts run in this same process and
find the same services through ``app.services.get_services()``.

The first script run of a fresh process would import every page's modules (pandas, Altair,
scipy, torch through the optimizer registry: seconds on a busy machine) and build Altair's
schema validator; ``warm_up`` does that before the server answers, so the first visitor does
not wait for it.
"""

from __future__ import annotations

import importlib
import logging
import os
import pkgutil
import sys
import time
from pathlib import Path

from approximant.app.config import ENV_DATA_DIR
from approximant.app.services import get_services
from approximant.tasks.broker import ENV_BROKER

MAIN_SCRIPT = str(Path(__file__).resolve().parent / "main.py")
log = logging.getLogger(__name__)


def warm_up() -> None:
    """Import every page's modules and draw one small chart, off any page's clock."""
    t0 = time.perf_counter()
    import altair as alt
    import pandas as pd

    from approximant.app import views

    for module in pkgutil.iter_modules(views.__path__):
        importlib.import_module(f"approximant.app.views.{module.name}")
    # Altair builds its JSON-schema validator on the first chart it validates.
    alt.Chart(pd.DataFrame({"x": [0.0, 1.0]})).mark_line().encode(x="x:Q", y="x:Q").to_dict()
    log.info("pages warmed up in %.1f s", time.perf_counter() - t0)


def _warm_up_quietly() -> None:
    # Page modules declare Streamlit caches, each saying that no runtime exists yet (it is
    # made with the server): true, and harmless, since a cache takes its storage at first use.
    import streamlit.runtime.caching  # noqa: F401 - makes the loggers below, with their levels

    quiet = [logging.getLogger(f"streamlit.runtime.caching.{api}")
             for api in ("cache_data_api", "cache_resource_api")]
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(logging.ERROR)
    try:
        warm_up()
    except Exception as err:  # a page that cannot import fails on its own run, with its error
        log.warning("warm-up failed: %s", err)
    finally:
        for q, level in zip(quiet, levels, strict=True):
            q.setLevel(level)


def serve(data_dir: Path, broker_url: str | None, host: str, port: int) -> int:
    os.environ[ENV_DATA_DIR] = str(data_dir)
    if broker_url:
        os.environ[ENV_BROKER] = broker_url
    services = get_services()
    # Before the server answers: a visitor who comes at once would otherwise wait for these
    # imports behind a server that already says it is up.
    _warm_up_quietly()
    from streamlit.web import cli as stcli

    sys.argv = [
        "streamlit", "run", MAIN_SCRIPT,
        "--server.port", str(port),
        "--server.address", host,
        "--server.headless", "true",
        "--server.fileWatcherType", "none",
        "--browser.gatherUsageStats", "false",
        "--client.toolbarMode", "minimal",
        # A traceback names server paths and data; the log has it, a viewer needs only that
        # something failed.
        "--client.showErrorDetails", "type",
    ]
    try:
        stcli.main(standalone_mode=False)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    finally:
        services.close()
    return 0
