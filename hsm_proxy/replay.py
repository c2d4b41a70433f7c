"""Record ids the HSM proxy has already acted on: an authorisation is good for one use only."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import aiosqlite

from mobilesign.storage.sqlite import open_database

_MIGRATIONS = (
    """
    CREATE TABLE used_records (
        record_id TEXT PRIMARY KEY,
        key_id TEXT NOT NULL,
        used_at INTEGER NOT NULL
    )
    """,
)


class UsedRecords:
    """Durable set of consumed record ids."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    @classmethod
    async def open(cls, path: Path) -> UsedRecords:
        """Open (creating) the database at ``path``."""
        return cls(await open_database(path, _MIGRATIONS))

    async def close(self) -> None:
        """Close the database."""
        await self._db.close()

    async def consume(self, record_id: str, key_id: str, now: int) -> bool:
        """Mark ``record_id`` used (durably); False when it was used before."""
        try:
            await self._db.execute(
                "INSERT INTO used_records (record_id, key_id, used_at) VALUES (?, ?, ?)",
                (record_id, key_id, now),
            )
        except sqlite3.IntegrityError:
            return False
        return True

    async def release(self, record_id: str) -> None:
        """Forget a record id whose operation failed before the token acted (e.g. queue full)."""
        await self._db.execute("DELETE FROM used_records WHERE record_id = ?", (record_id,))
