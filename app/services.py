"""The dashboard process's shared objects: the DuckDB owner, the recorder, the broker URL.

They are made once per process (the Streamlit server runs page scripts in threads of one
process), so the recorder thread and the database connection outlive page reruns.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from app.config import data_dir
from storage.db import Database
from storage.queries import Queries
from storage.recorder import Recorder, RecorderBusy
from storage.stream import EventStream, connect
from tasks.broker import ENV_BROKER

log = logging.getLogger(__name__)


@dataclass
class Services:
    data_dir: Path
    db: Database
    queries: Queries
    broker_url: str | None
    recorder: Recorder | None
    broker_error: str | None = None

    def refresh(self) -> None:
        """Apply whatever the stream holds now, so a page shows the newest rows."""
        if self.recorder is not None:
            try:
                self.recorder.drain_once()
            except Exception as err:  # the page still renders what DuckDB has
                log.warning("refresh failed: %s", err)

    def await_registration(self, present: Callable[[], bool], tries: int = 10,
                           pause_s: float = 0.2) -> bool:
        """Whether ``present()`` holds, draining the stream between tries for a moment: a page
        opened right after a submission may be ahead of the registration on the stream."""
        if present():
            return True
        for _ in range(tries if self.recorder is not None else 0):
            time.sleep(pause_s)
            self.refresh()
            if present():
                return True
        return False

    def close(self) -> None:
        if self.recorder is not None:
            self.recorder.stop()
            try:
                self.recorder.drain()  # what the workers sent while we were stopping
            except Exception as err:
                log.warning("final drain failed (entries stay in the stream): %s", err)
            self.recorder.close()
            try:
                self.recorder.release()
            except Exception as err:  # the broker may be gone already; the lock then lapses
                log.debug("could not release the recorder lock: %s", err)
        self.db.close()


_lock = threading.Lock()
_services: Services | None = None


def open_services(directory: Path, broker_url: str | None, start_recorder: bool = True) -> Services:
    db = Database.in_dir(directory)
    recorder = None
    error = None
    if broker_url:
        try:
            client = connect(broker_url)
            client.ping()
            recorder = Recorder(db, EventStream(client))
            recorder.acquire()
            if start_recorder:
                recorder.start()
        except RecorderBusy as err:
            recorder = None
            error = f"read-only: {err}"
            log.warning(error)
        except Exception as err:
            recorder = None
            error = f"broker {broker_url} unreachable: {err}"
            log.warning(error)
    else:
        error = "no broker configured: runs cannot be submitted from this dashboard"
    return Services(directory, db, Queries(db), broker_url, recorder, error)


def get_services() -> Services:
    """The process-wide services, opened from the environment on first use."""
    global _services
    with _lock:
        if _services is None:
            _services = open_services(data_dir(), os.environ.get(ENV_BROKER) or None)
        return _services


def set_services(services: Services | None) -> None:
    global _services
    with _lock:
        _services = services
