"""Read-only share links: an unguessable token that shows one study without edit controls.

A token is a view link, not an access control: whoever can reach the dashboard can open any
page. It lets a person send a study to a colleague in a form that cannot cancel or re-run
anything by accident, and it can be revoked.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

import pandas as pd

from approximant.storage.db import Database

TOKEN_BYTES = 18  # 144 bits: not guessable, short enough for a URL


class Shares:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, study_id: str) -> str:
        token = secrets.token_urlsafe(TOKEN_BYTES)
        with self.db.write() as cur:
            if cur.execute("SELECT 1 FROM studies WHERE study_id = ?", [study_id]).fetchone() \
                    is None:
                raise KeyError(f"no study with id {study_id!r}")
            cur.execute("INSERT INTO shares VALUES (?, ?, ?, NULL)",
                        [token, study_id, datetime.now(UTC)])
        return token

    def resolve(self, token: str) -> str | None:
        """The study a live token shows, or None for an unknown or revoked token."""
        with self.db.read() as cur:
            row = cur.execute(
                "SELECT study_id FROM shares WHERE token = ? AND revoked_at IS NULL", [token]
            ).fetchone()
        return row[0] if row else None

    def of_study(self, study_id: str) -> pd.DataFrame:
        with self.db.read() as cur:
            return cur.execute(
                "SELECT token, created_at FROM shares WHERE study_id = ? AND revoked_at IS NULL "
                "ORDER BY created_at", [study_id],
            ).df()

    def revoke(self, token: str) -> None:
        with self.db.write() as cur:
            cur.execute("UPDATE shares SET revoked_at = ? WHERE token = ?",
                        [datetime.now(UTC), token])
