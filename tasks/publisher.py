"""Buffered publishing of a run's metric rows and progress onto the event stream.

The training loop calls ``add(rows)`` every step; rows are sent in batches (every
``max_rows`` rows or ``interval_s`` seconds, whichever comes first), each batch followed by a
progress event, so the per-step cost is a list append.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis

from storage.stream import TERMINAL, EventStream, now

log = logging.getLogger(__name__)

PROGRESS_KEY = "approximant:progress:{run_id}"
PROGRESS_TTL_S = 30 * 24 * 3600
# A run's lease: held by the attempt that trains it, renewed at every flush (at least every
# ``interval_s`` while steps run), dropped when the run ends. A second delivery of the same run
# waits for it to lapse (see ``tasks.run.claim``). Long enough to cover a slow step or a long
# evaluation between flushes.
LEASE_KEY = "approximant:lease:{run_id}"
LEASE_TTL_S = 120


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
        retry_for_s: float = 60.0,
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

    def add(self, rows: Sequence[dict[str, Any]]) -> None:
        for r in rows:
            self._rows.append([r["step"], r["name"], r["value"], r["wall_s"], r["tokens"]])
        if rows:
            self.last_step = max(self.last_step, int(rows[-1]["step"]))
        if len(self._rows) >= self.max_rows or (
            time.monotonic() - self._last_flush >= self.interval_s
        ):
            self.flush()

    def status_event(self, status: str, message: str | None = None,
                     info: dict[str, Any] | None = None,
                     resumed_from: dict[str, int] | None = None) -> dict[str, Any]:
        ev = {
            "type": "status", "run_id": self.run_id, "attempt": self.attempt, "status": status,
            "step": self.last_step, "message": message, "worker": self.worker, "ts": now(),
        }
        if info:
            ev["info"] = info
        if resumed_from:
            ev["resumed_from"] = resumed_from
        return ev

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
        events: list[dict[str, Any]] = []
        if rows:
            events.append({"type": "metrics", "run_id": self.run_id, "attempt": self.attempt,
                           "rows": rows})
        events.append(self.status_event(status, message, info, resumed_from))
        self.send(events, status)
        self._rows = []
        self.published += len(rows)
        self._last_flush = time.monotonic()

    def send(self, events: list[dict[str, Any]], status: str) -> None:
        """Append ``events`` to the stream and mark progress as ``status`` (with retries)."""

        def both() -> None:
            self.stream.append(events)
            self._set_progress(status)

        self.retrying(both)

    def retrying(self, write: Callable[[], object]) -> None:
        """Run a broker write, retrying with backoff while the broker is unreachable, for up
        to ``retry_for_s``; then the error propagates (the task fails and is redelivered)."""
        deadline = time.monotonic() + self.retry_for_s
        delay = 0.2
        while True:
            try:
                write()
                return
            except (redis.ConnectionError, redis.TimeoutError):
                if time.monotonic() >= deadline:
                    raise
                log.warning("publisher: broker unreachable, retrying in %.1fs", delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _set_progress(self, status: str) -> None:
        key = PROGRESS_KEY.format(run_id=self.run_id)
        fields = {"status": status, "step": self.last_step, "steps": self.steps,
                  "attempt": self.attempt, "ts": repr(now()),
                  **{k: repr(v) for k, v in self.latest.items()}}
        lease = LEASE_KEY.format(run_id=self.run_id)
        self._beats += 1
        pipe = self.stream.client.pipeline(transaction=False)
        pipe.hset(key, mapping=fields)
        pipe.expire(key, PROGRESS_TTL_S)
        if status in TERMINAL:
            pipe.delete(lease)
        else:
            pipe.set(lease, f"{self.attempt}:{self._beats}", ex=LEASE_TTL_S)
        pipe.execute()
