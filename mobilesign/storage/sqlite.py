"""Opening a SQLite database for durable use, and applying a versioned schema."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import aiosqlite

#: Every connection's settings: write-ahead log, a commit is on disk when it returns, foreign
#: keys enforced, and a wait (not an error) when another connection holds the write lock.
PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=FULL",
    "PRAGMA foreign_keys=ON",
    "PRAGMA busy_timeout=5000",
)


async def open_database(path: Path, migrations: Sequence[str]) -> aiosqlite.Connection:
    """Open (creating) ``path`` in WAL mode with fully synchronous commits, and bring its schema
    up to date: ``migrations[i]`` is the SQL script that moves ``user_version`` from i to i + 1.

    A commit that returned is on disk (``synchronous=FULL``): nothing acknowledged is lost when
    the process is killed.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    db = await aiosqlite.connect(path, isolation_level=None)
    try:
        for pragma in PRAGMAS:
            await db.execute(pragma)
        async with db.execute("PRAGMA user_version") as cursor:
            row = await cursor.fetchone()
        version = int(row[0]) if row else 0
        for index in range(version, len(migrations)):
            await db.executescript(
                f"BEGIN IMMEDIATE; {migrations[index]}; PRAGMA user_version={index + 1}; COMMIT;"
            )
    except BaseException:
        # The connection's thread would otherwise keep the process alive.
        await db.close()
        raise
    db.row_factory = aiosqlite.Row
    return db
