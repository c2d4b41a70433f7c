"""A database connection on its own thread: schema migrations, one function at a time, whole
transactions or nothing, and commits that another connection sees; on PostgreSQL, a connection
opened again after a break or an outage of the server (without migrations), bounded sessions,
and snapshots."""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from mobilesign.hosting.config import ConfigError
from mobilesign.hosting.stores import store_location
from mobilesign.storage import postgres
from mobilesign.storage.connection import Connection, IntegrityError
from mobilesign.storage.database import Database, StoreError, exclusive, snapshot, transaction
from mobilesign.storage.schema import Location, PostgresStore, Schema, location
from mobilesign.testing.postgres import PostgresServer

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
        # The function that meets the break fails as the store's database being away (worth
        # trying again, chained to psycopg's error); the next gets a new connection.
        with pytest.raises(StoreError) as broke:
            await db.run(lambda c: c.execute("SELECT 1").fetchone())
        assert broke.value.reason == "DATABASE_UNAVAILABLE"
        assert isinstance(broke.value.__cause__, psycopg.OperationalError)
        again = await db.run(lambda c: c.execute("SELECT pg_backend_pid()").fetchone()[0])
        assert again != pid
    finally:
        await db.close()


def _names(c: Connection) -> list[tuple[str, int]]:
    return [(r["name"], r["n"]) for r in c.execute("SELECT name, n FROM items ORDER BY name")]


async def test_a_store_outlives_an_outage_of_its_postgresql_server() -> None:
    # A server of its own: the one the other tests share must stay up.
    server = PostgresServer()
    server.start()
    try:
        dsn = server.create_service_database("outage")
        db = await Database.open(PostgresStore(dsn, "items"), ITEMS)
        try:
            await db.run(lambda c: c.execute("INSERT INTO items (name, n) VALUES ('a', 1)"))
            server.halt()
            # The call that meets the break, and while the server is down every call (each
            # tries to connect once), fail with the store's own error, naming no DSN.
            for _ in range(3):
                with pytest.raises(StoreError) as refused:
                    await db.run(_names)
                assert refused.value.reason == "DATABASE_UNAVAILABLE"
                assert "items" in str(refused.value)
                assert dsn not in str(refused.value)
            server.start()
            # Back: the next call connects again and sees what was committed before.
            assert await db.run(_names) == [("a", 1)]
            await db.run(lambda c: c.execute("INSERT INTO items (name, n) VALUES ('b', 2)"))
            assert await db.run(_names) == [("a", 1), ("b", 2)]
        finally:
            await db.close()
    finally:
        server.stop()


async def test_a_store_closes_while_its_server_is_down() -> None:
    server = PostgresServer()
    server.start()
    try:
        db = await Database.open(
            PostgresStore(server.create_service_database("closing"), "items"), ITEMS
        )
        server.halt()
        with pytest.raises(StoreError):
            await db.run(_names)
        # Nothing to connect to, and nothing to connect for: closing does not try.
        await asyncio.wait_for(db.close(), timeout=10)
    finally:
        server.stop()


async def test_a_reconnect_keeps_working_on_a_schema_a_newer_replica_extended(
    postgres_dsn: str,
) -> None:
    # A rolling upgrade: the previous release's replica, its connection lost after the next
    # release migrated the store, connects again and goes on instead of refusing the schema.
    store = PostgresStore(postgres_dsn, f"rolling_{secrets.token_hex(4)}")
    old = await Database.open(store, _items_schema(1))
    new = await Database.open(store, ITEMS)
    try:
        pid = await old.run(lambda c: c.execute("SELECT pg_backend_pid()").fetchone()[0])
        with psycopg.connect(postgres_dsn, autocommit=True) as other:
            other.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(StoreError):
            await old.run(_names)
        await old.run(lambda c: c.execute("INSERT INTO items (name, n) VALUES ('a', 1)"))
        rows = await new.run(lambda c: c.execute("SELECT name, n, note FROM items").fetchall())
        assert [(r["name"], r["n"], r["note"]) for r in rows] == [("a", 1, None)]
    finally:
        await old.close()
        await new.close()


async def test_every_postgresql_session_is_bounded(postgres_dsn: str) -> None:
    db = await Database.open(PostgresStore(postgres_dsn, f"bounded_{secrets.token_hex(4)}"), ITEMS)
    try:
        # The connection that ran the migrations (without a lock timeout) has its bounds back.
        shown = await db.run(
            lambda c: {
                name: c.execute(f"SHOW {name}").fetchone()[0]
                for name in ("idle_in_transaction_session_timeout", "lock_timeout")
            }
        )
        parameters = await db.run(lambda c: c.raw.info.get_parameters())
    finally:
        await db.close()
    assert shown == {"idle_in_transaction_session_timeout": "10s", "lock_timeout": "30s"}
    # The server's TCP settings read 0 over the tests' unix socket: only that it accepted them
    # shows (a name it did not know would refuse the session). libpq's are the connection's.
    assert {k: parameters.get(k) for k in postgres.CLIENT_SETTINGS} == {
        k: str(v) for k, v in postgres.CLIENT_SETTINGS.items()
    }


async def test_a_holder_hung_in_its_transaction_loses_its_lock(postgres_dsn: str) -> None:
    store = PostgresStore(postgres_dsn, f"hung_{secrets.token_hex(4)}")
    holder, waiter = await Database.open(store, ITEMS), await Database.open(store, ITEMS)

    def take(c: Connection) -> None:
        # The holder's bound shortened for the test (the configured 10 s is checked above).
        c.execute("SET idle_in_transaction_session_timeout = '1s'")
        c.execute("BEGIN")
        exclusive(c, "log")  # and then nothing: the transaction stays open, as in a hung process

    def wait_for_the_lock(c: Connection) -> float:
        start = time.monotonic()
        transaction(c, lambda c: exclusive(c, "log"))
        return time.monotonic() - start

    try:
        await holder.run(take)
        # The server ends the idle session after its bound, which frees the lock: the waiter
        # gets it (before its own lock timeout of 30 s would fail it), not before the bound.
        assert await waiter.run(wait_for_the_lock) >= 0.9
        # The holder's session is gone: its next call fails as the database being away
        # (chained to the server's reason), and the one after connects again.
        with pytest.raises(StoreError) as ended:
            await holder.run(_names)
        assert isinstance(ended.value.__cause__, psycopg.errors.IdleInTransactionSessionTimeout)
        assert await holder.run(_names) == []
    finally:
        await holder.close()
        await waiter.close()


async def test_a_snapshot_reads_one_state_while_another_connection_commits(
    postgres_dsn: str,
) -> None:
    store = PostgresStore(postgres_dsn, f"snapshot_{secrets.token_hex(4)}")
    db = await Database.open(store, ITEMS)

    def count(c: Connection) -> int:
        return int(c.execute("SELECT COUNT(*) FROM items").fetchone()[0])

    def read_twice(c: Connection) -> tuple[int, int]:
        before = count(c)
        with postgres.open_connection(store) as other:  # another replica commits in between
            other.execute("INSERT INTO items (name, n) VALUES ('a', 1)")
        return before, count(c)

    try:
        assert await db.run(lambda c: snapshot(c, read_twice)) == (0, 0)
        assert await db.run(count) == 1
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
