"""A SQLite connection on a thread of its own, used one function at a time.

aiosqlite sends every statement, fetch and cursor close to its thread and back: a transaction of
ten statements costs ten round trips between threads, each two context switches and a turn of
the GIL. :meth:`Database.run` sends one whole function instead, which runs its statements with
the plain :mod:`sqlite3` connection and returns its result: one round trip per transaction.
Functions run one after the other, so a function that begins a transaction commits or rolls it
back before the next one starts.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from mobilesign.storage.sqlite import PRAGMAS

T = TypeVar("T")


def _connect(path: Path, migrations: Sequence[str]) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        for pragma in PRAGMAS:
            connection.execute(pragma)
        version = int(connection.execute("PRAGMA user_version").fetchone()[0])
        for index in range(version, len(migrations)):
            connection.executescript(
                f"BEGIN IMMEDIATE; {migrations[index]}; PRAGMA user_version={index + 1}; COMMIT;"
            )
    except BaseException:
        connection.close()
        raise
    connection.row_factory = sqlite3.Row
    return connection


class Database:
    """One SQLite connection (WAL, ``synchronous=FULL``: a commit that returned is on disk) and
    the one thread that uses it.

    The thread takes functions from a queue and hands each result back to the caller's event
    loop (as aiosqlite does per statement; an executor's futures cost about twice as much per
    call). A function whose caller was cancelled before it started is not run.
    """

    def __init__(self, name: str) -> None:
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._connection: sqlite3.Connection | None = None
        # A daemon: a process whose start failed half way must not wait for it to exit.
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)

    @classmethod
    async def open(cls, path: Path, migrations: Sequence[str]) -> Database:
        """Open (creating) ``path`` and bring its schema up to date: ``migrations[i]`` moves
        ``user_version`` from i to i + 1."""
        db = cls(f"sqlite-{path.stem}")
        db._thread.start()

        def connect(_: sqlite3.Connection | None) -> None:
            db._connection = _connect(path, migrations)

        try:
            await db._submit(connect)
        except BaseException:
            db._queue.put(None)
            raise
        return db

    def _serve(self) -> None:
        while (job := self._queue.get()) is not None:
            loop, future, function = job
            if future.cancelled():
                continue
            try:
                result = function(self._connection)
            except BaseException as exc:  # handed to the caller, whatever it is
                loop.call_soon_threadsafe(_set_exception, future, exc)
            else:
                loop.call_soon_threadsafe(_set_result, future, result)

    async def _submit(self, function: Callable[[Any], T]) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put((loop, future, function))
        return await future

    async def run(self, function: Callable[[sqlite3.Connection], T]) -> T:
        """``function(connection)`` on the database's thread, after every function sent
        before it."""
        return await self._submit(function)

    async def close(self) -> None:
        """Wait for the functions sent so far, then close the connection and stop the thread."""
        await self.run(sqlite3.Connection.close)
        self._queue.put(None)
        self._thread.join()


_Job = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[[Any], Any]]


def _set_result(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _set_exception(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


def transaction(connection: sqlite3.Connection, body: Callable[[sqlite3.Connection], T]) -> T:
    """``body(connection)`` inside ``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back if it
    raises."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        result = body(connection)
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")
    return result
