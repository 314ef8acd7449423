"""Buffered publishing of a run's metric rows and progress onto the event stream.

The training loop calls ``add(rows)`` every step; rows are sent in batches (every
``max_rows`` rows or ``interval_s`` seconds, whichever comes first), each batch followed by a
progress event, so the per-step cost is a list append. An attempt's first rows go at once: a
person who just pressed Run is waiting for the first point, not for the first full second.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import redis
from pydantic import BaseModel

from approximant.engine.settings import current as current_settings
from approximant.storage.events import MetricsEvent, StatusEvent
from approximant.storage.stream import BROKER_ERRORS, TERMINAL, EventStream, Outage, now

log = logging.getLogger(__name__)

PROGRESS_KEY = "approximant:progress:{run_id}"
PROGRESS_TTL_S = 30 * 24 * 3600
# A run's lease: held by the attempt that trains it, renewed by a heartbeat thread every third
# of its life (whatever the training loop is doing: a slow step or a long evaluation does not
# starve it) and at every flush, dropped when the run ends. A second delivery of the same run
# waits for it to lapse (see ``tasks.run.claim``); a run whose lease lapsed lost its worker and
# is queued again (``tasks.run.Reaper``), so this is how long a dead worker's run waits.
LEASE_KEY = "approximant:lease:{run_id}"
# A run's attempts (a Redis counter), and the cancel requests a run polls (their value: when
# they were asked for). Here, with the other keys a run writes, so that a script's client
# (approximant.client) reads them without importing Celery.
ATTEMPT_KEY = "approximant:attempt:{run_id}"
CANCEL_RUN_KEY = "approximant:cancel:run:{run_id}"
CANCEL_STUDY_KEY = "approximant:cancel:study:{study_id}"
# Read once: every attempt of a process renews with the same period.
LEASE_TTL_S = current_settings().lease_s
# How long a broker write waits for an unreachable broker before giving up (None: as long as it
# takes). A run pauses meanwhile and goes on when the broker is back: a restarted embedded
# broker, or a team Redis that is down for a while, costs no run.
BROKER_RETRY_FOR_S: float | None = None
# Progress and lease in one step, unless a later attempt holds the lease: an attempt that lost
# it (its worker was presumed dead and the run handed out again) must not overwrite the live
# attempt's progress. Attempts only grow (a Redis counter), so the latest one wins; a claim's
# lease ("0:claimed") belongs to no attempt yet. KEYS: progress, lease. ARGV: attempt, lease
# value, lease ms, terminal (1/0), progress ttl, then field, value pairs.
_PROGRESS_LUA = """
local lease = redis.call('GET', KEYS[2])
local holder = lease and tonumber(string.match(lease, '^(%d+):'))
if holder and holder > tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
redis.call('EXPIRE', KEYS[1], ARGV[5])
if ARGV[4] == '1' then
  redis.call('DEL', KEYS[2])
else
  redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
end
return 1
"""
# The heartbeat: renew the lease unless a later attempt holds it, or this attempt already
# ended the run (a beat racing the terminal flush must not bring back the lease it dropped:
# a re-run would wait for it to lapse). A missing lease is renewed otherwise: after a broker
# restart that lost it, the live attempt takes it back before any reaper gives up on it.
# KEYS: lease, progress. ARGV: attempt, value, ms, then the terminal statuses.
_RENEW_LUA = """
local lease = redis.call('GET', KEYS[1])
local holder = lease and tonumber(string.match(lease, '^(%d+):'))
if holder and holder > tonumber(ARGV[1]) then return 0 end
local p = redis.call('HMGET', KEYS[2], 'status', 'attempt')
if p[1] and tonumber(p[2]) == tonumber(ARGV[1]) then
  for i = 4, #ARGV do
    if p[1] == ARGV[i] then return 2 end
  end
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""

T = TypeVar("T")


def retrying(write: Callable[[], T], retry_for_s: float | None = BROKER_RETRY_FOR_S,
             what: str = "publisher") -> T:
    """Run a broker call, retrying with back-off while the broker is unreachable, for up to
    ``retry_for_s`` (None: until it answers); then the error propagates.

    Quiet: one warning when an outage starts and one line when it ends, not one per retry.
    """
    deadline = None if retry_for_s is None else time.monotonic() + retry_for_s
    delay, outage = 0.2, Outage(what, log)
    while True:
        try:
            result = write()
        except BROKER_ERRORS as err:
            if deadline is not None and time.monotonic() >= deadline:
                raise
            outage.lost(err)
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
            continue
        outage.back()
        return result


