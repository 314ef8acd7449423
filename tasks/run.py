"""The run task: train one run and publish everything it measures.

Each delivery of a run is a new *attempt* (a Redis counter), so a run delivered again after a
worker died writes a fresh series instead of mixing with the partial one; the recorder's
uniqueness on (run, attempt, step, name) makes a replayed batch harmless.

A delivery first *claims* the run: a run that already ended is not trained again, and while
another attempt holds the run's lease (it is alive and publishing) a second delivery of the same
message — the broker's visibility timeout passing on a long run — is dropped instead of
training the run twice. After a worker died, its lease lapses within ``LEASE_TTL_S``; every
worker's reaper (``Reaper``) then queues the run again (the broker itself would redeliver it
only after its visibility timeout, an hour), and the next attempt resumes from the checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import traceback
from typing import Any

from celery import Task
from celery.signals import worker_ready, worker_shutdown

from approximant.engine.specs import RunSpec
from approximant.engine.training import checkpoint_bytes, load_checkpoint, train
from approximant.storage.events import LabStatusEvent, StatusEvent
from approximant.storage.stream import BROKER_ERRORS, TERMINAL, EventStream, Outage, connect, now
from approximant.tasks.celery_app import DEFAULT_CHECKPOINT_S, app, checkpoint_every_s
from approximant.tasks.publisher import (
    ATTEMPT_KEY,
    CANCEL_RUN_KEY,
    CANCEL_STUDY_KEY,
    LEASE_KEY,
    LEASE_TTL_S,
    PROGRESS_KEY,
    PROGRESS_TTL_S,
    MetricPublisher,
    retrying,
)

log = logging.getLogger(__name__)

CANCEL_POLL_S = 0.5
SKIPPED_KEY = "approximant:skipped"  # hash "run_id:verdict" → deliveries not trained
# The latest checkpoint of a run that has not ended, in the broker so that whichever worker
# gets the run again (any machine in team mode) resumes it instead of starting over.
CHECKPOINT_KEY = "approximant:checkpoint:{run_id}"
# The first checkpoint comes this soon, then the gap doubles up to APPROXIMANT_CHECKPOINT_S:
# a short run is protected too, a long one pays for few checkpoints.
FIRST_CHECKPOINT_S = 5.0
# What the reaper needs to queue a lost run again: the ids queued and not yet seen ended, and
# each one's task name and payload (written by ``tasks.submit.queue_once``).
ACTIVE_KEY = "approximant:active"
DELIVERY_KEY = "approximant:delivery:{item_id}"

_clients: dict[tuple[int, str], Any] = {}


def _client(url: str):
    # One client per process and URL, made after the pool forked.
    key = (os.getpid(), url)
    if key not in _clients:
        _clients[key] = connect(url)
    return _clients[key]


class CancelFlag:
    """Polls the cancel keys at most every ``CANCEL_POLL_S`` seconds (cheap per step).

    An unreachable broker reads as "not cancelled" (the run goes on; its publisher waits for
    the broker at the next flush), polled less often while it lasts.
    """

    def __init__(self, client, keys: list[str]) -> None:
        self.client = client
        self.keys = keys
        self._next = 0.0
        self._backoff = CANCEL_POLL_S

    def __call__(self) -> bool:
        t = time.monotonic()
        if t < self._next:
            return False
        try:
            cancelled = bool(self.client.exists(*self.keys))
        except BROKER_ERRORS:
            self._backoff = min(self._backoff * 2, 10.0)
            self._next = t + self._backoff
            return False
        self._backoff = CANCEL_POLL_S
        self._next = t + CANCEL_POLL_S
        return cancelled


# The claim in one step: a run that ended is "ended"; else the lease is taken if free (and the
# run marked claimed with it), else the holder's lease value comes back. Separate round trips
# would let the live attempt end in between and a duplicate delivery train a finished run.
# KEYS: progress, lease. ARGV: lease seconds, then the terminal statuses.
_CLAIM_LUA = """
local s = redis.call('HGET', KEYS[1], 'status')
for i = 2, #ARGV do
  if s == ARGV[i] then return {'ended', false} end
end
if redis.call('SET', KEYS[2], '0:claimed', 'NX', 'EX', ARGV[1]) then
  redis.call('HSET', KEYS[1], 'status', 'claimed')
  return {'run', false}
