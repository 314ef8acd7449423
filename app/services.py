"""The dashboard process's shared objects: the DuckDB owner, the recorder, the broker URL.

They are made once per process (the Streamlit server runs page scripts in threads of one
process), so the recorder thread and the database connection outlive page reruns.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis

from approximant.app.config import data_dir
from approximant.engine.settings import current as current_settings
from approximant.storage.db import Database
from approximant.storage.queries import Queries
from approximant.storage.recorder import Recorder, RecorderBusy
from approximant.storage.stream import BROKER_ERRORS, EventStream, connect
from approximant.tasks.broker import masked

log = logging.getLogger(__name__)

# How long one probe of the broker is reused: every page rerun asks, and a probe of a broker
# that does not answer costs up to PROBE_TIMEOUT_S.
PROBE_CACHE_S = 1.5
PROBE_TIMEOUT_S = 0.5
# The recorder's loop comes round every ~0.1 s; this long without a round means one of its
# calls hangs (a broker that accepts connections but does not answer), which no error reports
# until the socket times out. The dashboard then probes for itself.
STALL_S = 3.0
# A page that wants fresh rows waits this long at most for the recorder's drain lock.
REFRESH_WAIT_S = 0.5


@dataclass
class _Probe:
    """The dashboard's last view of the broker (see ``Services.broker_state``)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    checked: float = float("-inf")  # monotonic time of the last probe
    down_since: float | None = None  # epoch seconds
    client: redis.Redis | None = None


@dataclass
class Services:
    data_dir: Path
    db: Database
    queries: Queries
    broker_url: str | None
    recorder: Recorder | None
    broker_error: str | None = None
    _probe: _Probe = field(default_factory=_Probe, repr=False)

    def broker_state(self) -> tuple[bool, float | None]:
        """(reachable, since when it is unreachable in epoch seconds, or None while reachable).

        Cheap on every page rerun: the recorder's loop reports what it sees as it goes; without
        a running recorder (read-only, tests) one probe is reused for ``PROBE_CACHE_S``. With no
        broker configured: ``(False, None)`` (``broker_error`` says why).
        """
        if self.broker_url is None:
            return False, None
        rec = self.recorder
        if rec is not None and rec.running:
            if rec.unreachable_since is not None:
                return False, rec.unreachable_since
            if time.monotonic() - rec.last_round < STALL_S:
                return True, None
        return self._probed()

    def _probed(self) -> tuple[bool, float | None]:
        p = self._probe
        with p.lock:
            if time.monotonic() - p.checked >= PROBE_CACHE_S:
                if p.client is None:
                    p.client = redis.Redis.from_url(
                        self.broker_url, socket_connect_timeout=PROBE_TIMEOUT_S,
                        socket_timeout=PROBE_TIMEOUT_S)
                try:
                    p.client.ping()
                    p.down_since = None
                except redis.RedisError:
                    p.down_since = p.down_since or time.time()
                p.checked = time.monotonic()
            return p.down_since is None, p.down_since

    def refresh(self) -> None:
        """Apply whatever the stream holds now, so a page shows the newest rows."""
        if self.recorder is not None and self.recorder.busy:
            # It found another dashboard recording when the broker came back: read-only now.
            self.broker_error = f"read-only: {self.recorder.busy}"
            self.recorder = None
        if self.recorder is None or (self.recorder.running and not self.broker_state()[0]):
            return  # nothing to apply while the broker is away; the page shows what it has
        try:
            if self.recorder.running and self.recorder.stream.empty():
                # Everything was applied (applied entries are deleted): no need to wait for
                # the loop's blocking read to hand over its lock, up to 0.1 s a page run.
                return
            # Bounded: with a broker that hangs, the recorder's loop holds the lock for as long
            # as its call does, and the page must still draw (and say the broker is away).
            self.recorder.drain_once(lock_timeout=REFRESH_WAIT_S)
        except BROKER_ERRORS as err:  # the page still renders what DuckDB has
            log.debug("refresh: broker unreachable: %s", err)
        except Exception as err:
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
        recorder = Recorder(db, EventStream(connect(broker_url)))
        try:
            recorder.acquire()
        except RecorderBusy as err:
            recorder = None
            error = f"read-only: {err}"
            log.warning(error)
        except BROKER_ERRORS as err:
            if not start_recorder:  # nobody would take the lock later
                db_error = f"broker {masked(broker_url)} unreachable: {err}"
                log.warning(db_error)
                return Services(directory, db, Queries(db), broker_url, None, db_error)
            # A broker that is restarting (``up`` restarts a dead one): record once it answers;
            # the page shows it unreachable meanwhile (``broker_state``).
            log.warning("broker %s unreachable (%s); recording starts when it answers",
                        masked(broker_url), err)
            recorder.lock_pending = True
        except Exception as err:
            recorder = None
            error = f"broker {masked(broker_url)} unreachable: {err}"
            log.warning(error)
        if recorder is not None and start_recorder:
            recorder.start()
    else:
        error = "no broker configured: runs cannot be submitted from this dashboard"
    return Services(directory, db, Queries(db), broker_url, recorder, error)


def get_services() -> Services:
    """The process-wide services, opened from the environment on first use."""
    global _services
    with _lock:
        if _services is None:
            _services = open_services(data_dir(), current_settings().broker_url)
        return _services


def set_services(services: Services | None) -> None:
    global _services
    with _lock:
        _services = services
