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
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

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
    the one thread that uses it."""

    def __init__(self, executor: ThreadPoolExecutor, connection: sqlite3.Connection) -> None:
        self._executor = executor
        self._connection = connection

    @classmethod
    async def open(cls, path: Path, migrations: Sequence[str]) -> Database:
        """Open (creating) ``path`` and bring its schema up to date: ``migrations[i]`` moves
        ``user_version`` from i to i + 1."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sqlite-{path.stem}")
        try:
            connection = await asyncio.get_running_loop().run_in_executor(
                executor, _connect, path, migrations
            )
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(executor, connection)

    async def run(self, function: Callable[[sqlite3.Connection], T]) -> T:
        """``function(connection)`` on the database's thread, after every function sent
        before it."""
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, function, self._connection
        )

    async def close(self) -> None:
        """Wait for the functions sent so far, then close the connection and stop the thread."""
        await self.run(sqlite3.Connection.close)
        self._executor.shutdown(wait=True)


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