end
return {'held', redis.call('GET', KEYS[2])}
"""


def claim(client, run_id: str, lease_ttl_s: float = LEASE_TTL_S, poll_s: float = 1.0) -> str:
    """Decide whether this delivery trains the run: ``"run"``, ``"ended"`` or ``"duplicate"``.

    ``"run"`` comes with the lease taken (atomically with the check that the run has not
    ended, so two deliveries cannot both train, nor one train a run that just finished).
    While another attempt's lease exists we watch it: a lease that changes belongs to a live
    attempt (``"duplicate"``); one that lapses belonged to a dead one, and we take it.
    """
    keys = (PROGRESS_KEY.format(run_id=run_id), LEASE_KEY.format(run_id=run_id))
    deadline = time.monotonic() + lease_ttl_s + poll_s
    seen = None
    while True:
        # Seen by the reaper: a worker that dies before the run's first event leaves a claimed
        # run without a lease, which is queued again like a running one.
        verdict, now_seen = client.eval(_CLAIM_LUA, 2, *keys, int(max(1, lease_ttl_s)),
                                        *TERMINAL)
        verdict = verdict.decode() if isinstance(verdict, bytes) else verdict
        if verdict in ("ended", "run"):
            return verdict
        if seen is not None and now_seen is not None and now_seen != seen:
            return "duplicate"
        if time.monotonic() > deadline:
            return "duplicate"
        seen = now_seen
        time.sleep(poll_s)


class _Checkpointer:
    """Keeps the run's latest state in the broker: first after ``FIRST_CHECKPOINT_S`` (or
    ``every_s`` if less), then at gaps that double up to ``every_s``."""

    def __init__(self, client, pub: MetricPublisher, run_id: str, every_s: float) -> None:
        self.client, self.pub, self.every_s = client, pub, every_s
        self.key = CHECKPOINT_KEY.format(run_id=run_id)
        self.gap = min(FIRST_CHECKPOINT_S, every_s)
        self._next: float | None = None  # the clock starts with the first step, not the setup

    def __call__(self, step: int, make) -> None:
        if self._next is None:
            self._next = time.monotonic() + self.gap
        if time.monotonic() < self._next:
            return
        # Rows up to this step go onto the stream first: a resumed attempt copies them from
        # this one, so they must be recorded before anything can resume from here.
        self.pub.flush("running")
        if self.pub.superseded:
            # A later attempt holds the run: its checkpoint, not ours, is the one to resume.
            return
        blob = checkpoint_bytes({**make(), "attempt": self.pub.attempt})
        self.pub.retrying(lambda: self.client.set(self.key, blob, ex=PROGRESS_TTL_S))
        self.gap = min(self.gap * 2, self.every_s)
        self._next = time.monotonic() + self.gap


def _resume_state(client, run: RunSpec) -> dict | None:
    blob = retrying(lambda: client.get(CHECKPOINT_KEY.format(run_id=run.run_id)))
    if blob is None:
        return None
    try:
        state = load_checkpoint(blob)
    except Exception as err:  # a checkpoint of an older version, or damaged: start over
        log.warning("run %s: unreadable checkpoint ignored (%s)", run.run_id, err)
        return None
    return state if state.get("run_id") == run.run_id else None


def claim_delivery(task: Task, item_id: str) -> str:
    """``claim`` for a task's delivery of a run or lab job; a delivery that may not run is
    counted, and a duplicate of a live attempt is kept alive as a retry (raises)."""
    client = _client(task.app.conf.broker_url)
    # A broker blip here must not fail the delivery: a failed task is acknowledged and gone.
    verdict = retrying(lambda: claim(client, item_id), what=f"claim {item_id}")
    if verdict != "run":
        retrying(lambda: client.hincrby(SKIPPED_KEY, f"{item_id}:{verdict}", 1))
        log.warning("%s: %s delivery, not run again", item_id, verdict)
        if verdict == "duplicate":
            # Keep one copy of the message alive while the live attempt runs: if that attempt
            # dies before it ends, this copy is the one that restarts it.
            raise task.retry(countdown=LEASE_TTL_S)
    return verdict


def execute_run(run: RunSpec, broker_url: str, worker: str = "") -> dict[str, Any]:
    """Train ``run`` (its lease already claimed), publishing to the stream at ``broker_url``.

    A run that an earlier attempt checkpointed resumes from there: the new attempt starts
    with the earlier attempt's rows up to the checkpoint (the recorder copies them) and trains
    only the steps after it.
    """
    client = _client(broker_url)
    stream = EventStream(client)
    attempt = int(retrying(lambda: client.incr(ATTEMPT_KEY.format(run_id=run.run_id))))
    pub = MetricPublisher(stream, run.run_id, attempt, run.steps, worker=worker)
    resume = _resume_state(client, run)
    resumed_from = None
    if resume is not None:
        resumed_from = {"attempt": int(resume["attempt"]), "step": int(resume["step"])}
        pub.last_step = resumed_from["step"]
    pub.flush("running", f"resumed from step {resumed_from['step']}" if resumed_from else None,
              resumed_from=resumed_from)
    pub.start_heartbeat()
    try:
        return _train_attempt(run, client, pub, resume)
    finally:
        pub.stop_heartbeat()


def _train_attempt(run: RunSpec, client, pub: MetricPublisher,
                   resume: dict | None) -> dict[str, Any]:
    """The body of ``execute_run`` once the attempt holds the lease and said it runs."""
    attempt = pub.attempt
    flag = CancelFlag(client, [CANCEL_RUN_KEY.format(run_id=run.run_id),
                               CANCEL_STUDY_KEY.format(study_id=run.study_id)])

    def cancel() -> bool:
        # An attempt that lost its lease stops too: the run was handed to another attempt.
        return pub.superseded or flag()

    try:
        every_s = checkpoint_every_s()  # the CLI refuses a bad value before workers start
    except ValueError as err:
        log.warning("%s; using %g s", err, DEFAULT_CHECKPOINT_S)
        every_s = DEFAULT_CHECKPOINT_S
    checkpoint = _Checkpointer(client, pub, run.run_id, every_s) if every_s > 0 else None

    def end(status: str, message: str | None, info: dict | None = None) -> None:
        # The heartbeat stops first: a beat after the terminal flush would bring back the lease
        # that the flush dropped, and a quick re-run would wait for it to lapse.
        pub.stop_heartbeat()
        pub.flush(status, message, info)
        # Only a run that ended drops its checkpoint; a killed worker never gets here.
        pub.retrying(lambda: client.delete(CHECKPOINT_KEY.format(run_id=run.run_id)))

    if cancel():
        end("cancelled", "cancelled before start")
        return {"run_id": run.run_id, "status": "cancelled"}
    capture = None
    if run.capture_steps:
        from approximant.tasks.lab import capture_publisher

        capture = capture_publisher(pub, run.run_id, attempt)
    try:
        result = train(run, pub.add, should_stop=cancel, checkpoint=checkpoint, resume=resume,
                       capture=capture)
    except Exception as err:
        log.exception("run %s failed", run.run_id)
        last = traceback.format_exception_only(err)[-1].strip()
        end("failed", last)
        return {"run_id": run.run_id, "status": "failed", "message": last}
    if pub.superseded:
        # Not this attempt's to end: the live one publishes the run's outcome.
        return {"run_id": run.run_id, "status": "superseded", "attempt": attempt}
    end(result.status, result.message or None, result.info or None)
    return {"run_id": run.run_id, "status": result.status, "steps": result.steps_done,
            "attempt": attempt}


@app.task(name="approximant.run", bind=True, acks_late=True, ignore_result=True,
          max_retries=None)
def run_task(self: Task, run_spec: dict[str, Any]) -> dict[str, Any]:
    run = RunSpec.model_validate(run_spec)
    verdict = claim_delivery(self, run.run_id)
    if verdict != "run":
        return {"run_id": run.run_id, "status": verdict}
    worker = self.request.hostname or socket.gethostname()
    return execute_run(run, self.app.conf.broker_url, worker=worker)


# -- the reaper: runs whose worker is gone -----------------------------------------------------

# Atomically: a run that says it is running (or claimed) but whose lease lapsed is marked
# queued, so that of several reapers (one per worker) exactly one queues it again, and a run
# that just ended (its status and lease change together, see tasks.publisher) is never touched.
_REQUEUE_LUA = """
local s = redis.call('HGET', KEYS[1], 'status')
if (s ~= 'running' and s ~= 'claimed') or redis.call('EXISTS', KEYS[2]) == 1 then
  return false
