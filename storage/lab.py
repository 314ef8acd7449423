"""The approximation lab in DuckDB: applying its stream events, and the page's queries.

Events (one JSON object per stream entry, beside the study events of ``storage.stream``):

* ``{"type": "lab_job", "job_id", "spec", "n_cases", "ts"}`` — a job was submitted.
* ``{"type": "lab_status", "job_id", "attempt", "status", "cases_done", "message", "worker",
  "info", "ts"}`` — progress; status only moves forward, as for runs.
* ``{"type": "lab_case", "job_id", "attempt", "cases": {columns, rows}, "results": {columns,
  rows}, "curves": {columns, rows}}`` — everything measured on one test matrix. A curve row
  carries its points as two lists (x, y), unpacked here into one row per point.
* ``{"type": "matrix", "matrix_id", "run_id", "attempt", "step", "param", "kind", "rows",
  "cols", "dtype", "blob", "ts"}`` — a gradient or momentum matrix captured from a training
  run; its zlib-compressed little-endian values are in the broker under the key ``blob``
  (fetched while the event is applied, so a batch never holds many matrices at once).

Every write is idempotent (primary keys with INSERT OR IGNORE), so a replayed entry changes
nothing. Column names travel with the rows and are inserted BY NAME, so the producer and this
table agree by name, not by position.
"""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import Callable
from typing import Any

import pandas as pd

from approximant.storage.db import Database
from approximant.storage.events import (
    LabCaseEvent,
    LabJobEvent,
    LabStatusEvent,
    MatrixEvent,
    Table,
)
from approximant.storage.stream import TERMINAL, TERMINAL_SQL, event_time, status_change

log = logging.getLogger(__name__)


def apply_lab_job(cur, ev: LabJobEvent) -> None:
    ts = event_time(ev)
    cur.execute(
        "INSERT OR IGNORE INTO lab_jobs (job_id, name, spec, n_cases, status, created_at, "
        "updated_at) VALUES (?, ?, ?, ?, 'queued', ?, ?)",
        [ev.job_id, ev.spec["name"], json.dumps(ev.spec), ev.n_cases, ts, ts],
    )


def apply_matrix(cur, ev: MatrixEvent, fetch: Callable[[str], bytes | None]) -> bool:
    """Store a captured matrix, its bytes read from the broker by ``fetch``; False for a replay
    (stored already, and its bytes have left the broker)."""
    if cur.execute("SELECT 1 FROM captured_matrices WHERE matrix_id = ?",
                   [ev.matrix_id]).fetchone() is not None:
        return False
    blob = fetch(ev.blob)
    if blob is None:
        raise ValueError(f"matrix {ev.matrix_id}: its data ({ev.blob}) is not in the "
                         "broker (expired?)")
    try:
        data = zlib.decompress(blob)
    except zlib.error as err:  # a data error: parked, never retried forever
        raise ValueError(f"matrix {ev.matrix_id}: corrupt data ({err})") from None
    cur.execute(
        "INSERT OR IGNORE INTO captured_matrices VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [ev.matrix_id, ev.run_id, ev.attempt, ev.step, ev.param, ev.kind, ev.rows, ev.cols,
         ev.dtype, data, event_time(ev)],
    )
    return True


def apply_lab_status(cur, ev: LabStatusEvent) -> None:
    ts = event_time(ev)
    status, attempt = ev.status, ev.attempt
    row = cur.execute("SELECT attempt, status FROM lab_jobs WHERE job_id = ?",
                      [ev.job_id]).fetchone()
    if row is None:
        # As for runs: the job's registration precedes its statuses on the one stream.
        log.warning("recorder: status for unknown lab job %s", ev.job_id)
        return
    change = status_change(*row, attempt, status)
    if change is None:
        return
    info = json.dumps(ev.info) if ev.info else None
    if change == "new":
        cur.execute(
            "UPDATE lab_jobs SET attempt = ?, status = ?, cases_done = ?, message = ?, "
            "worker = ?, info = ?, started_at = ?, finished_at = NULL, updated_at = ? "
            "WHERE job_id = ?",
            [attempt, status, ev.cases_done, ev.message, ev.worker, info, ts, ts, ev.job_id],
        )
    else:
        cur.execute(
            "UPDATE lab_jobs SET status = ?, cases_done = greatest(cases_done, ?), "
            "message = coalesce(?, message), worker = coalesce(?, worker), "
            "info = coalesce(?, info), updated_at = ? WHERE job_id = ?",
            [status, ev.cases_done, ev.message, ev.worker, info, ts, ev.job_id],
        )
    if status in TERMINAL:
        cur.execute("UPDATE lab_jobs SET finished_at = ? WHERE job_id = ?", [ts, ev.job_id])


def _insert(cur, table: str, df: pd.DataFrame, key: list[str]) -> None:
    if df.empty:
        return
    df = df.drop_duplicates(subset=key)
    cur.register("incoming_lab", df)
    try:
        cur.execute(f"INSERT OR IGNORE INTO {table} BY NAME SELECT * FROM incoming_lab")
    finally:
        cur.unregister("incoming_lab")


def _frame(block: Table, job_id: str, attempt: int) -> pd.DataFrame:
    df = pd.DataFrame(block.rows, columns=block.columns)
    df.insert(0, "attempt", attempt)
    df.insert(0, "job_id", job_id)
    return df


