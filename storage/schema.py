"""The DuckDB schema and its migrations.

Each migration is a list of statements applied in one transaction; ``schema_version`` holds
the number of migrations applied. Never edit a released migration: append a new one.
"""

from __future__ import annotations

import duckdb

from approximant.storage.events import SCRIPT

MIGRATIONS: list[list[str]] = [
    [
        """
        CREATE TABLE studies (
            study_id   VARCHAR PRIMARY KEY,
            name       VARCHAR NOT NULL,
            workload   VARCHAR NOT NULL,
            spec       JSON NOT NULL,
            n_runs     INTEGER NOT NULL,
            created_at TIMESTAMPTZ NOT NULL
        )
        """,
        """
        CREATE TABLE runs (
            run_id      VARCHAR PRIMARY KEY,
            study_id    VARCHAR NOT NULL,
            position    INTEGER NOT NULL,
            label       VARCHAR NOT NULL,
            optimizer   VARCHAR NOT NULL,
            seed        INTEGER NOT NULL,
            hparams     JSON NOT NULL,
            spec        JSON NOT NULL,
            steps       INTEGER NOT NULL,
            status      VARCHAR NOT NULL,
            attempt     INTEGER NOT NULL DEFAULT 0,
            last_step   INTEGER NOT NULL DEFAULT 0,
            message     VARCHAR,
            worker      VARCHAR,
            created_at  TIMESTAMPTZ NOT NULL,
            started_at  TIMESTAMPTZ,
            finished_at TIMESTAMPTZ,
            updated_at  TIMESTAMPTZ NOT NULL
        )
        """,
        "CREATE INDEX runs_study ON runs (study_id)",
        """
        CREATE TABLE metrics (
            run_id  VARCHAR NOT NULL,
            attempt INTEGER NOT NULL,
            step    INTEGER NOT NULL,
            name    VARCHAR NOT NULL,
            value   DOUBLE,
            wall_s  DOUBLE,
            tokens  BIGINT,
            PRIMARY KEY (run_id, attempt, step, name)
        )
        """,
    ],
    # 2: the approximation lab (storage/lab.py) and matrices captured from training runs.
    [
        """
        CREATE TABLE lab_jobs (
            job_id      VARCHAR PRIMARY KEY,
            name        VARCHAR NOT NULL,
            spec        JSON NOT NULL,
            n_cases     INTEGER NOT NULL,
            status      VARCHAR NOT NULL,
            attempt     INTEGER NOT NULL DEFAULT 0,
            cases_done  INTEGER NOT NULL DEFAULT 0,
            message     VARCHAR,
            worker      VARCHAR,
            info        JSON,
            created_at  TIMESTAMPTZ NOT NULL,
            started_at  TIMESTAMPTZ,
            finished_at TIMESTAMPTZ,
            updated_at  TIMESTAMPTZ NOT NULL
        )
        """,
        """
        CREATE TABLE lab_cases (
            job_id      VARCHAR NOT NULL,
            attempt     INTEGER NOT NULL,
            case_id     VARCHAR NOT NULL,
            dtype       VARCHAR NOT NULL,
            source      VARCHAR NOT NULL,
            spectrum    VARCHAR,
            shape       VARCHAR,
            batch       INTEGER,
            rows        INTEGER,
            cols        INTEGER,
            kappa       DOUBLE,
            l_eff       DOUBLE,
            sigma_max   DOUBLE,
            gemm_gflops DOUBLE,
            PRIMARY KEY (job_id, attempt, case_id, dtype)
        )
        """,
        """
        CREATE TABLE lab_results (
            job_id         VARCHAR NOT NULL,
            attempt        INTEGER NOT NULL,
            case_id        VARCHAR NOT NULL,
            method         VARCHAR NOT NULL,
            map            VARCHAR NOT NULL,
            dtype          VARCHAR NOT NULL,
            iteration      INTEGER NOT NULL,
            matmuls        INTEGER,
            factorisations INTEGER,
            flops          DOUBLE,
            wall_median_s  DOUBLE,
            wall_min_s     DOUBLE,
            wall_max_s     DOUBLE,
            gflops         DOUBLE,
            gemm_frac      DOUBLE,
            peak_bytes     BIGINT,
            err_spec       DOUBLE,
            err_rms        DOUBLE,
            band_min       DOUBLE,
            band_max       DOUBLE,
            orth_err       DOUBLE,
            nuclear_frac   DOUBLE,
            finite         BOOLEAN,
            PRIMARY KEY (job_id, attempt, case_id, method, dtype, iteration)
        )
        """,
        """
        CREATE TABLE lab_curves (
            job_id    VARCHAR NOT NULL,
            attempt   INTEGER NOT NULL,
            case_id   VARCHAR NOT NULL,
            method    VARCHAR NOT NULL,
            dtype     VARCHAR NOT NULL,
            iteration INTEGER NOT NULL,
            kind      VARCHAR NOT NULL,
            idx       INTEGER NOT NULL,
            x         DOUBLE,
            y         DOUBLE,
            PRIMARY KEY (job_id, attempt, case_id, method, dtype, iteration, kind, idx)
        )
        """,
        """
        CREATE TABLE captured_matrices (
            matrix_id  VARCHAR PRIMARY KEY,
            run_id     VARCHAR NOT NULL,
            attempt    INTEGER NOT NULL,
            step       INTEGER NOT NULL,
            param      VARCHAR NOT NULL,
            kind       VARCHAR NOT NULL,
            rows       INTEGER NOT NULL,
            cols       INTEGER NOT NULL,
            dtype      VARCHAR NOT NULL,
            data       BLOB NOT NULL,
            created_at TIMESTAMPTZ NOT NULL
        )
        """,
    ],
    # 3: read-only share links: an unguessable token names one study.
    [
        """
        CREATE TABLE shares (
            token      VARCHAR PRIMARY KEY,
            study_id   VARCHAR NOT NULL,
            created_at TIMESTAMPTZ NOT NULL,
            revoked_at TIMESTAMPTZ
        )
        """,
    ],
    # 4: a run's worker-reported info (checkpoint resumes and the like). Stop 8 put this column
    # into migration 1 instead, so databases created by that release already have it (in the
    # middle of the table) and older ones do not: IF NOT EXISTS serves both, and every insert
    # names its columns (RUN_COLUMNS) because the position differs.
    ["ALTER TABLE runs ADD COLUMN IF NOT EXISTS info JSON"],
]

