"""Submitting a study: register it on the stream, then queue each run once."""

from __future__ import annotations

from dataclasses import dataclass

from engine.specs import RunSpec, StudySpec, expand, extra_seed_runs
from storage.stream import EventStream, connect, now
from tasks.celery_app import app, configure
from tasks.publisher import PROGRESS_KEY, PROGRESS_TTL_S
from tasks.run import ATTEMPT_KEY, CANCEL_RUN_KEY, CANCEL_STUDY_KEY, run_task

SUBMITTED_KEY = "approximant:submitted:{run_id}"


@dataclass
class Submission:
    study_id: str
    runs: list[RunSpec]
    queued: int  # runs sent to the queue now; the rest were already submitted


def _register(client, spec: StudySpec, runs: list[RunSpec]) -> None:
    # The recorder inserts what it does not have yet, so a registration that lists runs the
    # database already holds only adds the new ones (at their position in this list).
    EventStream(client).append([{
        "type": "study", "study_id": spec.study_id, "spec": spec.model_dump(mode="json"),
        "runs": [r.model_dump(mode="json") for r in runs], "ts": now(),
    }])


def _queue(client, runs: list[RunSpec], force: bool = False) -> int:
    """Send each run to the queue unless it was sent before (``force``: send it again)."""
    queued = 0
    with app.connection_for_write() as conn:
        for run in runs:
            submitted = SUBMITTED_KEY.format(run_id=run.run_id)
            if force:
                client.delete(submitted)
            # Lives as long as the run's progress record, which the CLI waits on.
            if not client.set(submitted, now(), nx=True, ex=PROGRESS_TTL_S):
                continue
            key = PROGRESS_KEY.format(run_id=run.run_id)
            client.delete(key)  # a re-run's old terminal status would make its claim "ended"
            client.hset(key, mapping={"status": "queued", "step": 0, "steps": run.steps,
                                      "attempt": 0})
            client.expire(key, PROGRESS_TTL_S)
            try:
                run_task.apply_async(args=[run.model_dump(mode="json")], task_id=run.run_id,
                                     connection=conn)
            except Exception:
                # Not queued, so not submitted: a retry of the submission must send it.
                client.delete(submitted)
                raise
            queued += 1
    return queued


def submit_study(spec: StudySpec, broker_url: str) -> Submission:
    """Queue every run of ``spec`` that was not queued before (resubmission is idempotent)."""
    configure(broker_url)
    client = connect(broker_url)
    runs = expand(spec)
    _register(client, spec, runs)
    return Submission(spec.study_id, runs, _queue(client, runs))


def add_seeds(spec: StudySpec, existing: list[RunSpec], label: str, seeds: list[int],
              broker_url: str) -> Submission:
    """Add runs of one configuration at more ``seeds`` to a study and queue them.

    ``existing`` are the study's runs in their order (the recorder keeps their positions);
    seeds the configuration already has are left alone.
    """
    have = {r.run_id for r in existing}
    new = [r for r in extra_seed_runs(spec, label, seeds) if r.run_id not in have]
    configure(broker_url)
    client = connect(broker_url)
    if new:
        _register(client, spec, [*existing, *new])
    return Submission(spec.study_id, new, _queue(client, new))


def rerun(runs: list[RunSpec], broker_url: str, keep_cancelled: list[str] = ()) -> int:
    """Queue ``runs`` again (failed or cancelled ones); each trains as a new attempt.

    A study-wide cancel request would stop them at once, so it is replaced by per-run
    requests for ``keep_cancelled`` — the study's other runs that have not ended yet.
    """
    configure(broker_url)
    client = connect(broker_url)
    for run in runs:
        client.delete(CANCEL_RUN_KEY.format(run_id=run.run_id))
    for study_id in {r.study_id for r in runs}:
        if client.delete(CANCEL_STUDY_KEY.format(study_id=study_id)):
            for rid in keep_cancelled:
                client.set(CANCEL_RUN_KEY.format(run_id=rid), now())
    # Show the runs as queued under the attempt they will train as (the worker's counter gives
    # the next one), so the page does not keep calling them failed until one starts. Sent
    # before the tasks, so a worker's first event cannot arrive ahead of it.
    stream = EventStream(client)
    attempts = {r.run_id: int(client.get(ATTEMPT_KEY.format(run_id=r.run_id)) or 0) + 1
                for r in runs}

    def status(state: str, message: str) -> list[dict]:
        return [{"type": "status", "run_id": rid, "status": state, "step": 0, "attempt": n,
                 "message": message, "worker": None, "ts": now()} for rid, n in attempts.items()]

    stream.append(status("queued", "re-run requested"))
    try:
        return _queue(client, runs, force=True)
    except Exception as err:
        stream.append(status("failed", f"re-run could not be queued: {err}"))
        raise


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