class MetricPublisher:
    def __init__(
        self,
        stream: EventStream,
        run_id: str,
        attempt: int,
        steps: int,
        worker: str = "",
        max_rows: int = 2000,
        interval_s: float = 1.0,
        retry_for_s: float | None = BROKER_RETRY_FOR_S,
    ) -> None:
        self.stream = stream
        self.run_id = run_id
        self.attempt = attempt
        self.steps = steps
        self.worker = worker
        self.max_rows = max_rows
        self.interval_s = interval_s
        self.retry_for_s = retry_for_s
        self._rows: list[list[Any]] = []
        self._last_flush = time.monotonic()
        self.last_step = 0
        self.latest: dict[str, float] = {}
        self.published = 0
        self._beats = 0
        # Set once another attempt holds the run's lease: this one must stop (see _PROGRESS_LUA).
        self.superseded = False
        self._heartbeat: threading.Thread | None = None
        self._stop_beat = threading.Event()

    @property
    def pending(self) -> int:
        """Rows added and not yet sent."""
        return len(self._rows)

    @property
    def last_flush(self) -> float:
        """``time.monotonic()`` of the last send."""
        return self._last_flush

    def add(self, rows: Sequence[dict[str, Any]]) -> None:
        for r in rows:
            self._rows.append([r["step"], r["name"], r["value"], r["wall_s"], r["tokens"]])
        if rows:
            self.last_step = max(self.last_step, int(rows[-1]["step"]))
        first = bool(self._rows) and not self.published
        if first or len(self._rows) >= self.max_rows or (
            time.monotonic() - self._last_flush >= self.interval_s
        ):
            self.flush()

    def status_event(self, status: str, message: str | None = None,
                     info: dict[str, Any] | None = None,
                     resumed_from: dict[str, int] | None = None) -> BaseModel:
        return StatusEvent(run_id=self.run_id, attempt=self.attempt, status=status,
                           step=self.last_step, message=message, worker=self.worker, ts=now(),
                           info=info or None, resumed_from=resumed_from or None)

    def flush(self, status: str = "running", message: str | None = None,
              info: dict[str, Any] | None = None,
              resumed_from: dict[str, int] | None = None) -> None:
        """Send buffered rows then a status event; retried while the broker is unreachable.

        The rows leave the buffer only once sent, so a failure loses nothing that a later
        flush could still deliver.
        """
        rows = self._rows
        for _step, name, value, _w, _t in rows:
            if name in ("train_loss", "val_loss", "val_accuracy"):
                self.latest[name] = value
        # At most max_rows a stream entry: rows held through a long outage go out as many
        # entries, never one too large for the broker.
        events: list[BaseModel] = [
            MetricsEvent(run_id=self.run_id, attempt=self.attempt,
                         rows=rows[i:i + self.max_rows])
            for i in range(0, len(rows), self.max_rows)]
        events.append(self.status_event(status, message, info, resumed_from))
        self.send(events, status)
        self._rows = []
        self.published += len(rows)
        self._last_flush = time.monotonic()

    def send(self, events: list[BaseModel], status: str) -> None:
        """Append ``events`` to the stream and mark progress as ``status`` (with retries)."""

        def both() -> None:
            self.stream.append(events)
            self._set_progress(status)

        self.retrying(both)

    def retrying(self, write: Callable[[], T]) -> T:
        """``retrying`` with this publisher's patience (``retry_for_s``)."""
        return retrying(write, self.retry_for_s, f"run {self.run_id}")

    def _set_progress(self, status: str) -> None:
        fields = {"status": status, "step": self.last_step, "steps": self.steps,
                  "attempt": self.attempt, "ts": repr(now()),
                  **{k: repr(v) for k, v in self.latest.items()}}
        self._beats += 1
        args: list[Any] = [self.attempt, f"{self.attempt}:{self._beats}",
                           int(LEASE_TTL_S * 1000),
                           int(status in TERMINAL), PROGRESS_TTL_S]
        for k, v in fields.items():
            args += [k, v]
        ok = self.stream.client.eval(_PROGRESS_LUA, 2, PROGRESS_KEY.format(run_id=self.run_id),
                                     LEASE_KEY.format(run_id=self.run_id), *args)
        if not ok:
            self._lost_lease()

    def _lost_lease(self) -> None:
        if not self.superseded:
            self.superseded = True
            log.warning("run %s: attempt %d lost its lease to another attempt; stopping",
                        self.run_id, self.attempt)

    # -- heartbeat ---------------------------------------------------------------------------
    def start_heartbeat(self) -> None:
        """Renew the lease from a thread every third of its life until ``stop_heartbeat``."""
        self._stop_beat.clear()
        self._heartbeat = threading.Thread(target=self._beat_loop, daemon=True,
                                           name=f"lease-{self.run_id}")
        self._heartbeat.start()

    def stop_heartbeat(self) -> None:
        self._stop_beat.set()
        if self._heartbeat is not None:
            self._heartbeat.join(5)
            self._heartbeat = None

    def _beat_loop(self) -> None:
        keys = (LEASE_KEY.format(run_id=self.run_id), PROGRESS_KEY.format(run_id=self.run_id))
        while not self._stop_beat.wait(LEASE_TTL_S / 3):
            try:
                ok = self.stream.client.eval(_RENEW_LUA, 2, *keys, self.attempt,
                                             f"{self.attempt}:hb{time.monotonic():.3f}",
                                             int(LEASE_TTL_S * 1000), *TERMINAL)
            except redis.RedisError:
                continue  # the flushes report an outage; the next beat tries again
            if ok == 2:
                return  # this attempt ended the run: nothing left to hold
            if not ok:
                self._lost_lease()
