"""Upgrades from a saved database of every released schema version (tests/data/).

Each ``schema_v{N}*.duckdb`` was written by the code of the release that had N migrations
(tests/data/make_schema_dbs.py says which commit and how to make it again). Today's
``Database`` opens a copy, which migrates it; nothing the old code wrote may be lost, and
today's read paths must work on the result. A new file in tests/data is tested without editing
this module.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import duckdb
import numpy as np
import pytest

from approximant.storage.analytics import Analytics, metric_series
from approximant.storage.db import Database
from approximant.storage.lab import LabQueries
from approximant.storage.queries import Queries
from approximant.storage.schema import MIGRATIONS, SCHEMA_VERSION, migrate
from approximant.storage.shares import Shares

DATA = Path(__file__).parent / "data"
NAME = re.compile(r"schema_v(?P<version>\d+)(?:-[a-z0-9-]+)?\.duckdb")
MAKE = "python tests/data/make_schema_dbs.py"

# What make_schema_dbs.py writes into every file (its STUDY, PLAN, FAILED_MESSAGE, RUN_INFO,
# LAB_NAME, CAPTURED and metric_rows): the two must change together.
STUDY_NAME = "upgrade fixture"
LABELS = ["sgd[lr=0.1]", "sgd[lr=0.3]", "adamw[lr=0.001]"]
STATUSES = ["finished", "failed", "running"]
LAST_STEPS = [4, 3, 2]
FAILED_MESSAGE = "RuntimeError: worker out of memory at step 3 (upgrade fixture)"
RUN_INFO = {"corpus": "digits", "fixture": True}
METRICS = ["grad_norm", "lr", "train_loss", "val_accuracy", "val_loss"]
N_METRIC_ROWS = 35  # steps × 3 names, plus 2 at each even step: 16 + 11 + 8
LAB_NAME = "upgrade fixture lab"


def train_loss(position: int, step: int) -> float:
    return 2.0 / step + position / 8


# Every saved file (schema_v2-shares is main's short-lived version 2, which only opens since
# migrate() learnt it: see storage.schema).
SAVED = [pytest.param(path, id=path.stem) for path in sorted(DATA.glob("schema_v*.duckdb"))]


def _norm(value):
    # NaN is not equal to itself; a lab measurement may be NaN and must still compare equal.
    return "NaN" if isinstance(value, float) and math.isnan(value) else value


def _snapshot(con: duckdb.DuckDBPyConnection, columns: dict[str, list[str]] | None = None
              ) -> dict[str, tuple[dict[str, str], list[tuple]]]:
    """Each table's column types and all its rows, sorted; with ``columns``, only those tables
    and columns (what an older file had)."""
    types: dict[str, dict[str, str]] = {}
    for table, column, dtype in con.execute(
        "SELECT table_name, column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = 'main' ORDER BY table_name, ordinal_position"
    ).fetchall():
        types.setdefault(table, {})[column] = dtype
    out = {}
    for table, cols in (columns or {t: list(c) for t, c in types.items()}).items():
        quoted = ", ".join(f'"{c}"' for c in cols)
        rows = con.execute(f"SELECT {quoted} FROM {table} ORDER BY ALL").fetchall()
        out[table] = ({c: types[table][c] for c in cols},
                      [tuple(_norm(v) for v in row) for row in rows])
    return out


def _keys(con: duckdb.DuckDBPyConnection) -> set[tuple]:
    """Primary keys and indexes: the recorder's INSERT OR IGNORE relies on the keys."""
    keys = {(t, kind, tuple(cols)) for t, kind, cols in con.execute(
        "SELECT table_name, constraint_type, constraint_column_names FROM duckdb_constraints() "
        "WHERE constraint_type IN ('PRIMARY KEY', 'UNIQUE')").fetchall()}
    indexes = {(t, "INDEX", name) for t, name in con.execute(
        "SELECT table_name, index_name FROM duckdb_indexes()").fetchall()}
    return keys | indexes


@pytest.fixture(params=SAVED)
def upgraded(request, tmp_path):
    """(file name, version it was saved at, its contents before, the upgraded Database)."""
    saved: Path = request.param
    version = int(NAME.fullmatch(saved.name)["version"])
    path = tmp_path / saved.name
    shutil.copyfile(saved, path)  # never migrate the saved file itself
    con = duckdb.connect(str(path), read_only=True)
    before = _snapshot(con)
    con.close()
    db = Database(path)
    yield saved.name, version, before, db
    db.close()


