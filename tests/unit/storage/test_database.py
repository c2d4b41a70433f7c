"""A SQLite connection on its own thread: schema migrations, one function at a time, whole
transactions or nothing, and commits that another connection sees."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from mobilesign.hosting.config import ConfigError
from mobilesign.hosting.stores import store_location
from mobilesign.storage.connection import Connection, IntegrityError
from mobilesign.storage.database import Database, transaction
from mobilesign.storage.schema import Location, PostgresStore, Schema, location

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


# Either back end ---------------------------------------------------------------------------

ITEMS = Schema(
    sqlite=SCHEMA,
    postgresql=(
        "CREATE TABLE items (name TEXT PRIMARY KEY, n BIGINT NOT NULL)",
        "ALTER TABLE items ADD COLUMN note TEXT",
    ),
)


def _items_schema(count: int) -> Schema:
    return Schema(sqlite=ITEMS.sqlite[:count], postgresql=ITEMS.postgresql[:count])


async def test_each_migration_runs_once_and_a_newer_store_is_refused(
    where: Callable[[str], Location],
) -> None:
    db = await Database.open(where("items"), _items_schema(1))
    await db.run(lambda c: c.execute("INSERT INTO items (name, n) VALUES (?, ?)", ("a", 1)))
    await db.close()
    db = await Database.open(where("items"), ITEMS)  # the second migration only
    rows = await db.run(lambda c: c.execute("SELECT name, n, note FROM items").fetchall())
    await db.close()
    assert [(r["name"], r["n"], r["note"]) for r in rows] == [("a", 1, None)]
    # An older service meeting a store a newer one upgraded does not guess: it refuses.
    with pytest.raises(RuntimeError, match="newer than this code knows"):
        await Database.open(where("items"), _items_schema(1))


async def test_a_refused_write_rolls_back_its_whole_transaction(
    where: Callable[[str], Location],
) -> None:
    db = await Database.open(where("items"), ITEMS)

    def add_two_then_fail(c: Connection) -> None:
        c.execute("INSERT INTO items (name, n) VALUES (?, ?)", ("a", 1))
        c.execute("INSERT INTO items (name, n) VALUES (?, ?)", ("a", 2))

    try:
        with pytest.raises(IntegrityError):
            await db.run(lambda c: transaction(c, add_two_then_fail))
        # The connection is usable again, and nothing of the failed transaction stayed.
        rows = await db.run(lambda c: c.execute("SELECT name FROM items").fetchall())
        assert rows == []
    finally:
        await db.close()


async def test_a_postgresql_connection_broken_under_it_is_opened_again(
    postgres_dsn: str,
) -> None:
    store = PostgresStore(postgres_dsn, "reconnect_items")
    db = await Database.open(store, ITEMS)
    try:
        pid = await db.run(lambda c: c.execute("SELECT pg_backend_pid()").fetchone()[0])
        with psycopg.connect(postgres_dsn, autocommit=True) as other:
            other.execute("SELECT pg_terminate_backend(%s)", (pid,))
        # The function that meets the break gets its error; the next gets a new connection.
        with pytest.raises(psycopg.OperationalError):
            await db.run(lambda c: c.execute("SELECT 1").fetchone())
        again = await db.run(lambda c: c.execute("SELECT pg_backend_pid()").fetchone()[0])
        assert again != pid
    finally:
        await db.close()


def test_the_database_setting_is_a_file_or_a_postgresql_url(tmp_path: Path) -> None:
    assert location("", tmp_path, "ledger") == tmp_path / "ledger.db"
    pg = location("postgresql://u:secret@/db?host=/run", tmp_path, "ledger", "gateway/ledger")
    assert pg == PostgresStore("postgresql://u:secret@/db?host=/run", "ledger", "gateway/ledger")
    assert "secret" not in repr(pg)
    with pytest.raises(ValueError, match="postgresql://"):
        location("mysql://u@h/db", tmp_path, "ledger")
    with pytest.raises(ValueError, match="store name"):
        location("", tmp_path, "../escape")
    with pytest.raises(ConfigError) as refused:
        store_location("gateway", "sqlite:///tmp/x?password=hunter2", tmp_path, "ledger")
    assert "hunter2" not in str(refused.value)
