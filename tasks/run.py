"""The run task: train one run and publish everything it measures.

Each delivery of a run is a new *attempt* (a Redis counter), so a run delivered again after a
worker died writes a fresh series instead of mixing with the partial one; the recorder's
uniqueness on (run, attempt, step, name) makes a replayed batch harmless.

A delivery first *claims* the run: a run that already ended is not trained again, and while
another attempt holds the run's lease (it is alive and publishing) a second delivery of the same
message — the broker's visibility timeout passing on a long run — is dropped instead of
training the run twice. After a worker died, its lease lapses within ``LEASE_TTL_S`` and the
redelivered run starts.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import traceback
from typing import Any

from celery import Task

from engine.specs import RunSpec
from engine.training import checkpoint_bytes, load_checkpoint, train
from storage.stream import TERMINAL, EventStream, connect
from tasks.celery_app import DEFAULT_CHECKPOINT_S, app, checkpoint_every_s
from tasks.publisher import (
    LEASE_KEY,
    LEASE_TTL_S,
    PROGRESS_KEY,
    PROGRESS_TTL_S,
    MetricPublisher,
)

log = logging.getLogger(__name__)

ATTEMPT_KEY = "approximant:attempt:{run_id}"
CANCEL_RUN_KEY = "approximant:cancel:run:{run_id}"
CANCEL_STUDY_KEY = "approximant:cancel:study:{study_id}"
CANCEL_POLL_S = 0.5
SKIPPED_KEY = "approximant:skipped"  # hash "run_id:verdict" → deliveries not trained
# The latest checkpoint of a run that has not ended, in the broker so that whichever worker
# gets the run again (any machine in team mode) resumes it instead of starting over.
CHECKPOINT_KEY = "approximant:checkpoint:{run_id}"

_clients: dict[tuple[int, str], Any] = {}


def _client(url: str):
    # One client per process and URL, made after the pool forked.
    key = (os.getpid(), url)
    if key not in _clients:
        _clients[key] = connect(url)
    return _clients[key]


class CancelFlag:
    """Polls the cancel keys at most every ``CANCEL_POLL_S`` seconds (cheap per step)."""

    def __init__(self, client, keys: list[str]) -> None:
        self.client = client
        self.keys = keys
        self._next = 0.0

    def __call__(self) -> bool:
        t = time.monotonic()
        if t < self._next:
            return False
        self._next = t + CANCEL_POLL_S
        return bool(self.client.exists(*self.keys))


def claim(client, run_id: str, lease_ttl_s: float = LEASE_TTL_S, poll_s: float = 1.0) -> str:
    """Decide whether this delivery trains the run: ``"run"``, ``"ended"`` or ``"duplicate"``.

    ``"run"`` comes with the lease taken (atomically, so two deliveries cannot both train).
    While another attempt's lease exists we watch it: a lease that changes belongs to a live
    attempt (``"duplicate"``); one that lapses belonged to a dead one, and we take it.
    """
    key = LEASE_KEY.format(run_id=run_id)
    deadline = time.monotonic() + lease_ttl_s + poll_s
    seen = None
    while True:
        status = client.hget(PROGRESS_KEY.format(run_id=run_id), "status")
        if status is not None and status.decode() in TERMINAL:
            return "ended"
        if client.set(key, "0:claimed", nx=True, ex=int(max(1, lease_ttl_s))):
            return "run"
        now_seen = client.get(key)
        if seen is not None and now_seen is not None and now_seen != seen:
            return "duplicate"
        if time.monotonic() > deadline:
            return "duplicate"
        seen = now_seen
        time.sleep(poll_s)


class _Checkpointer:
    """Keeps the run's latest state in the broker, at most every ``every_s`` seconds."""

    def __init__(self, client, pub: MetricPublisher, run_id: str, every_s: float) -> None:
        self.client, self.pub, self.every_s = client, pub, every_s
        self.key = CHECKPOINT_KEY.format(run_id=run_id)
        self._next = time.monotonic() + every_s

    def __call__(self, step: int, make) -> None:
        if time.monotonic() < self._next:
            return
        # Rows up to this step go onto the stream first: a resumed attempt copies them from
        # this one, so they must be recorded before anything can resume from here.
        self.pub.flush("running")
        state = {**make(), "attempt": self.pub.attempt}
        self.client.set(self.key, checkpoint_bytes(state), ex=PROGRESS_TTL_S)
        self._next = time.monotonic() + self.every_s


def _resume_state(client, run: RunSpec) -> dict | None:
    blob = client.get(CHECKPOINT_KEY.format(run_id=run.run_id))
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
    verdict = claim(client, item_id)
    if verdict != "run":
        client.hincrby(SKIPPED_KEY, f"{item_id}:{verdict}", 1)
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
    attempt = int(client.incr(ATTEMPT_KEY.format(run_id=run.run_id)))
    pub = MetricPublisher(stream, run.run_id, attempt, run.steps, worker=worker)
    resume = _resume_state(client, run)
    resumed_from = None
    if resume is not None:
        resumed_from = {"attempt": int(resume["attempt"]), "step": int(resume["step"])}
        pub.last_step = resumed_from["step"]
    pub.flush("running", f"resumed from step {resumed_from['step']}" if resumed_from else None,
              resumed_from=resumed_from)
    cancel = CancelFlag(client, [CANCEL_RUN_KEY.format(run_id=run.run_id),
                                 CANCEL_STUDY_KEY.format(study_id=run.study_id)])
    try:
        every_s = checkpoint_every_s()  # the CLI refuses a bad value before workers start
    except ValueError as err:
        log.warning("%s; using %g s", err, DEFAULT_CHECKPOINT_S)
        every_s = DEFAULT_CHECKPOINT_S
    checkpoint = _Checkpointer(client, pub, run.run_id, every_s) if every_s > 0 else None

    def end(status: str, message: str | None, info: dict | None = None) -> None:
        pub.flush(status, message, info)
        # Only a run that ended drops its checkpoint; a killed worker never gets here.
        client.delete(CHECKPOINT_KEY.format(run_id=run.run_id))

    if cancel():
        end("cancelled", "cancelled before start")
        return {"run_id": run.run_id, "status": "cancelled"}
    capture = None
    if run.capture_steps:
        from tasks.lab import capture_publisher

        capture = capture_publisher(pub, run.run_id, attempt)
    try:
        result = train(run, pub.add, should_stop=cancel, checkpoint=checkpoint, resume=resume,
                       capture=capture)
    except Exception as err:
        log.exception("run %s failed", run.run_id)
        last = traceback.format_exception_only(err)[-1].strip()
        end("failed", last)
        return {"run_id": run.run_id, "status": "failed", "message": last}
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
