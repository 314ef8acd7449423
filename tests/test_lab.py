"""The approximation lab end to end on real components, and its storage on its own."""

from __future__ import annotations

import threading
import zlib

import duckdb
import pytest
import torch

from approximant.engine.approx.bench import CASE_FIELDS, CURVE_FIELDS, RESULT_FIELDS
from approximant.engine.approx.spec import parse_lab
from approximant.engine.specs import expand, parse_study
from approximant.storage.db import Database
from approximant.storage.lab import LabQueries
from approximant.storage.recorder import Recorder
from approximant.storage.schema import MIGRATIONS, SCHEMA_VERSION, migrate
from approximant.storage.stream import EventStream, connect
from approximant.tasks.lab import cancel_lab, decode_matrix, encode_matrix, submit_lab
from approximant.tasks.submit import submit_study

LAB = {
    "name": "lab integration",
    "methods": [{"map": "newton_schulz", "options": {"schedule": "polar_express", "steps": 6}},
                {"map": "qdwh"}, {"map": "svd_polar"}],
    "spectra": ["loguniform:1e-3", "gaussian"],
    "shapes": ["24x16", "2x8x12"],
    "dtypes": ["float32", "bfloat16"],
    "repeats": 2,
}


def test_engine_and_storage_agree_on_the_lab_columns(db):
    with db.read() as cur:
        def cols(t):
            return [r[0] for r in cur.execute(f"DESCRIBE {t}").fetchall()]

        assert cols("lab_results")[2:] == list(RESULT_FIELDS)
        assert cols("lab_cases")[2:] == list(CASE_FIELDS)
        assert cols("lab_curves")[2:] == list(CURVE_FIELDS)


def test_a_version_1_database_upgrades_to_the_lab_schema(tmp_path):
    path = tmp_path / "v1.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    for stmt in MIGRATIONS[0]:
        con.execute(stmt)
    con.execute("INSERT INTO schema_version VALUES (1)")
    con.execute("INSERT INTO studies VALUES ('st-1', 'old', 'digits_mlp', '{}', 1, now())")
    con.close()
    db = Database(path)
    with db.read() as cur:
        assert cur.execute("SELECT max(version) FROM schema_version").fetchone()[0] == \
            SCHEMA_VERSION
        assert cur.execute("SELECT name FROM studies").fetchall() == [("old",)]
        assert cur.execute("SELECT count(*) FROM lab_jobs").fetchone()[0] == 0
    assert SCHEMA_VERSION >= 2
    db.close()
    con = duckdb.connect(str(path))
    assert migrate(con) == SCHEMA_VERSION  # nothing left to do
    con.close()


@pytest.mark.parametrize("release", ["stop 7 (v1)", "stop 8 (v3, info inside runs)"])
def test_released_databases_upgrade_and_take_runs(tmp_path, release):
    # Databases as earlier releases left them: v1 without runs.info, and v3 from the release
    # that had added info to migration 1 (mid-table). Both must upgrade and accept a run.
    from approximant.storage.queries import Queries
    from approximant.storage.schema import INSERT_RUN, RUN_COLUMNS

    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    stmts = list(MIGRATIONS[0])
    version = 1
    if release.startswith("stop 8"):
        stmts[1] = stmts[1].replace("worker      VARCHAR,", "worker      VARCHAR, info JSON,")
        assert "info JSON" in stmts[1]
        stmts += MIGRATIONS[1] + MIGRATIONS[2]
        version = 3
    for stmt in stmts:
        con.execute(stmt)
    con.execute("INSERT INTO schema_version VALUES (?)", [version])
    con.execute("INSERT INTO studies VALUES ('st-1', 'old', 'digits_mlp', '{}', 1, now())")
    con.close()
    db = Database(path)
    row = dict.fromkeys(RUN_COLUMNS)
    row.update(run_id="r1", study_id="st-1", position=0, label="sgd", optimizer="sgd", seed=0,
               hparams="{}", spec="{}", steps=10, status="queued", attempt=0, last_step=0,
               info='{"resumed_from": 4}', created_at="2026-11-25 10:00:00+00",
               updated_at="2026-11-25 10:00:00+00")
    with db.write() as cur:
        cur.execute(INSERT_RUN, [row[c] for c in RUN_COLUMNS])
    runs = Queries(db).runs("st-1")
    assert list(runs["run_id"]) == ["r1"] and list(runs["status"]) == ["queued"]
    with db.read() as cur:
        assert cur.execute("SELECT info->>'resumed_from' FROM runs").fetchone()[0] == "4"
    db.close()


