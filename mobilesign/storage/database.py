"""A database connection (SQLite or PostgreSQL) on a thread of its own, used one function at
a time.

aiosqlite sends every statement, fetch and cursor close to its thread and back: a transaction of
ten statements costs ten round trips between threads, each two context switches and a turn of
the GIL. :meth:`Database.run` sends one whole function instead, which runs its statements with
the plain :mod:`sqlite3` connection and returns its result: one round trip per transaction.
Functions run one after the other, so a function that begins a transaction commits or rolls it
back before the next one starts. A PostgreSQL store runs the same functions on a psycopg
connection (:mod:`mobilesign.storage.postgres`).

Migrations run once, when the store is opened: a connection opened again later (after the server
restarted) does not check the schema's version again, so that a replica of the previous release
keeps working against a schema the next release extended during a rolling upgrade (which is why
each release's migrations must leave the schema usable by the release before it:
docs/deployment.md, *Database migrations*).
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from mobilesign.errors import Error, Kind
from mobilesign.storage import postgres
from mobilesign.storage.connection import Connection
from mobilesign.storage.schema import Location, PostgresStore, Schema
from mobilesign.storage.sqlite import PRAGMAS

T = TypeVar("T")


class StoreError(Error):
    """A store's refusal: ``UNAVAILABLE`` ``DATABASE_UNAVAILABLE`` while its database cannot
    be reached (the next call tries to connect again)."""


def _open_sqlite(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        for pragma in PRAGMAS:
            connection.execute(pragma)
    except BaseException:
        connection.close()
        raise
    connection.row_factory = sqlite3.Row
    return connection


def _connect_sqlite(path: Path, migrations: Sequence[str]) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    connection = _open_sqlite(path)
    try:
        version = int(connection.execute("PRAGMA user_version").fetchone()[0])
        if version > len(migrations):
            raise RuntimeError(
                f"{path.name} is at schema version {version}, newer than this code knows"
                f" ({len(migrations)}): upgrade the service"
            )
        for index in range(version, len(migrations)):
            connection.executescript(
                f"BEGIN IMMEDIATE; {migrations[index]}; PRAGMA user_version={index + 1}; COMMIT;"
            )
    except BaseException:
        connection.close()
        raise
    return connection


class Database:
    """One connection and the one thread that uses it: SQLite (WAL, ``synchronous=FULL``) or
    PostgreSQL (``synchronous_commit`` as the server has it, ``on`` by default); either way a
    commit that returned is durable.

    The thread takes functions from a queue and hands each result back to the caller's event
    loop (as aiosqlite does per statement; an executor's futures cost about twice as much per
    call). A function whose caller was cancelled before it started is not run. A PostgreSQL
    connection found broken (the server restarted, the network dropped) is opened again
    before the next function; the function that met the break fails with :class:`StoreError`
    ``DATABASE_UNAVAILABLE`` (``UNAVAILABLE``: worth trying again). Each function tries once:
    while the server cannot be reached, each fails so and the next tries again.
    """

    def __init__(
        self, name: str, connect: Callable[[], Connection], reconnect: Callable[[], Connection]
    ) -> None:
        """``name`` is the store's (its thread's and its errors'); ``connect`` opens the store
        at start (migrating it), ``reconnect`` opens it again after a break, without
        migrations."""
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._name = name
        self._connect = connect
        self._reconnect = reconnect
        self._connection: Connection | None = None
        # A daemon: a process whose start failed half way must not wait for it to exit.
        self._thread = threading.Thread(target=self._serve, name=f"db-{name}", daemon=True)

    @classmethod
    async def open(cls, where: Location, schema: Schema | Sequence[str]) -> Database:
        """Open (creating) the store and bring its tables up to date: a SQLite file (its
        ``user_version`` counts the migrations applied) or a schema in PostgreSQL. A bare
        sequence of migrations is a store that exists only as SQLite."""
        if isinstance(where, PostgresStore):
            if not isinstance(schema, Schema):
                raise ValueError("this store has no PostgreSQL schema")
            store, pg_migrations = where, schema.postgresql
            db = cls(
                store.schema,
                lambda: postgres.connect(store, pg_migrations),
                lambda: postgres.reconnect(store),
            )
        else:
            path = where
            migrations = schema.sqlite if isinstance(schema, Schema) else tuple(schema)
            db = cls(
                path.stem, lambda: _connect_sqlite(path, migrations), lambda: _open_sqlite(path)
            )
        db._thread.start()

        def connect(_: Connection | None) -> None:
            db._connection = db._connect()

        try:
            await db._submit(connect, connected=False)
        except BaseException:
            db._queue.put(None)
            raise
        return db

    def _serve(self) -> None:
        while (job := self._queue.get()) is not None:
            loop, future, function, connected = job
            if future.cancelled():
                continue
            try:
                result = function(self._usable() if connected else self._connection)
            except BaseException as exc:  # handed to the caller, whatever it is
                loop.call_soon_threadsafe(_set_exception, future, self._lost(exc))
            else:
                loop.call_soon_threadsafe(_set_result, future, result)

    def _lost(self, exc: BaseException) -> BaseException:
        """``exc``, or the store's :class:`StoreError` when the connection broke under the
        function (the server went away mid-call): retryable, unlike a fault of the call's."""
        connection = self._connection
        if isinstance(connection, postgres.PostgresConnection) and connection.raw.broken:
            lost = self._unavailable()
            lost.__cause__ = exc
            return lost
        return exc

    def _unavailable(self) -> StoreError:
        # The message names the store, never the connection string.
        return StoreError(
            Kind.UNAVAILABLE,
            "DATABASE_UNAVAILABLE",
            f"the {self._name} store's database cannot be reached",
        )

    def _usable(self) -> Connection:
        """The connection, opened again first when there is none (the last try failed) or it
        is broken; one try, whose failure is :class:`StoreError` ``DATABASE_UNAVAILABLE``."""
        connection = self._connection
        if connection is not None and not (
            isinstance(connection, postgres.PostgresConnection) and connection.raw.broken
        ):
            return connection
        if connection is not None:
            self._connection = None
            connection.close()
        try:
            self._connection = self._reconnect()
        except Exception as exc:
            raise self._unavailable() from exc  # chained for the log
        return self._connection

    async def _submit(self, function: Callable[[Any], T], *, connected: bool = True) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put((loop, future, function, connected))
        return await future

    async def run(self, function: Callable[[Any], T]) -> T:
        """``function(connection)`` on the database's thread, after every function sent
        before it."""
        return await self._submit(function)

    async def close(self) -> None:
        """Wait for the functions sent so far, then close the connection and stop the thread."""

        def close(connection: Connection | None) -> None:
            if connection is not None:
                connection.close()  # type: ignore[attr-defined]

        # As it is: closing needs no server (a lost connection is not opened again to be closed).
        await self._submit(close, connected=False)
        self._queue.put(None)
        self._thread.join()


