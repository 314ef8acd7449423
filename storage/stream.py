"""The event stream between workers and the recorder, and its wire format.

Workers append events to one Redis stream; the recorder (the only DuckDB writer) reads them
through a consumer group and acknowledges an entry only after its rows are committed. The stream
entry id is the recorder's cursor. One stream keeps a study's registration ahead of its runs'
status and metrics.

Every entry has a single field ``e`` holding one JSON event, of one of the types in
``storage.events`` (study, status, metrics; the lab's lab_job, lab_status, lab_case, matrix).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import redis
from pydantic import BaseModel

from approximant.storage.events import parse_event

STREAM = "approximant:events"
GROUP = "recorder"
TERMINAL = ("finished", "diverged", "failed", "cancelled")
# The same, as an SQL list for ``status IN …`` (fixed words, not user input).
TERMINAL_SQL = "(" + ", ".join(f"'{s}'" for s in TERMINAL) + ")"


# What a lost broker raises (a stopped or restarting server, a network cut, a hung one).
BROKER_ERRORS = (redis.ConnectionError, redis.TimeoutError)


class Outage:
    """A broker outage as one loop sees it: a warning when it starts and a line when it ends,
    however many retries lie between (a line a second helps nobody at 3 a.m.)."""

    def __init__(self, who: str, logger: logging.Logger) -> None:
        self.who, self.log = who, logger
        self.since: float | None = None  # epoch seconds; None while the broker answers

    def lost(self, err: Exception) -> None:
        if self.since is None:
            self.since = time.time()
            self.log.warning("%s: broker unreachable (%s); waiting for it", self.who, err)

    def back(self) -> None:
        if self.since is not None:
            self.log.warning("%s: broker back after %.0f s", self.who, time.time() - self.since)
            self.since = None


def connect(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=30, socket_connect_timeout=5)


class EventStream:
    """Append events (workers, submitters) and read them in a consumer group (the recorder)."""

    def __init__(self, client: redis.Redis, stream: str = STREAM, group: str = GROUP) -> None:
        self.client = client
        self.stream = stream
        self.group = group
        self.dead_letter = f"{stream}:dead"

    # -- producers ---------------------------------------------------------------------------
    def append(self, events: Sequence[BaseModel | dict[str, Any]]) -> None:
        """Append events (``storage.events`` models) in order, in one round trip. A dict is
        checked against its model first, so a misspelt field fails here, at its producer."""
        # None is every optional field's default: left out, it costs no bytes on the wire.
        self.append_unchecked([
            (ev if isinstance(ev, BaseModel) else parse_event(ev)).model_dump_json(
                exclude_none=True) for ev in events])

    def append_unchecked(self, events: Sequence[str | dict[str, Any]]) -> None:
        """Append JSON texts or dicts as they are (tests of what the recorder does with an
        entry that is not an event)."""
        if not events:
            return
        pipe = self.client.pipeline(transaction=False)
        for ev in events:
            text = ev if isinstance(ev, str) else json.dumps(ev, separators=(",", ":"))
            pipe.xadd(self.stream, {"e": text})
        pipe.execute()

    # -- consumer ----------------------------------------------------------------------------
    def ensure_group(self) -> None:
        try:
            self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as err:
            if "BUSYGROUP" not in str(err):
                raise

    def read(
        self, consumer: str, count: int, block_ms: int | None, pending: bool
    ) -> list[tuple[str, dict[str, Any]]]:
        """Entries for ``consumer``: its unacknowledged ones if ``pending``, else new ones."""
        reply = self.client.xreadgroup(
            self.group, consumer, {self.stream: "0" if pending else ">"},
            count=count, block=None if pending else block_ms,
        )
        out = []
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                eid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                raw = fields.get(b"e", fields.get("e")) if fields else None
                out.append((eid, json.loads(raw) if raw is not None else {"type": "empty"}))
        return out

    def ack(self, ids: Iterable[str]) -> None:
        ids = list(ids)
        if not ids:
            return
        pipe = self.client.pipeline(transaction=False)
        pipe.xack(self.stream, self.group, *ids)
        # Acknowledged entries are in DuckDB; deleting them keeps the broker's memory flat.
        pipe.xdel(self.stream, *ids)
        pipe.execute()

    def empty(self) -> bool:
        """Whether no entry waits: the recorder deletes each entry once applied (``ack``), so
        an empty stream has nothing left to apply."""
        return not self.client.xlen(self.stream)

    def park(self, entry_id: str, event: dict[str, Any]) -> None:
        """Move an entry that cannot be applied to the dead-letter stream, then ack it."""
        self.client.xadd(self.dead_letter, {"e": json.dumps(event), "from": entry_id})
        self.ack([entry_id])


def status_change(cur_attempt: int, cur_status: str, attempt: int, status: str) -> str | None:
    """How a status event applies to a run or job now at (cur_attempt, cur_status):
    ``"new"`` (a later attempt starts over), ``"same"`` (this attempt moves on) or None.

    Status only moves forward: an older attempt, or a non-terminal event after the attempt's
    terminal one (a replay), changes nothing.
    """
    if attempt < cur_attempt:
        return None
    if attempt == cur_attempt and cur_status in TERMINAL and status not in TERMINAL:
        return None
    return "new" if attempt > cur_attempt else "same"


def now() -> float:
    return time.time()


def event_time(ev: BaseModel) -> datetime:
    """When an event happened (its producer's clock); now, for an event without a time."""
    ts = getattr(ev, "ts", None)
    return datetime.fromtimestamp(float(ts), UTC) if ts else datetime.now(UTC)
