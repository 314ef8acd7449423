"""The lab task: run one approximation-lab job on a worker and publish what it measures.

A job travels as its spec (JSON). Captured matrices live in DuckDB, which a worker must never
open, so the dashboard stages the chosen ones in Redis (``STAGED_KEY``, compressed, with a TTL)
when it submits the job, and the worker reads them from there. Results go out one test matrix
at a time as ``lab_case`` events on the one event stream (see ``storage.lab``), each followed
by a progress event; delivery, leases and attempts work as for training runs (``tasks.run``).
"""

from __future__ import annotations

import logging
import socket
import traceback
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from celery import Task

from approximant.engine.approx.bench import (
    CASE_FIELDS,
    CURVE_FIELDS,
    RESULT_FIELDS,
    CaseResult,
    run_lab,
)
from approximant.engine.approx.bench import case_list as lab_case_list
from approximant.engine.approx.spec import LabSpec
from approximant.storage.events import (
    LabCaseEvent,
    LabJobEvent,
    LabStatusEvent,
    MatrixEvent,
    Table,
)
from approximant.storage.stream import EventStream, connect, now
from approximant.tasks.celery_app import app, configure
from approximant.tasks.publisher import ATTEMPT_KEY, PROGRESS_TTL_S, MetricPublisher, retrying
from approximant.tasks.run import CancelFlag, _client, claim_delivery
from approximant.tasks.submit import queue_once

log = logging.getLogger(__name__)

STAGED_KEY = "approximant:labmatrix:{matrix_id}"
STAGED_TTL_S = 7 * 24 * 3600
CANCEL_LAB_KEY = "approximant:cancel:lab:{job_id}"


# -- captured matrices on the wire -------------------------------------------------------------

CAPTURE_KEY = "approximant:capture:{matrix_id}"
# Long enough for a dashboard that was down over a holiday to come back and record it.
CAPTURE_TTL_S = 30 * 24 * 3600


def encode_matrix(t: torch.Tensor) -> tuple[int, int, str, bytes]:
    """(rows, cols, dtype, zlib of the float32 little-endian bytes) of a 2-D tensor."""
    a = t.detach().to("cpu", torch.float32).contiguous().numpy().astype("<f4", copy=False)
    return a.shape[0], a.shape[1], "float32", zlib.compress(a.tobytes(), 1)


def decode_matrix(rows: int, cols: int, dtype: str, raw: bytes) -> torch.Tensor:
    if dtype != "float32":
        raise ValueError(f"captured matrix: unsupported dtype {dtype!r}")
    return torch.from_numpy(np.frombuffer(raw, dtype="<f4").reshape(rows, cols).copy())


def publish_matrix(pub: MetricPublisher, run_id: str, attempt: int, step: int, param: str,
                   kind: str, t: torch.Tensor) -> str:
    """Store the matrix under its own key, then announce it on the stream; return its id.

    The bytes stay out of the stream so that the recorder, which reads up to a thousand entries
    at a time, never holds more than one matrix in memory; it fetches each by key while it
    applies the event, and a replay finds the same bytes (the key outlives the stream entry).
    """
    matrix_id = f"{run_id}:{attempt}:{step}:{param}:{kind}"
    rows, cols, dtype, data = encode_matrix(t)
    key = CAPTURE_KEY.format(matrix_id=matrix_id)
    pub.retrying(lambda: pub.stream.client.set(key, data, ex=CAPTURE_TTL_S))
    pub.flush("running")  # the run's rows so far go first: the stream keeps its order
    pub.send([MatrixEvent(matrix_id=matrix_id, run_id=run_id, attempt=attempt, step=step,
                          param=param, kind=kind, rows=rows, cols=cols, dtype=dtype, blob=key,
                          ts=now())], "running")
    return matrix_id


# Larger matrices are not captured (32 MB of float32 each at most).
MAX_CAPTURE_ELEMENTS = 8 * 1024 * 1024


def capture_publisher(pub: MetricPublisher, run_id: str, attempt: int):
    """The training loop's ``capture`` callback for a run (see ``publish_matrix``)."""

    def capture(step: int, param: str, kind: str, t: torch.Tensor) -> None:
        if t.numel() > MAX_CAPTURE_ELEMENTS:
            log.warning("run %s: %s %s at step %d has %d elements; not captured", run_id,
                        param, kind, step, t.numel())
            return
        publish_matrix(pub, run_id, attempt, step, param, kind, t)

    return capture


# -- the publisher -----------------------------------------------------------------------------

class LabPublisher(MetricPublisher):
    """The run publisher's retries, progress record and lease, with lab events instead."""

    def status_event(self, status: str, message: str | None = None,
                     info: dict[str, Any] | None = None,
                     resumed_from: dict[str, int] | None = None) -> LabStatusEvent:
        # Lab jobs restart whole (no checkpoints), so ``resumed_from`` is never set for them.
        return LabStatusEvent(job_id=self.run_id, attempt=self.attempt, status=status,
                              cases_done=self.last_step, message=message, worker=self.worker,
                              ts=now(), info=info or None)

    def case(self, result: CaseResult) -> None:
        self.last_step += 1
        curves = _pack_curves(result.curves)
        ev = LabCaseEvent(
            job_id=self.run_id, attempt=self.attempt,
            cases=Table(columns=list(CASE_FIELDS), rows=result.cases),
            results=Table(columns=list(RESULT_FIELDS), rows=result.results),
            curves=Table(columns=[*CURVE_FIELDS[:5], "x", "y"], rows=curves))
        self.send([ev, self.status_event("running")], "running")