def test_matrix_encoding_round_trips_bit_for_bit():
    t = torch.randn(7, 5)
    rows, cols, dtype, data = encode_matrix(t)
    import zlib

    assert torch.equal(decode_matrix(rows, cols, dtype, zlib.decompress(data)), t)


def test_a_matrix_event_whose_bytes_expired_is_parked_not_lost_silently(clean_broker, db):
    stream = EventStream(connect(clean_broker))
    stream.append([{"type": "matrix", "matrix_id": "r:1:3:w:grad", "run_id": "r", "attempt": 1,
                    "step": 3, "param": "w", "kind": "grad", "rows": 2, "cols": 2,
                    "dtype": "float32", "blob": "approximant:capture:gone", "ts": 1.0}])
    Recorder(db, stream).drain()
    assert LabQueries(db).captured().empty
    dead = stream.client.xrange(stream.dead_letter)
    assert len(dead) == 1 and b"r:1:3:w:grad" in dead[0][1][b"e"]


@pytest.mark.integration
def test_lab_job_end_to_end_rows_land_once(worker, clean_broker, db, wait_for):
    spec = parse_lab(LAB)
    recorder = Recorder(db, EventStream(connect(clean_broker)))
    q = LabQueries(db)
    sub = submit_lab(spec, clean_broker)
    assert sub.queued and sub.job_id == spec.job_id

    def done() -> bool:
        recorder.drain()
        job = q.job(spec.job_id)
        return job is not None and not q.is_active(spec.job_id)

    wait_for(done, 180, "the lab job to finish")
    job = q.job(spec.job_id)
    assert job["status"] == "finished" and job["cases_done"] == 4 == job["n_cases"]
    assert job["info"]["bf16_matmul"].startswith(("native", "emulated"))
    assert any("qdwh[max_iter" not in s and "qdwh × bfloat16 skipped" in s
               for s in job["info"]["skipped"])
    res = q.results(spec.job_id)
    # per case: PE 6 iterates × 2 dtypes, QDWH ≤ 6 iterates (fp32), SVD once (fp32)
    ns = res[res["map"] == "newton_schulz"]
    assert len(ns) == 4 * 6 * 2 and set(ns["dtype"]) == {"float32", "bfloat16"}
    # fp32 polar factors are good to ≈ κ·eps32 (κ = 1e3 here: 6e-5), SVD or QDWH alike.
    svd = res[res["map"] == "svd_polar"]
    assert len(svd) == 4 and (svd["err_spec"] < 1e-4).all()
    qdwh = res[res["map"] == "qdwh"]
    assert (qdwh.groupby("case_id")["err_spec"].min() < 1e-4).all()
    assert (res["wall_median_s"] > 0).all() and res["peak_bytes"].notna().sum() == 4 * 4
    cases = q.cases(spec.job_id)
    assert len(cases) == 8 and set(cases["source"]) == {"generated"}
    curve = q.curves(spec.job_id, "transfer", "loguniform:1e-3@24x16")
    assert len(curve) > 0 and curve["x"].max() == pytest.approx(1.0)
    tol = q.iterations_to(spec.job_id, 1e-3)
    qd = tol[tol["method"] == "qdwh"]
    assert len(qd) == 4 and (qd["iterations"] <= 6).all()
    # Polar Express stopped at 6 steps is still ≈ 7e-3 off: "never" is a result too.
    pe = tol[tol["method"].str.startswith("newton") & (tol["case_id"].str.startswith("log"))]
    assert pe["iterations"].isna().all() and (pe["best_err"] > 1e-3).all()
    # No duplicates after a replay of the whole stream: resubmitting queues nothing either.
    assert not submit_lab(spec, clean_broker).queued
    n = len(q.results(spec.job_id))
    recorder.drain()
    assert len(q.results(spec.job_id)) == n