def test_every_schema_version_has_a_saved_database():
    missing = [v for v in range(1, SCHEMA_VERSION + 1)
               if not (DATA / f"schema_v{v}.duckdb").exists()]
    assert not missing, (
        f"no saved database for schema version(s) {missing} in {DATA}: commit the migration, add "
        f"('schema_v{missing[0]}', {missing[0]}, '<commit>') to RELEASES in "
        f"tests/data/make_schema_dbs.py, run `{MAKE} schema_v{missing[0]}` and commit the file"
    )


def test_the_saved_file_is_the_version_its_name_says(upgraded):
    name, version, before, _db = upgraded
    assert version <= SCHEMA_VERSION, f"{name} is newer than this code"
    _types, rows = before["schema_version"]
    assert max(r[0] for r in rows) == version


def test_the_upgrade_reaches_the_current_schema_and_keeps_every_row(upgraded, tmp_path):
    name, version, before, db = upgraded
    with db.read() as cur:
        versions = sorted(r[0] for r in cur.execute("SELECT version FROM schema_version")
                          .fetchall())
        assert versions == list(range(1, len(MIGRATIONS) + 1))
        # Every table and column the old code wrote is still there with its type, and every
        # row with every value (new columns and tables may be added, nothing else).
        old_columns = {t: list(types) for t, (types, _rows) in before.items()}
        after = _snapshot(cur, {t: c for t, c in old_columns.items() if t != "schema_version"})
        now = _snapshot(cur)
    for table, (types, rows) in after.items():
        assert types == before[table][0], f"{name}: column types of {table} changed"
        assert rows == before[table][1], f"{name}: rows of {table} changed"
    # The same schema as a database made today: tables, column names and types (a column's
    # position may differ: runs.info sits mid-table in files of the releases that had it in
    # migration 1), keys and indexes.
    fresh = Database(tmp_path / "fresh.duckdb")
    try:
        with fresh.read() as cur:
            made_today = _snapshot(cur)
            today_keys = _keys(cur)
    finally:
        fresh.close()
    assert {t: types for t, (types, _rows) in now.items()} == \
        {t: types for t, (types, _rows) in made_today.items()}
    with db.read() as cur:
        assert _keys(cur) == today_keys
    # What the old code wrote is what make_schema_dbs.py asked for.
    assert len(before["studies"][1]) == 1
    assert len(before["runs"][1]) == len(LABELS)
    assert len(before["metrics"][1]) == N_METRIC_ROWS


def test_study_list_runs_and_metrics_read_after_the_upgrade(upgraded):
    name, _version, before, db = upgraded
    had_info = "info" in before["runs"][0]
    q = Queries(db)
    studies = q.studies()
    assert list(studies["name"]) == [STUDY_NAME]
    row = studies.iloc[0]
    assert (row["workload"], row["n_runs"], row["done"], row["running"], row["failed"]) == \
        ("digits_mlp", 3, 2, 1, 1)
    study_id = row["study_id"]
    study = q.study(study_id)
    assert study["name"] == STUDY_NAME and study["n_runs"] == 3
    assert study["spec"]["workload"]["name"] == "digits_mlp"

    runs = q.runs(study_id)
    assert list(runs["label"]) == LABELS
    assert list(runs["status"]) == STATUSES
    assert list(runs["last_step"]) == LAST_STEPS
    assert list(runs["attempt"]) == [1, 1, 1]
    assert runs["message"].iloc[1] == FAILED_MESSAGE
    assert runs["message"].iloc[[0, 2]].isna().all()
    assert list(runs["worker"]) == ["fixture-worker"] * 3
    assert list(runs["train_loss"]) == [train_loss(i, s) for i, s in enumerate(LAST_STEPS)]
    assert list(runs["val_accuracy"]) == [0.75, 0.625, 0.625]
    info = runs["info"].iloc[0]
    if had_info:
        assert json.loads(info) == RUN_INFO
    else:  # the release wrote no info anywhere: the new column is empty, not made up
        assert info is None or (isinstance(info, float) and math.isnan(info))
    assert runs["finished_at"].notna().tolist() == [True, True, False]
    assert q.metric_count() == N_METRIC_ROWS
    assert q.metric_count(runs["run_id"].iloc[0]) == 16
    assert q.is_active(study_id)  # the third run is still running
    assert q.data_version(study_id)[0] == 3