def _pack_curves(rows: list[list[Any]]) -> list[list[Any]]:
    """One wire row per curve with its points as two lists: a tenth of the JSON of one row
    per point (case_id, method, dtype, iteration, kind repeat on every point)."""
    packed: dict[tuple, tuple[list[float], list[float]]] = {}
    for case_id, method, dtype, it, kind, _idx, x, y in rows:
        xs, ys = packed.setdefault((case_id, method, dtype, it, kind), ([], []))
        xs.append(x)
        ys.append(y)
    return [[*k, xs, ys] for k, (xs, ys) in packed.items()]


# -- submitting --------------------------------------------------------------------------------

@dataclass
class LabSubmission:
    job_id: str
    queued: bool  # False: this exact job was submitted before


def submit_lab(spec: LabSpec, broker_url: str,
               matrices: dict[str, tuple[int, int, str, bytes]] | None = None) -> LabSubmission:
    """Register and queue a lab job once (resubmitting the same spec queues nothing).

    ``matrices``: for each captured matrix the spec names, (rows, cols, dtype, raw bytes) as
    read from DuckDB by the dashboard; they are staged in Redis for the worker.
    """
    configure(broker_url)
    client = connect(broker_url)
    job_id = spec.job_id
    missing = [c.key for c in spec.captured if not matrices or c.key not in matrices]
    if missing:
        raise ValueError(f"captured: no data for {', '.join(missing)}")
    pipe = client.pipeline(transaction=False)
    for key, (rows, cols, dtype, raw) in (matrices or {}).items():
        pipe.set(STAGED_KEY.format(matrix_id=key),
                 f"{rows}:{cols}:{dtype}:".encode() + zlib.compress(raw, 1), ex=STAGED_TTL_S)
    pipe.execute()
    n_cases = len(lab_case_list(spec))
    EventStream(client).append([LabJobEvent(job_id=job_id, spec=spec.model_dump(mode="json"),
                                            n_cases=n_cases, ts=now())])
    sent = queue_once(client, lab_task, job_id, n_cases, spec.model_dump(mode="json"))
    return LabSubmission(job_id, sent)


def cancel_lab(job_id: str, broker_url: str) -> None:
    """Ask a lab job to stop after the test matrix it is on."""
    connect(broker_url).set(CANCEL_LAB_KEY.format(job_id=job_id), now(), ex=PROGRESS_TTL_S)


def _staged(client, spec: LabSpec) -> dict[str, torch.Tensor]:
    out = {}
    for ref in spec.captured:
        blob = client.get(STAGED_KEY.format(matrix_id=ref.key))
        if blob is None:
            raise ValueError(f"captured: matrix {ref.key!r} is no longer staged in the broker "
                             "(staged copies expire after 7 days); submit the job again")
        rows, cols, dtype, rest = blob.split(b":", 3)
        out[ref.key] = decode_matrix(int(rows), int(cols), dtype.decode(), zlib.decompress(rest))
    return out


def execute_lab(spec: LabSpec, broker_url: str, worker: str = "") -> dict[str, Any]:
    """Run ``spec`` (its lease already claimed), publishing to the stream at ``broker_url``.

    As for a training run, a heartbeat keeps the job's lease while a long test case runs, and
    an attempt that lost the lease to a later one stops and leaves the ending to it.
    """
    client = _client(broker_url)
    job_id = spec.job_id
    attempt = int(retrying(lambda: client.incr(ATTEMPT_KEY.format(run_id=job_id))))
    n_cases = len(lab_case_list(spec))
    pub = LabPublisher(EventStream(client), job_id, attempt, n_cases, worker=worker)
    pub.flush("running")
    pub.start_heartbeat()
    try:
        return _lab_attempt(spec, client, pub)
    finally:
        pub.stop_heartbeat()


def _lab_attempt(spec: LabSpec, client, pub: LabPublisher) -> dict[str, Any]:
    job_id = spec.job_id
    flag = CancelFlag(client, [CANCEL_LAB_KEY.format(job_id=job_id)])
    notes: list[str] = []

    def cancel() -> bool:
        return pub.superseded or flag()

    def sink(result: CaseResult) -> None:
        notes.extend(result.notes)
        pub.case(result)

    def end(status: str, message: str | None, info: dict | None = None) -> None:
        pub.stop_heartbeat()  # before the terminal flush, which drops the lease (tasks.run)
        pub.flush(status, message, info)

    try:
        summary = run_lab(spec, sink, should_stop=cancel, captured=_staged(client, spec))
    except Exception as err:
        log.exception("lab job %s failed", job_id)
        last = traceback.format_exception_only(err)[-1].strip()
        end("failed", last)
        return {"job_id": job_id, "status": "failed", "message": last}
    if pub.superseded:
        # Not this attempt's to end: the live one publishes the job's outcome.
        return {"job_id": job_id, "status": "superseded", "attempt": pub.attempt}
    info = {**summary.info, "wall_s": round(summary.wall_s, 3), "failures": notes}
    message = "cancelled by request" if summary.status == "cancelled" else None
    end(summary.status, message, info)
    return {"job_id": job_id, "status": summary.status, "cases": summary.cases_done}


@app.task(name="approximant.lab", bind=True, acks_late=True, ignore_result=True,
          max_retries=None)
def lab_task(self: Task, spec_json: dict[str, Any]) -> dict[str, Any]:
    spec = LabSpec.model_validate(spec_json)
    verdict = claim_delivery(self, spec.job_id)
    if verdict != "run":
        return {"job_id": spec.job_id, "status": verdict}
    worker = self.request.hostname or socket.gethostname()
    return execute_lab(spec, self.app.conf.broker_url, worker=worker)