def apply_lab_case(cur, ev: LabCaseEvent) -> None:
    job_id, attempt = ev.job_id, ev.attempt
    _insert(cur, "lab_cases", _frame(ev.cases, job_id, attempt),
            ["case_id", "dtype"])
    _insert(cur, "lab_results", _frame(ev.results, job_id, attempt),
            ["case_id", "method", "dtype", "iteration"])
    curves = _frame(ev.curves, job_id, attempt)
    if not curves.empty:
        curves = curves.assign(idx=[list(range(len(x))) for x in curves["x"]])
        curves = curves.explode(["x", "y", "idx"], ignore_index=True)
        curves = curves.astype({"x": "float64", "y": "float64", "idx": "int64"})
        _insert(cur, "lab_curves", curves,
                ["case_id", "method", "dtype", "iteration", "kind", "idx"])


class LabQueries:
    """Read queries for the lab page; each returns the job's latest attempt only."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def jobs(self) -> pd.DataFrame:
        with self.db.read() as cur:
            return cur.execute(
                "SELECT job_id, name, status, cases_done, n_cases, attempt, message, created_at, "
                "finished_at FROM lab_jobs ORDER BY created_at DESC, job_id"
            ).df()

    def job(self, job_id: str) -> dict[str, Any] | None:
        with self.db.read() as cur:
            df = cur.execute("SELECT * FROM lab_jobs WHERE job_id = ?", [job_id]).df()
        if df.empty:
            return None
        out = df.iloc[0].to_dict()
        out["spec"] = json.loads(out["spec"])
        out["info"] = json.loads(out["info"]) if isinstance(out["info"], str) else {}
        return out

    def _latest(self, table: str, job_id: str, where: str = "", params: list | None = None,
                columns: str = "t.*") -> pd.DataFrame:
        with self.db.read() as cur:
            return cur.execute(
                f"SELECT {columns} FROM {table} t JOIN lab_jobs j USING (job_id) "
                f"WHERE t.job_id = ? AND t.attempt = j.attempt {where}",
                [job_id, *(params or [])],
            ).df()

    def cases(self, job_id: str) -> pd.DataFrame:
        return self._latest("lab_cases", job_id).drop(columns=["job_id", "attempt"])

    def results(self, job_id: str) -> pd.DataFrame:
        df = self._latest("lab_results", job_id)
        return df.drop(columns=["job_id", "attempt"]).sort_values(
            ["case_id", "method", "dtype", "iteration"], ignore_index=True)

    def curves(self, job_id: str, kind: str, case_id: str) -> pd.DataFrame:
        """Points of one kind ("transfer" or "spectrum") on one case, every method/iteration."""
        df = self._latest("lab_curves", job_id, "AND t.kind = ? AND t.case_id = ?",
                          [kind, case_id],
                          "t.method, t.dtype, t.iteration, t.idx, t.x, t.y")
        return df.sort_values(["method", "dtype", "iteration", "idx"], ignore_index=True)

    def iterations_to(self, job_id: str, tol: float) -> pd.DataFrame:
        """Per case × method × dtype: the first iteration with spectral error ≤ ``tol`` (NULL if
        never), with the matmuls, factorisations and median wall time it took."""
        with self.db.read() as cur:
            return cur.execute("""
                SELECT r.case_id, r.method, r.dtype,
                       min(r.iteration) FILTER (WHERE r.err_spec <= ?) AS iterations,
                       arg_min(r.matmuls, r.iteration) FILTER (WHERE r.err_spec <= ?)
                           AS matmuls,
                       arg_min(r.wall_median_s, r.iteration) FILTER (WHERE r.err_spec <= ?)
                           AS wall_s,
                       min(r.err_spec) AS best_err
                FROM lab_results r JOIN lab_jobs j USING (job_id)
                WHERE r.job_id = ? AND r.attempt = j.attempt
                GROUP BY ALL ORDER BY r.case_id, r.method, r.dtype
            """, [tol, tol, tol, job_id]).df()

    def data_version(self, job_id: str) -> tuple:
        with self.db.read() as cur:
            return cur.execute(
                "SELECT status, attempt, cases_done, updated_at FROM lab_jobs WHERE job_id = ?",
                [job_id]).fetchone() or ()

    def is_active(self, job_id: str) -> bool:
        with self.db.read() as cur:
            row = cur.execute(
                f"SELECT count(*) FROM lab_jobs WHERE job_id = ? AND status NOT IN "
                f"{TERMINAL_SQL}", [job_id]).fetchone()
        return bool(row and row[0])

    def captured(self) -> pd.DataFrame:
        """Captured matrices, newest first, with their run's label when the run is known.

        A run that restarted or resumed captures its later steps again under a new attempt:
        each (run, step, parameter, kind) is listed once, from its latest attempt.
        """
        with self.db.read() as cur:
            return cur.execute("""
                SELECT c.matrix_id, c.run_id, r.label, c.step, c.param, c.kind, c.rows, c.cols,
                       c.created_at
                FROM captured_matrices c LEFT JOIN runs r USING (run_id)
                QUALIFY row_number() OVER (PARTITION BY c.run_id, c.step, c.param, c.kind
                                           ORDER BY c.attempt DESC) = 1
                ORDER BY c.created_at DESC, c.matrix_id
            """).df()

    def captured_matrix(self, matrix_id: str) -> tuple[int, int, str, bytes] | None:
        """(rows, cols, dtype, raw little-endian bytes) of one captured matrix."""
        with self.db.read() as cur:
            row = cur.execute(
                "SELECT rows, cols, dtype, data FROM captured_matrices WHERE matrix_id = ?",
                [matrix_id]).fetchone()
        return None if row is None else (int(row[0]), int(row[1]), str(row[2]), bytes(row[3]))