end
redis.call('HSET', KEYS[1], 'status', 'queued', 'requeued_at', ARGV[1])
return s
"""
# Drop an item from the watched set unless it is active again. KEYS: progress, active set.
# ARGV: item, then the terminal statuses.
_FORGET_LUA = """
local s = redis.call('HGET', KEYS[1], 'status')
if s then
  local ended = false
  for i = 2, #ARGV do
    if s == ARGV[i] then ended = true end
  end
  if not ended then return 0 end
end
return redis.call('SREM', KEYS[2], ARGV[1])
"""
# The event that shows a requeued item as queued again, by task: (type, id field, step field).
# What a requeued item's "queued again" event is, by task: the event model, and the model's
# fields for the item's id and its progress.
_QUEUED_EVENT = {"approximant.run": (StatusEvent, "run_id", "step"),
                 "approximant.lab": (LabStatusEvent, "job_id", "cases_done")}


class Reaper:
    """Finds runs whose worker is gone (no lease, still "running") and queues them again.

    A lease lapses ``LEASE_TTL_S`` after its holder's last heartbeat; a run is queued again
    once its lease has been missing for ``grace_s`` more, seen by this reaper with the broker
    reachable throughout, so a live worker that was cut off from a restarted broker gets time
    to renew its lease first. The new attempt resumes from the run's checkpoint. A live run is
    not handed out twice: requeueing needs the lease gone, and claiming needs it free.
    """

    def __init__(self, client, grace_s: float = LEASE_TTL_S / 2) -> None:
        self.client = client
        self.grace_s = grace_s
        self._missing: dict[str, float] = {}  # id → since when (monotonic) its lease is gone

    def scan(self) -> list[str]:
        """One pass over the active items; returns the ids queued again."""
        ids = sorted(i.decode() for i in self.client.smembers(ACTIVE_KEY))
        pipe = self.client.pipeline(transaction=False)
        for item in ids:
            pipe.hget(PROGRESS_KEY.format(run_id=item), "status")
            pipe.exists(LEASE_KEY.format(run_id=item))
        replies = pipe.execute()
        t = time.monotonic()
        requeued = []
        for item, status, leased in zip(ids, replies[::2], replies[1::2], strict=True):
            status = status.decode() if status is not None else None
            if status is None or status in TERMINAL:
                # Dropped only if it still has ended: a re-run queued since the read above
                # (tasks.submit.queue_once) stays watched.
                self.client.eval(_FORGET_LUA, 2, PROGRESS_KEY.format(run_id=item), ACTIVE_KEY,
                                 item, *TERMINAL)
                self._missing.pop(item, None)
            elif status in ("running", "claimed") and not leased:
                since = self._missing.setdefault(item, t)
                if t - since >= self.grace_s and self._requeue(item):
                    requeued.append(item)
                    self._missing.pop(item, None)
            else:
                self._missing.pop(item, None)
        return requeued

    def forget(self) -> None:
        """After a broker outage: a lease missing now may belong to a live worker that has not
        reconnected yet, so every item starts its grace period again."""
        self._missing.clear()

    def _requeue(self, item: str) -> bool:
        raw = self.client.get(DELIVERY_KEY.format(item_id=item))
        if raw is None:
            log.warning("%s: its worker is gone but its payload is not in the broker; it "
                        "stays as it is", item)
            return False
        delivery = json.loads(raw)
        was = self.client.eval(_REQUEUE_LUA, 2, PROGRESS_KEY.format(run_id=item),
                               LEASE_KEY.format(run_id=item), repr(now()))
        if not was:
            return False  # it renewed its lease or ended meanwhile, or another reaper took it
        try:
            app.send_task(delivery["task"], args=delivery["args"], task_id=item)
        except Exception:
            # Back to what it was, so that the next pass (ours or another worker's) retries.
            self.client.hset(PROGRESS_KEY.format(run_id=item), "status", was)
            raise
        self._announce(item, delivery["task"])
        log.warning("%s: its worker stopped renewing the lease; queued again", item)
        return True

    def _announce(self, item: str, task: str) -> None:
        kind = _QUEUED_EVENT.get(task)
        if kind is None:
            return
        progress = self.client.hgetall(PROGRESS_KEY.format(run_id=item))
        model, id_field, step_field = kind
        EventStream(self.client).append([model(**{
            id_field: item, "status": "queued",
            "attempt": int(progress.get(b"attempt", 0) or 0),
            step_field: int(progress.get(b"step", 0) or 0),
            "message": "its worker was lost; queued again", "ts": now(),
        })])


class _ReaperThread(threading.Thread):
    """A worker's reaper loop: a pass every quarter lease; quiet through a broker outage."""

    def __init__(self, broker_url: str) -> None:
        super().__init__(name="approximant-reaper", daemon=True)
        self.reaper = Reaper(connect(broker_url))
        self.stopped = threading.Event()

    def run(self) -> None:
        outage = Outage("reaper", log)
        while not self.stopped.wait(max(0.5, LEASE_TTL_S / 4)):
            try:
                self.reaper.scan()
            except BROKER_ERRORS as err:
                self.reaper.forget()
                outage.lost(err)
                continue
            except Exception:
                log.exception("reaper: pass failed")
                continue
            outage.back()


_reaper: _ReaperThread | None = None


@worker_ready.connect
def _start_reaper(sender=None, **_: object) -> None:
    # In the worker's main process, which outlives its pool's processes: any worker, on any
    # machine, requeues the runs of a worker that died.
    global _reaper
    if _reaper is None:
        _reaper = _ReaperThread(app.conf.broker_url)
        _reaper.start()


@worker_shutdown.connect
def _stop_reaper(**_: object) -> None:
    if _reaper is not None:
        _reaper.stopped.set()
