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
from engine.training import train
from storage.stream import TERMINAL, EventStream, connect
from tasks.celery_app import app
from tasks.publisher import LEASE_KEY, LEASE_TTL_S, PROGRESS_KEY, MetricPublisher

log = logging.getLogger(__name__)

ATTEMPT_KEY = "approximant:attempt:{run_id}"
CANCEL_RUN_KEY = "approximant:cancel:run:{run_id}"
CANCEL_STUDY_KEY = "approximant:cancel:study:{study_id}"
CANCEL_POLL_S = 0.5
SKIPPED_KEY = "approximant:skipped"  # hash "run_id:verdict" → deliveries not trained

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
    """Train ``run`` (its lease already claimed), publishing to the stream at ``broker_url``."""
    client = _client(broker_url)
    stream = EventStream(client)
    attempt = int(client.incr(ATTEMPT_KEY.format(run_id=run.run_id)))
    pub = MetricPublisher(stream, run.run_id, attempt, run.steps, worker=worker)
    pub.flush("running")
    cancel = CancelFlag(client, [CANCEL_RUN_KEY.format(run_id=run.run_id),
                                 CANCEL_STUDY_KEY.format(study_id=run.study_id)])
    if cancel():
        pub.flush("cancelled", "cancelled before start")
        return {"run_id": run.run_id, "status": "cancelled"}
    capture = None
    if run.capture_steps:
        from tasks.lab import capture_publisher

        capture = capture_publisher(pub, run.run_id, attempt)
    try:
        result = train(run, pub.add, should_stop=cancel, capture=capture)
    except Exception as err:
        log.exception("run %s failed", run.run_id)
        last = traceback.format_exception_only(err)[-1].strip()
        pub.flush("failed", last)
        return {"run_id": run.run_id, "status": "failed", "message": last}
    pub.flush(result.status, result.message or None, result.info or None)
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
