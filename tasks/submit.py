"""Submitting a study: register it on the stream, then queue each run once."""

from __future__ import annotations

from dataclasses import dataclass

from engine.specs import RunSpec, StudySpec, expand
from storage.stream import EventStream, connect, now
from tasks.celery_app import app, configure
from tasks.publisher import PROGRESS_KEY, PROGRESS_TTL_S
from tasks.run import CANCEL_RUN_KEY, CANCEL_STUDY_KEY, run_task

SUBMITTED_KEY = "approximant:submitted:{run_id}"


@dataclass
class Submission:
    study_id: str
    runs: list[RunSpec]
    queued: int  # runs sent to the queue now; the rest were already submitted


def submit_study(spec: StudySpec, broker_url: str) -> Submission:
    """Queue every run of ``spec`` that was not queued before (resubmission is idempotent)."""
    configure(broker_url)
    client = connect(broker_url)
    runs = expand(spec)
    EventStream(client).append([{
        "type": "study", "study_id": spec.study_id, "spec": spec.model_dump(mode="json"),
        "runs": [r.model_dump(mode="json") for r in runs], "ts": now(),
    }])
    queued = 0
    with app.connection_for_write() as conn:
        for run in runs:
            # Lives as long as the run's progress record, which the CLI waits on.
            if not client.set(SUBMITTED_KEY.format(run_id=run.run_id), now(), nx=True,
                              ex=PROGRESS_TTL_S):
                continue
            key = PROGRESS_KEY.format(run_id=run.run_id)
            client.hset(key, mapping={"status": "queued", "step": 0, "steps": run.steps,
                                      "attempt": 0})
            client.expire(key, PROGRESS_TTL_S)
            try:
                run_task.apply_async(args=[run.model_dump(mode="json")], task_id=run.run_id,
                                     connection=conn)
            except Exception:
                # Not queued, so not submitted: a retry of the submission must send it.
                client.delete(SUBMITTED_KEY.format(run_id=run.run_id))
                raise
            queued += 1
    return Submission(spec.study_id, runs, queued)


def cancel_study(study_id: str, broker_url: str) -> None:
    """Ask every run of the study to stop at its next step (queued runs stop at start)."""
    connect(broker_url).set(CANCEL_STUDY_KEY.format(study_id=study_id), now())


def cancel_run(run_id: str, broker_url: str) -> None:
    connect(broker_url).set(CANCEL_RUN_KEY.format(run_id=run_id), now())


def progress(run_ids: list[str], broker_url: str) -> dict[str, dict[str, str]]:
    """Latest progress of each run from the broker (works without the database)."""
    client = connect(broker_url)
    pipe = client.pipeline(transaction=False)
    for rid in run_ids:
        pipe.hgetall(PROGRESS_KEY.format(run_id=rid))
    out = {}
    for rid, h in zip(run_ids, pipe.execute(), strict=True):
        out[rid] = {k.decode(): v.decode() for k, v in h.items()}
    return out