@pytest.mark.integration
def test_captured_gradients_flow_from_a_training_run_into_the_lab(worker, clean_broker, db,
                                                                   wait_for):
    study = parse_study({
        "name": "capture", "workload": {"name": "digits_mlp", "settings": {"hidden": 16}},
        "optimizers": [{"name": "muon", "grid": {"lr": [0.02]}}], "steps": 6, "eval_every": 6,
        "capture_steps": [3, 6],
    })
    recorder = Recorder(db, EventStream(connect(clean_broker)))
    q = LabQueries(db)
    submit_study(study, clean_broker)
    run_id = expand(study)[0].run_id

    def captured() -> bool:
        recorder.drain()
        return len(q.captured()) == 8  # 2 steps × 2 matrix params × (grad, momentum)

    wait_for(captured, 120, "the captured matrices")
    # Stored in DuckDB, so the broker's copies are gone: captures cannot pile up in Redis.
    assert connect(clean_broker).keys("approximant:capture:*") == []
    cap = q.captured()
    assert set(cap["step"]) == {3, 6} and set(cap["kind"]) == {"grad", "momentum"}
    assert set(cap["run_id"]) == {run_id} and set(cap["label"]) == {"muon[lr=0.02]"}
    first = cap[(cap["kind"] == "momentum") & (cap["step"] == 6)].iloc[0]
    spec = parse_lab({"methods": [{"map": "svd_polar"}, {"map": "newton_schulz"}],
                      "captured": [{"key": first["matrix_id"], "label": "mlp momentum"}],
                      "repeats": 1})
    submit_lab(spec, clean_broker,
               matrices={first["matrix_id"]: q.captured_matrix(first["matrix_id"])})

    def finished() -> bool:
        recorder.drain()
        return q.job(spec.job_id) is not None and not q.is_active(spec.job_id)

    wait_for(finished, 120, "the lab job on captured matrices")
    assert q.job(spec.job_id)["status"] == "finished"
    cases = q.cases(spec.job_id)
    assert list(cases["case_id"]) == ["captured:mlp momentum"]
    assert list(cases["source"]) == ["captured"]
    assert (cases["rows"].iloc[0], cases["cols"].iloc[0]) == (first["rows"], first["cols"])
    res = q.results(spec.job_id)
    assert res.loc[res["map"] == "svd_polar", "err_spec"].iloc[0] < 1e-5


def test_submitting_without_the_captured_data_is_refused(clean_broker):
    spec = parse_lab({"methods": [{"map": "svd_polar"}],
                      "captured": [{"key": "r:1:3:w:grad", "label": "w"}]})
    with pytest.raises(ValueError, match="captured: no data for r:1:3:w:grad"):
        submit_lab(spec, clean_broker)


@pytest.mark.integration
def test_a_lab_job_can_be_cancelled(worker, clean_broker, db, wait_for):
    spec = parse_lab({**LAB, "spectra": ["gaussian"] * 1 + ["powerlaw:1", "powerlaw:2",
                                                            "lowrank:4"],
                      "shapes": ["64x64"], "repeats": 20})
    cancel_lab(spec.job_id, clean_broker)  # asked before it starts: stops before any case
    recorder = Recorder(db, EventStream(connect(clean_broker)))
    q = LabQueries(db)
    submit_lab(spec, clean_broker)

    def ended() -> bool:
        recorder.drain()
        return q.job(spec.job_id) is not None and not q.is_active(spec.job_id)

    wait_for(ended, 120, "the job to stop")
    job = q.job(spec.job_id)
    assert job["status"] == "cancelled" and job["cases_done"] == 0
    assert job["message"] == "cancelled by request"


