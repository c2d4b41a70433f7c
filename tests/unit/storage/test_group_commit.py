"""Group commit: concurrent writes share commits, a failing one is undone alone, and each is on
disk when its caller gets its result (even a caller that went away)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from mobilesign.storage.database import Database
from mobilesign.storage.group_commit import GroupCommit

SCHEMA = ("CREATE TABLE items (name TEXT PRIMARY KEY, n INTEGER NOT NULL)",)


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    opened = await Database.open(tmp_path / "items.db", SCHEMA)
    yield opened
    await opened.close()


def _insert(name: str, n: int) -> Callable[[sqlite3.Connection], int]:
    def insert(c: sqlite3.Connection) -> int:
        c.execute("INSERT INTO items (name, n) VALUES (?, ?)", (name, n))
        return n

    return insert


def _stored(path: Path) -> list[tuple[str, int]]:
    other = sqlite3.connect(path)
    try:
        return other.execute("SELECT name, n FROM items ORDER BY n").fetchall()
    finally:
        other.close()


async def test_concurrent_writes_share_commits_and_are_on_disk_when_they_return(
    db: Database, tmp_path: Path
) -> None:
    commits = GroupCommit(db)
    path = tmp_path / "items.db"

    async def write(n: int) -> bool:
        await commits.run(_insert(f"i{n}", n))
        return (f"i{n}", n) in _stored(path)

    assert all(await asyncio.gather(*(write(n) for n in range(40))))
    assert commits.batches < 40


async def test_a_failing_write_is_undone_alone(db: Database, tmp_path: Path) -> None:
    commits = GroupCommit(db)

    def insert_then_fail(c: sqlite3.Connection) -> None:
        c.execute("INSERT INTO items (name, n) VALUES ('half', 99)")
        raise LookupError("refused")

    results = await asyncio.gather(
        commits.run(_insert("a", 1)),
        commits.run(insert_then_fail),
        commits.run(_insert("a", 2)),  # the name is taken by the first
        commits.run(_insert("b", 3)),
        return_exceptions=True,
    )
    assert results[0] == 1
    assert isinstance(results[1], LookupError)
    assert isinstance(results[2], sqlite3.IntegrityError)
    assert results[3] == 3
    assert _stored(tmp_path / "items.db") == [("a", 1), ("b", 3)]


async def test_a_caller_that_goes_away_does_not_undo_its_write(
    db: Database, tmp_path: Path
) -> None:
    commits = GroupCommit(db)
    task = asyncio.create_task(commits.run(_insert("kept", 7)))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await commits.drain()
    assert _stored(tmp_path / "items.db") == [("kept", 7)]
