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
from storage.stream import EventStream, connect
from tasks.celery_app import app
from tasks.publisher import LEASE_KEY, LEASE_TTL_S, PROGRESS_KEY, TERMINAL, MetricPublisher

log = logging.getLogger(__name__)

ATTEMPT_KEY = "approximant:attempt:{run_id}"
CANCEL_RUN_KEY = "approximant:cancel:run:{run_id}"
CANCEL_STUDY_KEY = "approximant:cancel:study:{study_id}"
CANCEL_POLL_S = 0.5

_clients: dict[tuple[int, str], Any] = {}


def _client(url: str):
    # One client per process and URL, made after the pool forked.
    key = (os.getpid(), url)
    if key not in _clients:
        _clients[key] = connect(url)
    return _clients[key]


class _CancelFlag:
    """Polls the cancel keys at most every ``CANCEL_POLL_S`` seconds (cheap per step)."""

    def __init__(self, client, run: RunSpec) -> None:
        self.client = client
        self.keys = [CANCEL_RUN_KEY.format(run_id=run.run_id),
                     CANCEL_STUDY_KEY.format(study_id=run.study_id)]
        self._next = 0.0

    def __call__(self) -> bool:
        t = time.monotonic()
        if t < self._next:
            return False
        self._next = t + CANCEL_POLL_S
        return bool(self.client.exists(*self.keys))


def claim(client, run_id: str, lease_ttl_s: float = LEASE_TTL_S, poll_s: float = 1.0) -> str:
    """Decide whether this delivery trains the run: ``"run"``, ``"ended"`` or ``"duplicate"``.

    Waits while a lease exists; a lease that changes while we watch belongs to a live attempt.
    """
    status = client.hget(PROGRESS_KEY.format(run_id=run_id), "status")
    if status is not None and status.decode() in TERMINAL:
        return "ended"
    key = LEASE_KEY.format(run_id=run_id)
    seen = client.get(key)
    deadline = time.monotonic() + lease_ttl_s + poll_s
    while seen is not None:
        if time.monotonic() > deadline:
            return "duplicate"
        time.sleep(poll_s)
        now_seen = client.get(key)
        if now_seen is not None and now_seen != seen:
            return "duplicate"
        seen = now_seen
    return "run"


def execute_run(run: RunSpec, broker_url: str, worker: str = "") -> dict[str, Any]:
    """Train ``run``, publishing rows and status to the stream at ``broker_url``."""
    client = _client(broker_url)
    stream = EventStream(client)
    verdict = claim(client, run.run_id)
    if verdict != "run":
        log.warning("run %s not started again: %s delivery", run.run_id, verdict)
        return {"run_id": run.run_id, "status": verdict}
    attempt = int(client.incr(ATTEMPT_KEY.format(run_id=run.run_id)))
    pub = MetricPublisher(stream, run.run_id, attempt, run.steps, worker=worker)
    pub.flush("running")
    cancel = _CancelFlag(client, run)
    if cancel():
        pub.flush("cancelled", "cancelled before start")
        return {"run_id": run.run_id, "status": "cancelled"}
    try:
        result = train(run, pub.add, should_stop=cancel)
    except Exception as err:
        log.exception("run %s failed", run.run_id)
        last = traceback.format_exception_only(err)[-1].strip()
        pub.flush("failed", last)
        return {"run_id": run.run_id, "status": "failed", "message": last}
    pub.flush(result.status, result.message or None, result.info or None)
    return {"run_id": run.run_id, "status": result.status, "steps": result.steps_done,
            "attempt": attempt}


@app.task(name="approximant.run", bind=True, acks_late=True, ignore_result=True)
def run_task(self: Task, run_spec: dict[str, Any]) -> dict[str, Any]:
    run = RunSpec.model_validate(run_spec)
    worker = self.request.hostname or socket.gethostname()
    return execute_run(run, self.app.conf.broker_url, worker=worker)