def test_a_replayed_or_corrupt_captured_matrix_does_not_stop_the_recorder(clean_broker, db):
    stream = EventStream(connect(clean_broker))
    client = connect(clean_broker)
    recorder = Recorder(db, stream)
    good = {"type": "matrix", "matrix_id": "m-good", "blob": "approximant:capture:m-good",
            "run_id": "r", "attempt": 1, "step": 3, "param": "w", "kind": "grad", "rows": 1,
            "cols": 2, "dtype": "float32", "ts": 1.0}
    client.set(good["blob"], zlib.compress(b"\0" * 8))
    stream.append([good])
    recorder.drain()
    assert client.get(good["blob"]) is None  # recorded, so dropped from the broker
    # A replay after a crash between the commit and the delete finds the bytes again: they go.
    client.set(good["blob"], zlib.compress(b"\0" * 8))
    bad = {**good, "matrix_id": "m-bad", "blob": "approximant:capture:m-bad"}
    client.set(bad["blob"], b"not zlib")
    # A replay, then garbage (which no producer can send: written as it is).
    stream.append_unchecked([good, bad, {"type": "study", "study_id": "x"}])
    recorder.drain()
    assert list(LabQueries(db).captured()["matrix_id"]) == ["m-good"]
    assert client.get(good["blob"]) is None
    assert client.xlen(stream.dead_letter) == 2  # the corrupt matrix and the broken study
    assert recorder.drain() == 0  # nothing left pending: the stream moves on


def test_a_lab_case_longer_than_the_lease_keeps_its_job(clean_broker, monkeypatch):
    """A lab job whose test case outlasts the lease is kept alive by its heartbeat: the
    reaper never queues it again while it runs, and its end drops the lease."""
    import json
    import time

    from approximant.engine.approx.bench import LabSummary
    from approximant.tasks import lab as lab_module
    from approximant.tasks import publisher
    from approximant.tasks.celery_app import app, configure
    from approximant.tasks.lab import execute_lab
    from approximant.tasks.publisher import LEASE_KEY, PROGRESS_KEY
    from approximant.tasks.run import ACTIVE_KEY, DELIVERY_KEY, Reaper, claim

    monkeypatch.setattr(publisher, "LEASE_TTL_S", 1)
    configure(clean_broker)
    client = connect(clean_broker)
    spec = parse_lab(LAB)
    job = spec.job_id
    client.set(DELIVERY_KEY.format(item_id=job),
               json.dumps({"task": "approximant.lab", "args": [spec.model_dump(mode="json")]}))
    client.sadd(ACTIVE_KEY, job)
    assert claim(client, job, lease_ttl_s=1, poll_s=0.05) == "run"

    def slow_lab(spec, sink, should_stop=None, captured=None):
        t0 = time.monotonic()
        while time.monotonic() - t0 < 4:  # one case four lease lifetimes long
            time.sleep(0.05)
        return LabSummary("finished", 0, time.monotonic() - t0)

    monkeypatch.setattr(lab_module, "run_lab", slow_lab)
    result: dict = {}
    t = threading.Thread(target=lambda: result.update(execute_lab(spec, clean_broker, "w")))
    t.start()
    reaper, requeued = Reaper(client, grace_s=0.3), []
    while t.is_alive():
        requeued += reaper.scan()
        time.sleep(0.1)
    t.join()
    assert requeued == [] and client.llen(app.conf.task_default_queue) == 0
    assert result["status"] == "finished"
    assert client.hget(PROGRESS_KEY.format(run_id=job), "status") == b"finished"
    time.sleep(0.5)  # no late heartbeat brings the lease back
    assert not client.exists(LEASE_KEY.format(run_id=job))