SCHEMA_VERSION = len(MIGRATIONS)

RUN_COLUMNS = (
    "run_id", "study_id", "position", "label", "optimizer", "seed", "hparams", "spec", "steps",
    "status", "attempt", "last_step", "message", "worker", "info", "created_at", "started_at",
    "finished_at", "updated_at",
)
# The order a study's runs are shown in (tables, legends, colours): the spec's expansion order;
# a script study's runs arrive in whatever order their scripts started, so by config then seed.
def run_order(alias: str = "") -> str:
    """The ORDER BY terms for the runs table, its columns qualified by ``alias``."""
    a = f"{alias}." if alias else ""
    return (f"CASE WHEN json_extract_string({a}spec, '$.workload.name') = '{SCRIPT}' THEN NULL "
            f"ELSE {a}position END, {a}label, {a}seed")

INSERT_RUN = (f"INSERT OR IGNORE INTO runs ({', '.join(RUN_COLUMNS)}) "
              f"VALUES ({', '.join('?' * len(RUN_COLUMNS))})")


def current_version(con: duckdb.DuckDBPyConnection) -> int:
    con.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = con.execute("SELECT max(version) FROM schema_version").fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def migrate(con: duckdb.DuckDBPyConnection) -> int:
    """Bring the database to ``SCHEMA_VERSION``; return the version it was at."""
    start = current_version(con)
    if start > SCHEMA_VERSION:
        raise RuntimeError(
            f"database schema version {start} is newer than this code's {SCHEMA_VERSION}; "
            "upgrade Approximant"
        )
    if start == 2 and _is_mains_shares_v2(con):
        # For a few hours main's migration 2 was the shares table; the lab merge renumbered it
        # to 3 and put the lab tables at 2. Such a file has shares and no lab: give it the lab
        # tables, and count shares (3) as applied.
        con.execute("BEGIN TRANSACTION")
        try:
            for stmt in MIGRATIONS[1]:
                con.execute(stmt)
            con.execute("INSERT INTO schema_version VALUES (3)")
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            raise
    for version in range(current_version(con), SCHEMA_VERSION):
        con.execute("BEGIN TRANSACTION")
        try:
            for stmt in MIGRATIONS[version]:
                con.execute(stmt)
            con.execute("INSERT INTO schema_version VALUES (?)", [version + 1])
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            raise
    return start


def _is_mains_shares_v2(con: duckdb.DuckDBPyConnection) -> bool:
    tables = {r[0] for r in con.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'"
    ).fetchall()}
    return "shares" in tables and "lab_jobs" not in tables
