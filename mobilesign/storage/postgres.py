"""A store in PostgreSQL, through psycopg 3, as the repositories' functions expect it.

The connection is psycopg's synchronous one, used on the database's own thread exactly as the
SQLite connection is (:class:`~mobilesign.storage.database.Database`): one hop per transaction,
and the event loop never waits on the network. It is in autocommit mode, so a transaction is
what the repository's ``BEGIN`` ... ``COMMIT`` spans, as on SQLite; the SQL it is given is
rewritten once per statement text from SQLite's form (``?`` placeholders, ``BEGIN IMMEDIATE``).

Each store is a schema of its own in its service's database; the connection's ``search_path``
names only that schema. Migrations are applied at start under an advisory lock, so replicas
starting together apply each one once.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import RowFactory, RowMaker

from mobilesign.storage.connection import Cursor
from mobilesign.storage.schema import PostgresStore

#: The table, in each store's schema, that records how many migrations were applied.
_VERSION_TABLE = "schema_version"


class Row:
    """A row read by position or by column name (as :class:`sqlite3.Row`)."""

    __slots__ = ("_columns", "_values")

    def __init__(self, values: Sequence[Any], columns: dict[str, int]) -> None:
        self._values = values
        self._columns = columns

    def __getitem__(self, key: int | str) -> Any:
        if isinstance(key, str):
            return self._values[self._columns[key]]
        return self._values[key]

    def __len__(self) -> int:
        return len(self._values)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def keys(self) -> list[str]:
        """The column names, in order."""
        return list(self._columns)


def _rows(cursor: psycopg.Cursor[Any]) -> RowMaker[Row]:
    columns = {column.name: i for i, column in enumerate(cursor.description or ())}
    return lambda values: Row(values, columns)


def _postgres_sql(statement: str) -> str:
    if statement.strip().upper() == "BEGIN IMMEDIATE":
        # Writers are kept apart by row locks (and, where a store needs one writer, by an
        # advisory lock: mobilesign.storage.database.exclusive).
        return "BEGIN"
    return statement.replace("%", "%%").replace("?", "%s")


class PostgresConnection:
    """A psycopg connection that reads the repositories' SQL (see the module's docstring)."""

    def __init__(self, raw: psycopg.Connection[Any]) -> None:
        self.raw = raw
        self._statements: dict[str, str] = {}

    def _sql(self, statement: str) -> str:
        translated = self._statements.get(statement)
        if translated is None:
            translated = self._statements[statement] = _postgres_sql(statement)
        return translated

    def execute(self, statement: str, parameters: Sequence[Any] = (), /) -> Cursor:
        """Run one statement."""
        return self.raw.execute(self._sql(statement), parameters or None)

    def executemany(self, statement: str, parameters: Iterable[Sequence[Any]], /) -> Cursor:
        """Run one statement once per parameter row."""
        cursor = self.raw.cursor()
        cursor.executemany(self._sql(statement), parameters)
        return cursor

    def close(self) -> None:
        """Close the connection (a transaction left open is rolled back by the server)."""
        self.raw.close()


def lock_key(name: str) -> int:
    """The advisory lock number for ``name`` (advisory locks take a bigint; any stable number
    will do)."""
    return zlib.crc32(name.encode())


def open_connection(store: PostgresStore, rows: RowFactory[Any] = _rows) -> psycopg.Connection[Any]:
    """A connection in autocommit mode whose ``search_path`` is the store's schema alone."""
    return psycopg.connect(
        store.dsn,
        autocommit=True,
        row_factory=rows,
        options=f"-c search_path={store.schema}",
        application_name=store.application,
    )


def connect(store: PostgresStore, migrations: Sequence[str]) -> PostgresConnection:
    """Connect to ``store``'s database, make its schema if missing, and apply the migrations
    it has not had yet (``migrations[i]`` moves it from version i to i + 1)."""
    raw = open_connection(store)
    try:
        raw.execute("SELECT pg_advisory_lock(%s)", (lock_key(f"migrate:{store.schema}"),))
        try:
            _migrate(raw, store.schema, migrations)
        finally:
            raw.execute("SELECT pg_advisory_unlock(%s)", (lock_key(f"migrate:{store.schema}"),))
    except BaseException:
        raw.close()
        raise
    return PostgresConnection(raw)


def _migrate(raw: psycopg.Connection[Any], schema: str, migrations: Sequence[str]) -> None:
    raw.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
    raw.execute(
        sql.SQL("CREATE TABLE IF NOT EXISTS {} (version INTEGER NOT NULL)").format(
            sql.Identifier(_VERSION_TABLE)
        )
    )
    row = raw.execute(sql.SQL("SELECT version FROM {}").format(sql.Identifier(_VERSION_TABLE)))
    found = row.fetchone()
    version = int(found[0]) if found else 0
    if version > len(migrations):
        raise RuntimeError(
            f"the {schema} schema is at version {version}, newer than this code knows"
            f" ({len(migrations)}): upgrade the service"
        )
    for index in range(version, len(migrations)):
        with raw.transaction():
            for statement in _statements(migrations[index]):
                raw.execute(statement)
            raw.execute(sql.SQL("DELETE FROM {}").format(sql.Identifier(_VERSION_TABLE)))
            raw.execute(
                sql.SQL("INSERT INTO {} (version) VALUES (%s)").format(
                    sql.Identifier(_VERSION_TABLE)
                ),
                (index + 1,),
            )


def _statements(script: str) -> list[str]:
    # The migrations are this code's own DDL: no semicolon inside a literal.
    return [part.strip() for part in script.split(";") if part.strip()]
