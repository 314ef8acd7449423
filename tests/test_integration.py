"""End to end on real components: embedded Valkey, a Celery worker, the recorder, DuckDB."""

from __future__ import annotations

import pytest

from approximant.engine.specs import expand, parse_study
from approximant.storage.queries import Queries
from approximant.storage.recorder import Recorder
from approximant.storage.stream import EventStream, connect
from approximant.tasks.submit import submit_study

pytestmark = pytest.mark.integration

SPEC = {
    "name": "integration",
    "workload": {"name": "digits_mlp", "settings": {"hidden": 16, "batch_size": 32}},
    "optimizers": [
        {"name": "sgd", "grid": {"lr": [0.1]}},
        {"name": "adamw", "grid": {"lr": [0.003]}},
    ],
    "seeds": [0, 1],
    "steps": 12,
    "eval_every": 5,
}


def test_study_runs_end_to_end_and_every_row_lands_once(worker, clean_broker, db, wait_for):
    spec = parse_study(SPEC)
    recorder = Recorder(db, EventStream(connect(clean_broker)))
    q = Queries(db)

    sub = submit_study(spec, clean_broker)
    assert sub.queued == 4

    def all_done() -> bool:
        recorder.drain()
        return not q.is_active(spec.study_id) and len(q.runs(spec.study_id)) == 4

    wait_for(all_done, 120, "4 runs to finish")
    runs = q.runs(spec.study_id)
    assert set(runs["status"]) == {"finished"}
    assert list(runs["attempt"]) == [1, 1, 1, 1]

    # Per run: 12 steps × (train_loss, lr, step_time, grad_norm)
    # + evaluations at 0, 5, 10, 12 × (val_loss, val_accuracy).
    expected = 12 * 4 + 4 * 2
    with db.read() as cur:
        per_run = dict(cur.execute(
            "SELECT run_id, count(*) FROM metrics GROUP BY run_id").fetchall())
        dupes = cur.execute("""
            SELECT count(*) FROM (SELECT run_id, attempt, step, name, count(*) AS n
            FROM metrics GROUP BY ALL HAVING n > 1)""").fetchone()[0]
        steps = [r[0] for r in cur.execute(
            "SELECT step FROM metrics WHERE run_id = ? AND name = 'train_loss' ORDER BY step",
            [runs["run_id"][0]]).fetchall()]
    assert per_run == {rid: expected for rid in runs["run_id"]}
    assert dupes == 0
    assert steps == list(range(1, 13))

    # Resubmitting the same spec queues nothing new.
    again = submit_study(spec, clean_broker)
    assert again.queued == 0
    assert [r.run_id for r in again.runs] == [r.run_id for r in expand(spec)]


def test_a_second_delivery_of_an_ended_run_is_not_trained_again(worker, clean_broker, db, wait_for):
    from approximant.tasks.run import SKIPPED_KEY, run_task

    spec = parse_study({**SPEC, "optimizers": [SPEC["optimizers"][0]], "seeds": [0]})
    recorder = Recorder(db, EventStream(connect(clean_broker)))
    q = Queries(db)
    run = submit_study(spec, clean_broker).runs[0]

    def finished() -> bool:
        recorder.drain()
        return not q.is_active(spec.study_id) and len(q.runs(spec.study_id)) == 1

    wait_for(finished, 120, "the run to finish")
    rows_before = q.metric_count(run.run_id)
    # The broker delivers the same message again (e.g. its visibility timeout passed).
    run_task.apply_async(args=[run.model_dump(mode="json")], task_id=run.run_id + "-again")
    client = connect(clean_broker)
    wait_for(lambda: client.hget(SKIPPED_KEY, f"{run.run_id}:ended") == b"1", 60,
             "the second delivery to be turned away")
    recorder.drain()
    runs = q.runs(spec.study_id)
    assert list(runs["attempt"]) == [1] and list(runs["status"]) == ["finished"]
    assert q.metric_count(run.run_id) == rows_before


def test_cancelling_a_study_stops_its_runs_between_steps(worker, clean_broker, db, wait_for):
    from approximant.tasks.submit import cancel_study

    spec = parse_study({**SPEC, "steps": 100_000, "seeds": [0]})
    recorder = Recorder(db, EventStream(connect(clean_broker)))
    q = Queries(db)
    submit_study(spec, clean_broker)

    def started() -> bool:
        recorder.drain()
        runs = q.runs(spec.study_id)
        return bool((runs["last_step"] > 0).any())

    wait_for(started, 60, "a run to start training")
    cancel_study(spec.study_id, clean_broker)

    def all_ended() -> bool:
        recorder.drain()
        return not q.is_active(spec.study_id)

    wait_for(all_ended, 60, "the runs to stop")
    runs = q.runs(spec.study_id)
    assert set(runs["status"]) == {"cancelled"}
    assert (runs["last_step"] < 100_000).all()
    assert set(runs["message"]) <= {"cancelled by request", "cancelled before start"}


def test_a_cancelled_study_can_be_rerun_and_grow_seeds(worker, clean_broker, db, wait_for):
    from approximant.tasks.submit import add_seeds, cancel_study, rerun

    spec = parse_study({**SPEC, "optimizers": [SPEC["optimizers"][0]], "seeds": [0],
                        "steps": 8})
    recorder = Recorder(db, EventStream(connect(clean_broker)))
    q = Queries(db)
    cancel_study(spec.study_id, clean_broker)  # before submission: the run cannot outrun it
    first = submit_study(spec, clean_broker).runs

    def ended() -> bool:
        recorder.drain()
        return len(q.runs(spec.study_id)) >= 1 and not q.is_active(spec.study_id)

    wait_for(ended, 60, "the run to be cancelled")
    assert list(q.runs(spec.study_id)["status"]) == ["cancelled"]

    # Seeds added after a study was cancelled train: the study-wide request is lifted.
    existing = list(first)
    sub = add_seeds(spec, existing, first[0].label, [1, 2], clean_broker)
    assert sub.queued == 2 and [r.seed for r in sub.runs] == [1, 2]

    # Re-run: a new attempt trains; a second click while it is queued or running adds nothing.
    assert rerun(first, clean_broker) == 1
    assert rerun(first, clean_broker) == 0
    recorder.drain()
    now = q.runs(spec.study_id).set_index("seed")
    assert now.at[0, "status"] in ("queued", "running", "finished")  # no longer "cancelled"

    def all_finished() -> bool:
        recorder.drain()
        runs = q.runs(spec.study_id)
        return len(runs) == 3 and list(runs["status"]) == ["finished"] * 3

    wait_for(all_finished, 120, "the re-run and the added seeds to finish")
    runs = q.runs(spec.study_id)
    assert list(runs["seed"]) == [0, 1, 2]
    assert list(runs["attempt"]) == [2, 1, 1] and list(runs["last_step"]) == [8, 8, 8]
    assert q.studies().loc[0, "n_runs"] == 3
    # Asking again for a seed the config has adds nothing.
    again = add_seeds(spec, [*existing, *sub.runs], first[0].label, [1], clean_broker)
    assert again.queued == 0 and again.runs == []
