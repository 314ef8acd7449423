"""Schema, recorder idempotence and crash recovery, on a real Valkey stream and DuckDB file."""

from __future__ import annotations

import duckdb
import pytest

from approximant.engine.specs import expand, parse_study
from approximant.storage.analytics import Analytics
from approximant.storage.db import Database
from approximant.storage.queries import Queries
from approximant.storage.recorder import Recorder
from approximant.storage.schema import SCHEMA_VERSION, current_version, migrate
from approximant.storage.stream import EventStream, connect

SPEC = parse_study({
    "name": "storage",
    "workload": {"name": "digits_mlp"},
    "optimizers": [{"name": "adamw", "grid": {"lr": [1e-3]}}],
    "seeds": [0, 1],
    "steps": 5,
})
RUNS = expand(SPEC)


def study_event() -> dict:
    return {"type": "study", "study_id": SPEC.study_id, "spec": SPEC.model_dump(mode="json"),
            "runs": [r.model_dump(mode="json") for r in RUNS], "ts": 1.0}


def metrics_event(run_id: str, attempt: int, steps: range) -> dict:
    rows = [[s, "train_loss", 1.0 / s, 0.01 * s, 32 * s] for s in steps]
    return {"type": "metrics", "run_id": run_id, "attempt": attempt, "rows": rows}


def status_event(run_id: str, attempt: int, status: str, step: int) -> dict:
    return {"type": "status", "run_id": run_id, "attempt": attempt, "status": status,
            "step": step, "message": None, "worker": "w", "ts": 2.0}


@pytest.fixture
def stream(clean_broker: str) -> EventStream:
    return EventStream(connect(clean_broker))


def count(db: Database, sql: str, *args) -> int:
    with db.read() as cur:
        return int(cur.execute(sql, list(args)).fetchone()[0])


def test_schema_is_created_and_migration_is_idempotent(tmp_path):
    con = duckdb.connect(str(tmp_path / "x.duckdb"))
    assert migrate(con) == 0
    assert current_version(con) == SCHEMA_VERSION
    assert migrate(con) == SCHEMA_VERSION  # nothing to do the second time
    tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables")
              .fetchall()}
    assert {"studies", "runs", "metrics", "schema_version"} <= tables
    con.execute("INSERT INTO metrics VALUES ('r', 1, 1, 'x', 1.0, 0.0, 0)")
    with pytest.raises(duckdb.ConstraintException):
        con.execute("INSERT INTO metrics VALUES ('r', 1, 1, 'x', 2.0, 0.0, 0)")


def test_a_newer_schema_is_refused(tmp_path):
    con = duckdb.connect(str(tmp_path / "x.duckdb"))
    migrate(con)
    con.execute("INSERT INTO schema_version VALUES (?)", [SCHEMA_VERSION + 1])
    with pytest.raises(RuntimeError, match="newer than this code"):
        migrate(con)


