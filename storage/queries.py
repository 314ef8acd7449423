"""Read queries for the dashboard and the CLI. Aggregation and downsampling happen in SQL."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from approximant.storage.db import Database
from approximant.storage.schema import run_order
from approximant.storage.stream import TERMINAL_SQL


class Queries:
    def __init__(self, db: Database) -> None:
        self.db = db

    def studies(self) -> pd.DataFrame:
        """One row per study, newest first, with run counts by status."""
        with self.db.read() as cur:
            return cur.execute(f"""
                SELECT s.study_id, s.name, s.workload, s.created_at,
                       count(r.run_id) AS n_runs,
                       count(*) FILTER (WHERE r.status IN {TERMINAL_SQL}) AS done,
                       count(*) FILTER (WHERE r.status = 'running') AS running,
                       count(*) FILTER (WHERE r.status = 'queued') AS queued,
                       count(*) FILTER (WHERE r.status IN ('diverged', 'failed')) AS failed
                FROM studies s LEFT JOIN runs r USING (study_id)
                GROUP BY ALL
                ORDER BY s.created_at DESC, s.study_id
            """).df()

    def study(self, study_id: str) -> dict[str, Any] | None:
        with self.db.read() as cur:
            row = cur.execute(
                "SELECT study_id, name, workload, spec, n_runs, created_at FROM studies "
                "WHERE study_id = ?", [study_id],
            ).fetchone()
        if row is None:
            return None
        keys = ["study_id", "name", "workload", "spec", "n_runs", "created_at"]
        out = dict(zip(keys, row, strict=True))
        out["spec"] = json.loads(out["spec"])
        return out

    def runs(self, study_id: str) -> pd.DataFrame:
        """Runs of a study in expansion order, with the latest value of each metric."""
        with self.db.read() as cur:
            runs = cur.execute(f"""
                SELECT run_id, label, optimizer, seed, status, attempt, last_step, steps,
                       message, worker, started_at, finished_at, updated_at, hparams, info
                FROM runs WHERE study_id = ? ORDER BY {run_order()}
            """, [study_id]).df()
            finals = cur.execute("""
                SELECT m.run_id, m.name, arg_max(m.value, m.step) AS value
                FROM metrics m JOIN runs r ON m.run_id = r.run_id AND m.attempt = r.attempt
                WHERE r.study_id = ? AND m.name IN ('train_loss', 'val_loss', 'val_accuracy')
                GROUP BY m.run_id, m.name
            """, [study_id]).df()
        if not finals.empty:
            wide = finals.pivot(index="run_id", columns="name", values="value")
            runs = runs.merge(wide, left_on="run_id", right_index=True, how="left")
        for col in ("train_loss", "val_loss", "val_accuracy"):
            if col not in runs:
                runs[col] = float("nan")
        runs["progress"] = (runs["last_step"] / runs["steps"].clip(lower=1)).clip(0, 1)
        return runs

    def data_version(self, study_id: str) -> tuple:
        """Changes whenever the study's runs or metrics change; a cache key for the pages."""
        with self.db.read() as cur:
            return cur.execute("""
                SELECT count(*), max(updated_at), sum(last_step) FROM runs WHERE study_id = ?
            """, [study_id]).fetchone()

    def is_active(self, study_id: str) -> bool:
        with self.db.read() as cur:
            row = cur.execute(
                f"SELECT count(*) FROM runs WHERE study_id = ? AND status NOT IN {TERMINAL_SQL}",
                [study_id],
            ).fetchone()
        return bool(row and row[0])

    def metric_count(self, run_id: str | None = None) -> int:
        with self.db.read() as cur:
            if run_id is None:
                return int(cur.execute("SELECT count(*) FROM metrics").fetchone()[0])
            return int(cur.execute(
                "SELECT count(*) FROM metrics WHERE run_id = ?", [run_id]
            ).fetchone()[0])
