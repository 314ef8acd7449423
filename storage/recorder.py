"""The recorder: drains the event stream into DuckDB, exactly once per row.

Crash safety comes from the order of operations: read (the entry becomes pending for this
consumer) → apply every event of the batch in one DuckDB transaction → commit → acknowledge.
A crash before the commit leaves the entries pending and they are re-read on restart; a crash
after the commit but before the acknowledgement re-applies them, and every write is idempotent
(metrics are unique on run, attempt, step, name; studies and runs on their ids; status updates
only move forward). So no row is lost and none is duplicated.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import duckdb
import pandas as pd

from approximant.storage.db import Database
from approximant.storage.events import (
    SCRIPT,
    LabCaseEvent,
    LabJobEvent,
    LabStatusEvent,
    MatrixEvent,
    MetricsEvent,
    StatusEvent,
    StudyEvent,
    parse_event,
)
from approximant.storage.lab import apply_lab_case, apply_lab_job, apply_lab_status, apply_matrix
from approximant.storage.schema import INSERT_RUN
from approximant.storage.stream import (
    BROKER_ERRORS,
    TERMINAL,
    EventStream,
    Outage,
    event_time,
    status_change,
)

log = logging.getLogger(__name__)

METRIC_COLUMNS = ["run_id", "attempt", "step", "name", "value", "wall_s", "tokens"]
# Errors that say an entry itself is malformed. Anything else (a full disk, a closed database, a
# lost broker) leaves the entries pending, to be applied when the problem is gone.
DATA_ERRORS = (KeyError, TypeError, ValueError, IndexError, duckdb.ConversionException,
               duckdb.ConstraintException, duckdb.InvalidInputException)


LOCK_KEY = "approximant:recorder"
LOCK_TTL_S = 30
# Back-off of the loop while the broker is unreachable: quick to notice it is back, quiet.
RETRY_MIN_S, RETRY_MAX_S = 0.5, 5.0


class RecorderBusy(RuntimeError):
    """Another database already records from this broker."""


class Recorder:
    """Applies the stream to one DuckDB file. One recorder per broker: see ``acquire``."""

    def __init__(self, db: Database, stream: EventStream, consumer: str = "recorder-1") -> None:
        self.db = db
        self.stream = stream
        self.consumer = consumer
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._drain_lock = threading.Lock()
        self._closed = False
        self.applied = 0
        # The owner is the database file on this host, not the process, so a dashboard that
        # crashed can start again at once instead of waiting for its old lock to lapse.
        self.identity = f"{socket.gethostname()}:{db.path.resolve()}"
        self._lock_renewed = 0.0
        # Take the lock in the loop, once the broker answers (it was unreachable at start).
        self.lock_pending = False
        self.outage = Outage("recorder", log)
        # When the loop last came round (monotonic): a call that hangs reports no error, only
        # this growing old (see app.services.Services.broker_state).
        self.last_round = time.monotonic()
        self.busy: str | None = None  # why this recorder gave up: another one records

    def acquire(self) -> None:
        """Become the broker's only recorder, or raise ``RecorderBusy`` naming the holder.

        Two recorders in one consumer group would each get a share of the entries, leaving two
        databases with half a study each.
        """
        client = self.stream.client
        if client.set(LOCK_KEY, self.identity, nx=True, ex=LOCK_TTL_S):
            self._lock_renewed = time.monotonic()
            return
        holder = client.get(LOCK_KEY)
        if holder is not None and holder.decode() == self.identity:
            client.expire(LOCK_KEY, LOCK_TTL_S)
            self._lock_renewed = time.monotonic()
            return
        who = holder.decode() if holder else "?"
        raise RecorderBusy(
            f"another dashboard already records from this broker ({who}); its database has "
            "the studies. Use that dashboard, or another broker"
        )

    def _renew(self) -> None:
        if self.lock_pending:
            self.acquire()
            self.lock_pending = False
        elif self._lock_renewed and time.monotonic() - self._lock_renewed > LOCK_TTL_S / 3:
            self.acquire()

    def release(self) -> None:
        client = self.stream.client
        holder = client.get(LOCK_KEY)
        if holder is not None and holder.decode() == self.identity:
            client.delete(LOCK_KEY)
        self._lock_renewed = 0.0

    # -- one batch ---------------------------------------------------------------------------
    def drain_once(self, count: int = 1000, block_ms: int | None = None,
                   lock_timeout: float | None = None) -> int:
        """Apply this consumer's pending entries, then up to ``count`` new ones; return how many.

        Safe to call from several threads (the loop and a page that wants fresh data now).
        With ``lock_timeout``, give up (0) if another thread's drain holds the lock that long:
        it is applying the stream already.
        """
        if not self._drain_lock.acquire(timeout=-1 if lock_timeout is None else lock_timeout):
            return 0
        try:
            return self._drain_locked(count, block_ms)
        finally:
            self._drain_lock.release()

    def _drain_locked(self, count: int, block_ms: int | None) -> int:
        self.stream.ensure_group()
        done = 0
        batch = self.stream.read(self.consumer, count, None, pending=True)
        if batch:
            done += self._apply_safely(batch)
        batch = self.stream.read(self.consumer, count, block_ms, pending=False)
        if batch:
            done += self._apply_safely(batch)
        return done

    def _apply_safely(self, batch: list[tuple[str, dict[str, Any]]]) -> int:
        if self._closed:
            raise RuntimeError("recorder is stopped")
        try:
            return self._apply(batch)
        except DATA_ERRORS:
            if len(batch) == 1:
                # A poison entry would block the stream forever: park it in the dead-letter
                # stream (nothing is dropped) and move on.
                eid, ev = batch[0]
                log.exception("recorder: entry %s cannot be applied; moved to %s", eid,
                              self.stream.dead_letter)
                self.stream.park(eid, ev)
                return 1
            log.exception("recorder: batch of %d failed; applying one by one", len(batch))
            return sum(self._apply_safely([item]) for item in batch)

    def drain(self, max_batches: int = 1000) -> int:
        """Drain until the stream has nothing new (bounded by ``max_batches``)."""
        total = 0
        for _ in range(max_batches):
            n = self.drain_once()
            total += n
            if n == 0:
                break
        return total

    def _apply(self, batch: list[tuple[str, dict[str, Any]]]) -> int:
        pending = _Batch(fetch=self.stream.client.get)
        with self.db.write() as cur:
            for _eid, raw in batch:
                ev = parse_event(raw)  # ValidationError (a ValueError): parked, see above
                HANDLERS[type(ev)](cur, ev, pending)
            pending.write_metrics(cur)
        if pending.stored_blobs:
            # Committed: the broker's copy of each captured matrix is no longer needed (a
            # replayed event finds the row and skips the missing bytes).
            self.stream.client.delete(*pending.stored_blobs)
        self.stream.ack(eid for eid, _ in batch)
        self.applied += len(batch)
        return len(batch)

    # -- background loop ---------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="approximant-recorder",
                                        daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        delay = RETRY_MIN_S
        while not self._stop.is_set():
            self.last_round = time.monotonic()
            try:
                self._renew()
                # Short blocks: a page that wants fresh rows waits for this lock at most that.
                self.drain_once(block_ms=100)
            except BROKER_ERRORS as err:
                # Entries stay pending in the broker: one line per outage, then quiet retries.
                self.outage.lost(err)
                self._stop.wait(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            except RecorderBusy as err:
                self.busy = str(err)
                log.warning("recorder: stopped recording: %s", err)
                return
            except Exception:  # e.g. a full disk: entries stay pending, retried
                log.exception("recorder: batch failed; retrying")
                self._stop.wait(1.0)
                continue
            delay = RETRY_MIN_S
            self.outage.back()

    @property
    def unreachable_since(self) -> float | None:
        """Epoch seconds since which the loop cannot reach the broker; None while it can."""
        return self.outage.since

    @property
    def running(self) -> bool:
        """Whether the background loop runs (its ``unreachable_since`` is then current)."""
        return self._thread is not None and self._thread.is_alive()

    def close(self) -> None:
        """No more batches: the database is about to close (entries stay in the stream)."""
        self.stop()
        with self._drain_lock:
            self._closed = True

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None


# -- applying each event type ----------------------------------------------------------------

@dataclass
class _Batch:
    """What a batch gathers while its events are applied: metric rows (written together at the
    end, or before an event that reads them) and the broker keys of matrices now stored."""

    fetch: Callable[[str], bytes | None]
    metric_rows: list[tuple] = field(default_factory=list)
    stored_blobs: list[str] = field(default_factory=list)

    def write_metrics(self, cur) -> None:
        if not self.metric_rows:
            return
        df = pd.DataFrame(self.metric_rows, columns=METRIC_COLUMNS)
        # A batch may itself repeat a row (a publisher retry); keep the first copy.
        df = df.drop_duplicates(subset=["run_id", "attempt", "step", "name"])
        cur.register("incoming_metrics", df)
        cur.execute(
            "INSERT OR IGNORE INTO metrics SELECT run_id, attempt, step, name, value, "
            "wall_s, tokens FROM incoming_metrics"
        )
        cur.unregister("incoming_metrics")
        self.metric_rows = []


def _metrics(cur, ev: MetricsEvent, batch: _Batch) -> None:
    batch.metric_rows.extend((ev.run_id, ev.attempt, *row) for row in ev.rows)


def _study(cur, ev: StudyEvent, batch: _Batch) -> None:
    ts = event_time(ev)
    spec = ev.spec
    cur.execute(
        "INSERT OR IGNORE INTO studies VALUES (?, ?, ?, ?, ?, ?)",
        [ev.study_id, spec["name"], spec["workload"]["name"], json.dumps(spec), len(ev.runs),
         ts],
    )
    # A script study (approximant.client) grows one run per script: each event lists only
    # its own run, which goes after the runs already there.
    script = spec.get("source") == SCRIPT
    if script:
        kind = cur.execute("SELECT workload FROM studies WHERE study_id = ?",
                           [ev.study_id]).fetchone()
        if kind is not None and kind[0] != SCRIPT:
            raise ValueError(f"study {ev.study_id}: a script's run for a study that is not "
                             "logged from scripts")
    first = cur.execute("SELECT count(*) FROM runs WHERE study_id = ?",
                        [ev.study_id]).fetchone()[0] if script else 0
    rows = [
        (r["run_id"], ev.study_id, first + i, r["label"], r["optimizer"], r["seed"],
         json.dumps(r["hparams"]), json.dumps(r), r["steps"], "queued", 0, 0, None, None,
         None, ts, None, None, ts)
        for i, r in enumerate(ev.runs)
    ]
    cur.executemany(INSERT_RUN, rows)
    if script:
        cur.execute("UPDATE studies SET n_runs = (SELECT count(*) FROM runs "
                    "WHERE study_id = ?) WHERE study_id = ?", [ev.study_id] * 2)


def _status(cur, ev: StatusEvent, batch: _Batch) -> None:
    if ev.resumed_from is not None:
        # It copies rows that may be in this very batch: write them first.
        batch.write_metrics(cur)
    ts = event_time(ev)
    status, attempt, step = ev.status, ev.attempt, ev.step
    row = cur.execute(
        "SELECT attempt, status FROM runs WHERE run_id = ?", [ev.run_id]
    ).fetchone()
    if row is None:
        log.warning("recorder: status for unknown run %s", ev.run_id)
        return
    cur_attempt, cur_status = row
    if ev.requeued:
        # A re-run asked for: it moves the ended attempt back to "queued" (or to "failed"
        # when it could not be queued), and nothing else; the attempt that then trains the
        # run takes over with its own events.
        if attempt == cur_attempt and (cur_status in TERMINAL or cur_status == "queued"):
            cur.execute("UPDATE runs SET status = ?, message = ?, updated_at = ? "
                        "WHERE run_id = ?", [status, ev.message, ts, ev.run_id])
        return
    change = status_change(cur_attempt, cur_status, attempt, status)
    if change is None:
        return
    if change == "new":
        cur.execute(
            "UPDATE runs SET attempt = ?, status = ?, last_step = ?, message = ?, worker = ?, "
            "started_at = ?, finished_at = NULL, updated_at = ? WHERE run_id = ?",
            [attempt, status, step, ev.message, ev.worker, ts, ts, ev.run_id],
        )
    else:
        cur.execute(
            "UPDATE runs SET status = ?, last_step = greatest(last_step, ?), "
            "message = coalesce(?, message), worker = coalesce(?, worker), "
            "info = coalesce(?, info), updated_at = ? WHERE run_id = ?",
            [status, step, ev.message, ev.worker,
             json.dumps(ev.info) if ev.info else None, ts, ev.run_id],
        )
    if status in TERMINAL:
        cur.execute(
            "UPDATE runs SET finished_at = ? WHERE run_id = ?", [ts, ev.run_id]
        )
    resumed = ev.resumed_from
    if resumed is not None and resumed.attempt < attempt:
        # The attempt continues an earlier one from a checkpoint: it owns that attempt's
        # rows up to the checkpoint as well (those were on the stream before the
        # checkpoint existed, so they are recorded by now). Replays insert nothing new.
        cur.execute(
            "INSERT OR IGNORE INTO metrics SELECT run_id, ?, step, name, value, wall_s, "
            "tokens FROM metrics WHERE run_id = ? AND attempt = ? AND step <= ?",
            [attempt, ev.run_id, resumed.attempt, resumed.step],
        )


def _matrix(cur, ev: MatrixEvent, batch: _Batch) -> None:
    apply_matrix(cur, ev, batch.fetch)
    # Stored now or before (a replay after a crash between the commit and the delete): the
    # broker's copy is no longer needed either way.
    batch.stored_blobs.append(ev.blob)


# One handler per event type: a new type is a model in storage.events and a line here.
HANDLERS: dict[type, Callable[[Any, Any, _Batch], None]] = {
    StudyEvent: _study,
    StatusEvent: _status,
    MetricsEvent: _metrics,
    LabJobEvent: lambda cur, ev, batch: apply_lab_job(cur, ev),
    LabStatusEvent: lambda cur, ev, batch: apply_lab_status(cur, ev),
    LabCaseEvent: lambda cur, ev, batch: apply_lab_case(cur, ev),
    MatrixEvent: _matrix,
}