def test_second_process_cannot_open_the_same_file(tmp_path):
    import subprocess
    import sys

    db = Database(tmp_path / "owned.duckdb")
    code = ("from approximant.storage.db import Database; import sys; "
            f"Database(r'{tmp_path / 'owned.duckdb'}')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    db.close()
    assert proc.returncode != 0
    assert "another Approximant process owns it" in proc.stderr


def test_replayed_batch_leaves_one_copy(stream, db):
    rec = Recorder(db, stream)
    batch = metrics_event(RUNS[0].run_id, 1, range(1, 6))
    stream.append([study_event(), batch])
    rec.drain()
    stream.append([batch, batch])  # the same batch published twice more
    rec.drain()
    assert count(db, "SELECT count(*) FROM metrics") == 5
    assert count(db, "SELECT count(DISTINCT step) FROM metrics") == 5
    # The stream is emptied as entries are acknowledged.
    assert stream.client.xlen(stream.stream) == 0


def test_crash_after_commit_before_ack_duplicates_nothing(stream, db):
    rec = Recorder(db, stream, consumer="c1")
    stream.append([study_event(), metrics_event(RUNS[0].run_id, 1, range(1, 4))])
    stream.ensure_group()
    # Simulate a recorder that read and committed but died before acknowledging.
    entries = stream.read("c1", 100, None, pending=False)
    original_ack = stream.ack
    stream.ack = lambda ids: None
    rec._apply(entries)
    stream.ack = original_ack
    assert stream.client.xpending(stream.stream, stream.group)["pending"] == 2
    # A new recorder with the same consumer name re-reads its pending entries on start.
    Recorder(db, stream, consumer="c1").drain()
    assert stream.client.xpending(stream.stream, stream.group)["pending"] == 0
    assert count(db, "SELECT count(*) FROM metrics") == 3
    assert count(db, "SELECT count(*) FROM runs") == 2


def test_crash_before_commit_loses_nothing(stream, db):
    stream.append([study_event(), metrics_event(RUNS[1].run_id, 1, range(1, 8))])
    stream.ensure_group()
    stream.read("c1", 100, None, pending=False)  # read, then "crash" before applying
    assert count(db, "SELECT count(*) FROM metrics") == 0
    Recorder(db, stream, consumer="c1").drain()
    assert count(db, "SELECT count(*) FROM metrics") == 7


def test_status_moves_forward_only(stream, db):
    rid = RUNS[0].run_id
    rec = Recorder(db, stream)
    stream.append([study_event(), status_event(rid, 1, "running", 2),
                   status_event(rid, 1, "finished", 5),
                   status_event(rid, 1, "running", 3)])  # a late replay of attempt 1
    rec.drain()
    q = Queries(db)
    run = q.runs(SPEC.study_id).set_index("run_id").loc[rid]
    assert (run["status"], run["attempt"], run["last_step"]) == ("finished", 1, 5)
    stream.append([status_event(rid, 2, "running", 1)])  # a redelivery: a new attempt
    rec.drain()
    run = q.runs(SPEC.study_id).set_index("run_id").loc[rid]
    assert (run["status"], run["attempt"], run["last_step"]) == ("running", 2, 1)
    stream.append([status_event(rid, 1, "failed", 9)])  # an older attempt changes nothing
    rec.drain()
    assert q.runs(SPEC.study_id).set_index("run_id").loc[rid, "status"] == "running"


def test_poison_entry_is_parked_not_dropped(stream, db):
    rec = Recorder(db, stream)
    bad = {"type": "metrics", "run_id": "r", "attempt": "one", "rows": [[1]]}
    with pytest.raises(ValueError, match="attempt"):  # a producer cannot send it...
        stream.append([bad])
    # ...but an older or foreign producer may have: parked, and the stream goes on.
    stream.append_unchecked([study_event(), bad, metrics_event(RUNS[0].run_id, 1, range(1, 3))])
    rec.drain()
    assert count(db, "SELECT count(*) FROM metrics") == 2
    assert count(db, "SELECT count(*) FROM runs") == 2
    parked = stream.client.xrange(stream.dead_letter)
    assert len(parked) == 1 and b'"attempt": "one"' in parked[0][1][b"e"]


def test_an_event_with_a_misspelt_field_fails_where_it_is_built(stream):
    from approximant.storage.events import StatusEvent

    with pytest.raises(ValueError, match="mesage"):
        StatusEvent(run_id="r", attempt=1, status="running", mesage="typo")
    with pytest.raises(ValueError, match="status"):
        stream.append([{"type": "status", "run_id": "r", "attempt": 1, "status": "done"}])
    assert stream.client.xlen(stream.stream) == 0


def test_queries_downsample_and_report_finals(stream, db):
    rid = RUNS[0].run_id
    rec = Recorder(db, stream)
    stream.append([study_event(), metrics_event(rid, 1, range(1, 1001)),
                   status_event(rid, 1, "finished", 1000)])
    rec.drain()
    q = Queries(db)
    curves = Analytics(db).run_curves([SPEC.study_id], "train_loss", "step", points=100)
    assert 90 <= len(curves) <= 101
    # Cells are 10 steps wide around multiples of 10: the last holds steps 995-1000.
    assert curves["x"].max() == pytest.approx(997.5)
    runs = q.runs(SPEC.study_id).set_index("run_id")
    assert runs.loc[rid, "train_loss"] == pytest.approx(1 / 1000)
    assert runs.loc[rid, "progress"] == 1.0  # clipped: the run reported past its budget
    assert q.is_active(SPEC.study_id)  # the second run is still queued
    studies = q.studies()
    assert studies.loc[0, "n_runs"] == 2 and studies.loc[0, "done"] == 1


def test_a_database_failure_leaves_entries_pending_not_parked(stream, tmp_path):
    db = Database(tmp_path / "closing.duckdb")
    rec = Recorder(db, stream)
    db.close()  # e.g. the disk went away, or the dashboard is shutting down
    stream.append([study_event(), metrics_event(RUNS[0].run_id, 1, range(1, 4))])
    with pytest.raises(Exception):  # noqa: B017 - whatever DuckDB raises for a closed file
        rec.drain_once()
    assert stream.client.xlen(stream.dead_letter) == 0
    db2 = Database(tmp_path / "closing.duckdb")
    Recorder(db2, stream).drain()
    assert count(db2, "SELECT count(*) FROM metrics") == 3
    db2.close()


def test_only_one_database_records_from_a_broker(stream, tmp_path):
    from approximant.storage.recorder import RecorderBusy

    first = Database(tmp_path / "a.duckdb")
    second = Database(tmp_path / "b.duckdb")
    try:
        owner = Recorder(first, stream)
        owner.acquire()
        owner.acquire()  # the owner may renew
        with pytest.raises(RecorderBusy, match="another dashboard already records"):
            Recorder(second, stream).acquire()
        # The same database file restarted (e.g. after a crash) takes the lock back at once.
        Recorder(first, stream).acquire()
        owner.release()
        Recorder(second, stream).acquire()
    finally:
        first.close()
        second.close()


def test_a_terminal_status_records_the_runs_data_facts(stream, db):
    import json

    rid = RUNS[0].run_id
    done = status_event(rid, 1, "finished", 5)
    done["info"] = {"corpus": "stdlib", "corpus_fingerprint": "sha256:abc"}
    stream.append([study_event(), status_event(rid, 1, "running", 1), done])
    Recorder(db, stream).drain()
    info = Queries(db).runs(SPEC.study_id).set_index("run_id").loc[rid, "info"]
    assert json.loads(info) == {"corpus": "stdlib", "corpus_fingerprint": "sha256:abc"}