#: The caller's loop and future, the function, and whether it needs a usable connection.
_Job = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[[Any], Any], bool]


def _set_result(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _set_exception(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


def transaction(connection: Connection, body: Callable[[Any], T]) -> T:
    """``body(connection)`` inside ``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back if it
    raises."""
    return _within(connection, "BEGIN IMMEDIATE", body)


def snapshot(connection: Connection, body: Callable[[Any], T]) -> T:
    """``body(connection)`` inside one transaction that reads one state of the store throughout,
    whatever other connections commit meanwhile, committed if it returns and rolled back if it
    raises: ``BEGIN IMMEDIATE`` on SQLite (no one else writes until it ends), ``REPEATABLE
    READ`` on PostgreSQL (where each statement of a plain transaction sees the latest commits)."""
    postgresql = isinstance(connection, postgres.PostgresConnection)
    begin = "BEGIN ISOLATION LEVEL REPEATABLE READ" if postgresql else "BEGIN IMMEDIATE"
    return _within(connection, begin, body)


def _within(connection: Connection, begin: str, body: Callable[[Any], T]) -> T:
    connection.execute(begin)
    try:
        result = body(connection)
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")
    return result


def exclusive(connection: Connection, name: str) -> None:
    """Inside a transaction: wait until no other transaction holds ``name``, and hold it to the
    end of this one. On SQLite ``BEGIN IMMEDIATE`` already keeps every writer apart; on
    PostgreSQL this is a transaction-scoped advisory lock, freed by the server when the
    transaction ends or its session does: at once when the holder's process dies, within the
    bounds of :data:`~mobilesign.storage.postgres.SESSION_SETTINGS` when it hangs or is cut
    off from the server."""
    if isinstance(connection, postgres.PostgresConnection):
        connection.execute("SELECT pg_advisory_xact_lock(?)", (postgres.lock_key(name),))
