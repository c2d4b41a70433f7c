"""Group commit: concurrent writers share one durable commit.

Every function handed to :meth:`GroupCommit.run` while a batch is being committed joins the
next batch. A batch is one transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``: one fsync, one hop to
the database's thread), each function inside its own savepoint: a function that raises is
rolled back alone and its caller gets the exception; the others go ahead. Each caller's result
is returned once its batch is on disk.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

from mobilesign.storage.database import Database

T = TypeVar("T")

_Pending = tuple[Callable[[sqlite3.Connection], Any], "asyncio.Future[Any]"]


class GroupCommit:
    """Batches of writes on one :class:`~mobilesign.storage.database.Database`."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._queue: list[_Pending] = []
        self._writer: asyncio.Task[None] | None = None
        self.batches = 0  # committed batches (for tests and measurements)

    async def run(self, function: Callable[[sqlite3.Connection], T]) -> T:
        """``function(connection)`` in the next batch; its result once the batch is durable."""
        # A caller that goes away does not stop its batch: the writer is its own task.
        return await asyncio.shield(self.submit(function))

    def submit(self, function: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        """``function(connection)`` in the next batch, without waiting: the future is done
        once the batch is durable (a task of its own is not needed to write in the
        background; cancelling the future does not take the function out of its batch)."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append((function, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_batches())
        return future

    async def drain(self) -> None:
        """Wait for the batch being written (before the database is closed)."""
        if self._writer is not None:
            await asyncio.gather(self._writer, return_exceptions=True)

    async def _write_batches(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            try:
                outcomes = await self._db.run(
                    functools.partial(_run_batch, functions=[f for f, _ in batch])
                )
            except Exception as exc:  # the commit itself failed: nobody's write holds
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self.batches += 1
            for (_, future), (succeeded, value) in zip(batch, outcomes, strict=True):
                if future.done():
                    continue
                if succeeded:
                    future.set_result(value)
                else:
                    future.set_exception(value)


def _run_batch(
    c: sqlite3.Connection, *, functions: list[Callable[[sqlite3.Connection], Any]]
) -> list[tuple[bool, Any]]:
    outcomes: list[tuple[bool, Any]] = []
    c.execute("BEGIN IMMEDIATE")
    try:
        for function in functions:
            c.execute("SAVEPOINT one")
            try:
                outcomes.append((True, function(c)))
            except Exception as refused:
                c.execute("ROLLBACK TO one")
                outcomes.append((False, refused))
            c.execute("RELEASE one")
        c.execute("COMMIT")
    except BaseException:
        c.execute("ROLLBACK")
        raise
    return outcomes
