"""A broker that hangs (accepts connections, answers nothing: a frozen or overloaded team Redis)
is reported by the dashboard while it hangs, and a page's refresh does not wait on it."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import redis

from approximant.app.services import Services
from approximant.storage.db import Database
from approximant.storage.queries import Queries
from approximant.storage.recorder import Recorder
from approximant.storage.stream import EventStream
from approximant.tasks.broker import EmbeddedBroker


def test_a_hung_broker_is_reported_while_it_hangs(tmp_path: Path, wait_for):
    broker = EmbeddedBroker(tmp_path / "b")
    url = broker.start()
    db = Database(tmp_path / "db.duckdb")
    # No socket timeout at all: the recorder's call never returns while the broker is frozen,
    # so the dashboard can only know from the recorder's loop going quiet.
    recorder = Recorder(db, EventStream(redis.Redis.from_url(url, socket_timeout=None)))
    recorder.acquire()
    recorder.start()
    services = Services(tmp_path, db, Queries(db), url, recorder)
    pid = broker._proc.pid
    try:
        wait_for(lambda: services.broker_state() == (True, None), 30, "a healthy broker")
        os.kill(pid, signal.SIGSTOP)
        try:
            reachable, since = wait_for(
                lambda: (s := services.broker_state()) and not s[0] and s, 60,
                "the hang to be reported")
            assert since is not None
            # A page's refresh returns although the recorder's loop is stuck inside its call.
            done = threading.Event()
            threading.Thread(target=lambda: (services.refresh(), done.set()),
                             daemon=True).start()
            assert done.wait(60), "refresh waited on the hung broker"
            assert services.broker_state()[0] is False  # still frozen, still said
        finally:
            os.kill(pid, signal.SIGCONT)
        wait_for(lambda: services.broker_state() == (True, None), 60, "the broker to be back")
    finally:  # a failed assertion must not leave a broker behind
        recorder.stop()
        recorder.close()
        db.close()
        broker.stop()
