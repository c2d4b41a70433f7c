"""What a repository's function sees of its database, whichever the back end.

A repository writes each transaction as one plain function of a :class:`Connection` (run on the
database's own thread: :class:`~mobilesign.storage.database.Database`). The SQL is the subset
that SQLite and PostgreSQL read alike, with ``?`` placeholders: ``INSERT ... ON CONFLICT``,
``RETURNING``, ``SAVEPOINT`` / ``ROLLBACK TO`` / ``RELEASE``, ``BEGIN IMMEDIATE`` (plain ``BEGIN``
on PostgreSQL, where row locks do what SQLite's single writer does). Rows are read by column
name or by position.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol

import psycopg


class Cursor(Protocol):
    """The rows of one statement."""

    def fetchone(self) -> Any:
        """The next row, or None."""

    def fetchall(self) -> list[Any]:
        """Every remaining row."""

    def __iter__(self) -> Iterator[Any]:
        """The remaining rows, one by one."""


class Connection(Protocol):
    """A connection in autocommit mode: a transaction is what ``BEGIN`` ... ``COMMIT`` spans."""

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Cursor:
        """Run one statement."""

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> Cursor:
        """Run one statement once per parameter row."""


#: A constraint (unique key, foreign key, check) refused a write, on either back end.
IntegrityError: tuple[type[Exception], ...] = (sqlite3.IntegrityError, psycopg.IntegrityError)
