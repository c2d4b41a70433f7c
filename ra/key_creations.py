"""Organisation-key creations in progress: a row is written before the RA asks the HSM proxy
to generate a key and removed once the key is recorded, so that a creation cut short (the RA
killed between the token generating the key and the RA recording it) is known at the next
start, and its key adopted rather than left in the token unknown.

Each method is one statement in autocommit mode, one function on the database's thread, its rows
fetched to the end (see :mod:`ra.users`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mobilesign.storage.database import Database


@dataclass(frozen=True)
class PendingCreation:
    """An organisation key asked for and not yet recorded."""

    label: str
    organisation_id: str
    algorithm: int
    started_at: int


class KeyCreations:
    """The ``organisation_key_creations`` table of the RA database."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def begin(self, creation: PendingCreation) -> None:
        """Record a creation before the token is asked for its key (durable on return)."""
        await self._db.run(
            lambda c: c.execute(
                "INSERT INTO organisation_key_creations"
                " (label, organisation_id, algorithm, started_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (label) DO NOTHING",
                (creation.label, creation.organisation_id, creation.algorithm, creation.started_at),
            )
        )

    async def get(self, label: str) -> PendingCreation | None:
        """The creation in progress for ``label``, or None."""
        rows = await self._db.run(
            lambda c: c.execute(
                "SELECT label, organisation_id, algorithm, started_at"
                " FROM organisation_key_creations WHERE label = ?",
                (label,),
            ).fetchall()
        )
        return _creation(rows[0]) if rows else None

    async def all(self) -> list[PendingCreation]:
        """Every creation in progress, oldest first."""
        rows = await self._db.run(
            lambda c: c.execute(
                "SELECT label, organisation_id, algorithm, started_at"
                " FROM organisation_key_creations ORDER BY started_at, label"
            ).fetchall()
        )
        return [_creation(r) for r in rows]

    async def finish(self, label: str) -> None:
        """Forget a creation (its key is recorded, or the token never made it)."""
        await self._db.run(
            lambda c: c.execute("DELETE FROM organisation_key_creations WHERE label = ?", (label,))
        )


def _creation(row: Any) -> PendingCreation:
    return PendingCreation(
        row["label"], row["organisation_id"], int(row["algorithm"]), int(row["started_at"])
    )
