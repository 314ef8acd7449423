"""Submitting a study: register it on the stream, then queue each run once."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from approximant.engine.errors import SpecError
from approximant.engine.specs import RunSpec, StudySpec, expand, extra_seed_runs, max_runs
from approximant.storage.events import StatusEvent, StudyEvent
from approximant.storage.stream import TERMINAL, EventStream, connect, now
from approximant.tasks.celery_app import app, configure
from approximant.tasks.publisher import (
    ATTEMPT_KEY,
    CANCEL_RUN_KEY,
    CANCEL_STUDY_KEY,
    PROGRESS_KEY,
    PROGRESS_TTL_S,
)
from approximant.tasks.run import ACTIVE_KEY, DELIVERY_KEY, run_task

SUBMITTED_KEY = "approximant:submitted:{run_id}"


@dataclass
class Submission:
    study_id: str
    runs: list[RunSpec]
    queued: int  # runs sent to the queue now; the rest were already submitted


def _register(client, spec: StudySpec, runs: list[RunSpec]) -> None:
    # The recorder inserts what it does not have yet, so a registration that lists runs the
    # database already holds only adds the new ones (at their position in this list).
    EventStream(client).append([StudyEvent(
        study_id=spec.study_id, spec=spec.model_dump(mode="json"),
        runs=[r.model_dump(mode="json") for r in runs], ts=now(),
    )])


def queue_once(client, task, item_id: str, steps: int, payload: dict, *, force: bool = False,
               connection=None) -> bool:
    """Send ``payload`` to ``task`` as ``item_id`` unless it was sent before (``force``: send it
    again); True if it was sent. The queued progress record is written first, and the
    "submitted" mark is taken back if sending fails, so a retried submission sends it."""
    submitted = SUBMITTED_KEY.format(run_id=item_id)
    if force:
        client.delete(submitted)
    # Lives as long as the progress record, which the CLI waits on.
    if not client.set(submitted, now(), nx=True, ex=PROGRESS_TTL_S):
        return False
    key = PROGRESS_KEY.format(run_id=item_id)
    client.delete(key)  # a re-run's old terminal status would make its claim "ended"
    client.hset(key, mapping={"status": "queued", "step": 0, "steps": steps, "attempt": 0})
    client.expire(key, PROGRESS_TTL_S)
    # What a worker's reaper needs to queue it again should its worker die (tasks.run.Reaper).
    client.set(DELIVERY_KEY.format(item_id=item_id),
               json.dumps({"task": task.name, "args": [payload]}), ex=PROGRESS_TTL_S)
    client.sadd(ACTIVE_KEY, item_id)
    try:
        task.apply_async(args=[payload], task_id=item_id, connection=connection)
    except Exception:
        client.delete(submitted)
        raise
    return True


def _queue(client, runs: list[RunSpec], force: bool = False) -> int:
    """Send each run to the queue unless it was sent before (``force``: send it again)."""
    with app.connection_for_write() as conn:
        return sum(queue_once(client, run_task, run.run_id, run.steps,
                              run.model_dump(mode="json"), force=force, connection=conn)
                   for run in runs)


def submit_study(spec: StudySpec, broker_url: str) -> Submission:
    """Queue every run of ``spec`` that was not queued before (resubmission is idempotent)."""
    configure(broker_url)
    client = connect(broker_url)
    runs = expand(spec)
    _register(client, spec, runs)
    return Submission(spec.study_id, runs, _queue(client, runs))


def add_seeds(spec: StudySpec, existing: list[RunSpec], label: str, seeds: list[int],
              broker_url: str, keep_cancelled: Sequence[str] = ()) -> Submission:
    """Add runs of one configuration at more ``seeds`` to a study and queue them.

    ``existing`` are the study's runs in their order (the recorder keeps their positions);
    seeds the configuration already has are left alone. A study may not grow past
    ``max_runs()`` (``SpecError`` naming ``seeds``). A study-wide cancel request is lifted
    as in ``rerun`` (``keep_cancelled``: the study's other runs still going), or the new runs
    would stop before their first step.
    """
    limit = max_runs()
    if len(seeds) > limit:  # before any run is built
        raise SpecError(f"seeds: {len(seeds)} seeds; at most {limit} (APPROXIMANT_MAX_RUNS)")
    have = {r.run_id for r in existing}
    new = [r for r in extra_seed_runs(spec, label, seeds) if r.run_id not in have]
    if new and len(existing) + len(new) > limit:
        raise SpecError(f"seeds: {len(new)} more runs would make the study {len(existing)} + "
                        f"{len(new)} runs; at most {limit} (APPROXIMANT_MAX_RUNS)")
    configure(broker_url)
    client = connect(broker_url)
    if new:
        _lift_study_cancel(client, spec.study_id, keep_cancelled)
        _register(client, spec, [*existing, *new])
    return Submission(spec.study_id, new, _queue(client, new))


def _lift_study_cancel(client, study_id: str, keep_cancelled: Sequence[str]) -> None:
    """Replace a study-wide cancel request by per-run requests for ``keep_cancelled``."""
    key = CANCEL_STUDY_KEY.format(study_id=study_id)
    if client.exists(key):
        # The per-run requests first: no moment passes in which those runs may go on.
        for rid in keep_cancelled:
            client.set(CANCEL_RUN_KEY.format(run_id=rid), now())
        client.delete(key)


def rerun(runs: list[RunSpec], broker_url: str, keep_cancelled: Sequence[str] = ()) -> int:
    """Queue ``runs`` again (failed or cancelled ones); each trains as a new attempt.

    Idempotent: a run whose broker record says it is queued or running (a re-run already
    requested, perhaps by a second click) is left alone. Returns how many were queued.
    """
    configure(broker_url)
    client = connect(broker_url)
    ended = []
    for run in runs:
        status = client.hget(PROGRESS_KEY.format(run_id=run.run_id), "status")
        if status is None or status.decode() in TERMINAL:
            ended.append(run)
    for study_id in {r.study_id for r in ended}:
        _lift_study_cancel(client, study_id, keep_cancelled)
    stream = EventStream(client)
    queued = 0
    for i, run in enumerate(ended):
        client.delete(CANCEL_RUN_KEY.format(run_id=run.run_id))
        # Shown as queued at once (before the task, so a worker's first event comes after it),
        # under the attempt the page knows; the attempt that trains it supersedes that.
        stream.append([_requeued(client, run.run_id, "queued", "re-run requested")])
        try:
            queued += _queue(client, [run], force=True)
        except Exception as err:
            stream.append([_requeued(client, r.run_id, "failed",
                                     f"re-run could not be queued: {err}") for r in ended[i:]])
            raise
    return queued


def _requeued(client, run_id: str, status: str, message: str) -> StatusEvent:
    attempt = int(client.get(ATTEMPT_KEY.format(run_id=run_id)) or 0)
    return StatusEvent(run_id=run_id, status=status, step=0, attempt=attempt, message=message,
                       ts=now(), requeued=True)


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
