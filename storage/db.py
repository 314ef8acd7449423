"""The DuckDB file and its one owning connection.

DuckDB allows one read-write process per file and connections are not thread-safe, so a
``Database`` is opened once per process (the dashboard, or a headless ``approximant run``) and
every thread takes its own cursor. Writes go through ``write()``, which serialises writers.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from approximant.storage.schema import migrate

DB_FILENAME = "approximant.duckdb"


class Database:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        # Studies and share tokens: this user's only (an existing folder keeps its mode).
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        new = not self.path.exists()
        try:
            self._con = duckdb.connect(str(self.path))
        except duckdb.IOException as err:
            raise RuntimeError(
                f"cannot open {self.path}: another Approximant process owns it "
                f"(stop the other dashboard or run, or use another --data-dir). {err}"
            ) from None
        if new:
            os.chmod(self.path, 0o600)
        migrate(self._con)
        self._write_lock = threading.Lock()

    @classmethod
    def in_dir(cls, data_dir: str | Path) -> Database:
        return cls(Path(data_dir) / DB_FILENAME)

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A new cursor for the calling thread; close it when done (or use ``read()``)."""
        return self._con.cursor()

    @contextmanager
    def read(self) -> Iterator[duckdb.DuckDBPyConnection]:
        cur = self._con.cursor()
        try:
            yield cur
        finally:
            cur.close()

    @contextmanager
    def write(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """One transaction on a private cursor; committed on success, rolled back on error."""
        with self._write_lock:
            cur = self._con.cursor()
            cur.execute("BEGIN TRANSACTION")
            try:
                yield cur
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            finally:
                cur.close()

    def close(self) -> None:
        self._con.close()
