"""The dashboard process: owns DuckDB, hosts the recorder thread, serves Streamlit.

The services are opened before the Streamlit server starts, so metrics are recorded from the
first second even if no browser is connected yet; page scripts run in this same process and
find the same services through ``app.services.get_services()``.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from app.config import ENV_DATA_DIR
from app.services import get_services
from tasks.broker import ENV_BROKER

MAIN_SCRIPT = str(Path(__file__).resolve().parent / "main.py")
log = logging.getLogger(__name__)


def serve(data_dir: Path, broker_url: str | None, host: str, port: int) -> int:
    os.environ[ENV_DATA_DIR] = str(data_dir)
    if broker_url:
        os.environ[ENV_BROKER] = broker_url
    services = get_services()
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
