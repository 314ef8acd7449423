"""Exports of a study's raw data: every metric row of the latest attempts, as Parquet."""

from __future__ import annotations

import tempfile
from pathlib import Path

from approximant.storage.db import Database


def study_parquet(db: Database, study_id: str) -> bytes:
    """Long metric rows joined with each run's config (label, optimizer, seed, hyper-parameters
    as JSON, status), written by DuckDB without passing through pandas."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "study.parquet"
        with db.read() as cur:
            cur.execute(f"""
                COPY (
                    SELECT r.study_id, m.run_id, r.label, r.optimizer, r.seed,
                           r.hparams::VARCHAR AS hparams, r.status, m.attempt, m.step, m.name,
                           m.value, m.wall_s, m.tokens
                    FROM metrics m JOIN runs r ON m.run_id = r.run_id AND m.attempt = r.attempt
                    WHERE r.study_id = ?
                    ORDER BY r.position, m.name, m.step
                ) TO '{str(path).replace("'", "''")}' (FORMAT parquet, COMPRESSION zstd)
            """, [study_id])
        return path.read_bytes()
