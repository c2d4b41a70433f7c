"""A SQLite connection on its own thread: schema migrations, one function at a time, whole
transactions or nothing, and commits that another connection sees."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from mobilesign.storage.database import Database, transaction

SCHEMA = (
    "CREATE TABLE items (name TEXT PRIMARY KEY, n INTEGER NOT NULL)",
    "ALTER TABLE items ADD COLUMN note TEXT",
)


async def test_migrations_bring_the_schema_up_to_date_once(tmp_path: Path) -> None:
    path = tmp_path / "db" / "items.db"
    db = await Database.open(path, SCHEMA[:1])
    await db.close()
    db = await Database.open(path, SCHEMA)  # only the second migration runs now
    version = await db.run(lambda c: c.execute("PRAGMA user_version").fetchone()[0])
    columns = await db.run(lambda c: [r["name"] for r in c.execute("PRAGMA table_info(items)")])
    mode = await db.run(lambda c: c.execute("PRAGMA journal_mode").fetchone()[0])
    await db.close()
    assert (version, columns, mode) == (2, ["name", "n", "note"], "wal")


async def test_functions_run_one_after_the_other_on_one_thread(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "items.db", SCHEMA)
    seen: list[tuple[int, int]] = []

    def step(i: int) -> Callable[[sqlite3.Connection], None]:
        return lambda _: seen.append((i, threading.get_ident()))

    await asyncio.gather(*(db.run(step(i)) for i in range(20)))
    await db.close()
    assert [i for i, _ in seen] == list(range(20))
    assert len({thread for _, thread in seen}) == 1
    assert seen[0][1] != threading.get_ident()


async def test_a_transaction_that_raises_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "items.db"
    db = await Database.open(path, SCHEMA)

    def add_two_then_fail(c: sqlite3.Connection) -> None:
        c.execute("INSERT INTO items (name, n) VALUES ('a', 1)")
        c.execute("INSERT INTO items (name, n) VALUES ('a', 2)")  # the key is taken

    with pytest.raises(sqlite3.IntegrityError):
        await db.run(lambda c: transaction(c, add_two_then_fail))
    await db.run(
        lambda c: transaction(c, lambda c: c.execute("INSERT INTO items (name, n) VALUES ('b', 3)"))
    )
    await db.close()
    other = sqlite3.connect(path)  # committed means visible to another connection
    try:
        assert other.execute("SELECT name, n FROM items").fetchall() == [("b", 3)]
    finally:
        other.close()