def test_analytics_reads_the_upgraded_study(upgraded):
    _name, _version, _before, db = upgraded
    study_id = Queries(db).studies()["study_id"].iloc[0]
    a = Analytics(db)
    runs = a.runs([study_id])
    assert list(runs["label"]) == LABELS and list(runs["status"]) == STATUSES
    assert list(runs["study"]) == [STUDY_NAME] * 3
    assert [h["lr"] for h in runs["hparams"]] == [0.1, 0.3, 0.001]
    assert "lr" in a.varying_hparams(runs)
    assert a.metric_names([study_id]) == METRICS

    ids = list(runs["run_id"])
    series = metric_series(a, ids, "train_loss")
    for position, last in enumerate(LAST_STEPS):
        mine = series[series["run_id"] == ids[position]]
        assert list(mine["step"]) == list(range(1, last + 1))
        assert list(mine["value"]) == [train_loss(position, s) for s in range(1, last + 1)]
    # The chart's shared grid (cells of 4/3 steps here, so steps 2 and 3 share one): the first
    # and last points of the finished run are whole steps.
    curves = a.run_curves([study_id], "train_loss")
    assert set(curves["run_id"]) == set(ids)
    first = curves[curves["run_id"] == ids[0]].sort_values("x")
    assert (first["x"].iloc[0], first["value"].iloc[0]) == (1.0, train_loss(0, 1))
    assert (first["x"].iloc[-1], first["value"].iloc[-1]) == (4.0, train_loss(0, 4))
    finals = a.finals([study_id], "val_loss").set_index("run_id")
    assert finals.loc[ids[0], "final"] == 1.5 / 4
    assert finals.loc[ids[0], "last_tokens"] == 4 * 64
    assert finals.loc[ids[0], "last_wall"] == 1.0
    reached = a.time_to_target([study_id], "train_loss", 1.0).set_index("run_id")["reached"]
    assert [reached[i] for i in ids] == [2.0, 3.0, math.inf]


def test_lab_and_captured_matrices_read_after_the_upgrade(upgraded):
    name, _version, before, db = upgraded
    lab = LabQueries(db)
    jobs = lab.jobs()
    if "lab_jobs" not in before:  # the release had no lab: the upgrade made empty tables
        assert jobs.empty and lab.captured().empty
        return
    assert list(jobs["name"]) == [LAB_NAME]
    assert list(jobs["status"]) == ["finished"]
    job_id = jobs["job_id"].iloc[0]
    job = lab.job(job_id)
    assert job["spec"]["name"] == LAB_NAME and job["cases_done"] == job["n_cases"] == 2
    assert job["info"]["failures"] == []
    cases = lab.cases(job_id)
    assert sorted(cases["source"]) == ["captured", "generated"]
    results = lab.results(job_id)
    assert len(results) == len(before["lab_results"][1]) and results["finite"].all()
    assert lab.iterations_to(job_id, 1.0)["best_err"].notna().all()
    case_id = cases["case_id"].iloc[0]
    kinds = {r[6] for r in before["lab_curves"][1] if r[2] == case_id}
    for kind in kinds:
        assert not lab.curves(job_id, kind, case_id).empty, f"{name}: no {kind} curve"
    assert not lab.is_active(job_id)

    captured = lab.captured()
    assert len(captured) == 1
    c = captured.iloc[0]
    assert (c["label"], c["step"], c["param"], c["kind"], c["rows"], c["cols"]) == \
        (LABELS[0], 2, "fc1.weight", "grad", 8, 4)
    rows, cols, dtype, raw = lab.captured_matrix(c["matrix_id"])
    values = np.frombuffer(raw, dtype="<f4").reshape(rows, cols)
    assert dtype == "float32"
    assert np.array_equal(values, np.arange(32, dtype=np.float32).reshape(8, 4) / 8)


def test_share_links_work_after_the_upgrade(upgraded):
    _name, _version, before, db = upgraded
    shares = Shares(db)
    study_id = Queries(db).studies()["study_id"].iloc[0]
    if "shares" in before:
        types, rows = before["shares"]
        cols = list(types)
        live = [r[cols.index("token")] for r in rows if r[cols.index("revoked_at")] is None]
        revoked = [r[cols.index("token")] for r in rows if r[cols.index("revoked_at")] is not None]
        assert len(live) == len(revoked) == 1
        assert shares.resolve(live[0]) == study_id
        assert shares.resolve(revoked[0]) is None
        assert list(shares.of_study(study_id)["token"]) == live
    else:
        assert shares.of_study(study_id).empty
    token = shares.create(study_id)  # the upgraded file takes writes too
    assert shares.resolve(token) == study_id


def test_opening_an_upgraded_file_again_changes_nothing(upgraded):
    _name, _version, _before, db = upgraded
    path = db.path
    with db.read() as cur:
        first = _snapshot(cur)
    db.close()
    con = duckdb.connect(str(path))
    assert migrate(con) == SCHEMA_VERSION  # it was at the current version: nothing to apply
    con.close()
    again = Database(path)
    try:
        with again.read() as cur:
            assert _snapshot(cur) == first
    finally:
        again.close()
