"""A store in PostgreSQL, through psycopg 3, as the repositories' functions expect it.

The connection is psycopg's synchronous one, used on the database's own thread exactly as the
SQLite connection is (:class:`~mobilesign.storage.database.Database`): one hop per transaction,
and the event loop never waits on the network. It is in autocommit mode, so a transaction is
what the repository's ``BEGIN`` ... ``COMMIT`` spans, as on SQLite; the SQL it is given is
rewritten once per statement text from SQLite's form (``?`` placeholders, ``BEGIN IMMEDIATE``).

Each store is a schema of its own in its service's database; the connection's ``search_path``
names only that schema. Migrations are applied at start under an advisory lock, so replicas
starting together apply each one once; a connection opened again after a break applies none.

Every session is bounded (:data:`SESSION_SETTINGS`, :data:`CLIENT_SETTINGS`) so that a holder
of the log's advisory lock that hangs or is cut off from the server loses its session, and with
it the lock, within about half a minute rather than when the kernel gives up on its connection.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.rows import RowFactory, RowMaker

from mobilesign.storage.connection import Cursor
from mobilesign.storage.schema import PostgresStore

#: The table, in each store's schema, that records how many migrations were applied.
_VERSION_TABLE = "schema_version"

#: Server settings of every session. A transaction left open by a hung or cut-off client ends
#: after 10 s, which frees the locks it holds (the log's advisory lock among them): the services'
#: transactions run whole on one thread and are never idle that long. A lock wait ends after
#: 30 s with an error instead of queueing behind a stuck holder for ever. The server's TCP
#: keepalives and user timeout end the session of a client that vanished mid-statement (about
#: 25 s). No ``statement_timeout``: a gateway reading its whole log at start may take longer.
SESSION_SETTINGS = {
    "idle_in_transaction_session_timeout": "10s",
    "lock_timeout": "30s",
    "tcp_keepalives_idle": "10",
    "tcp_keepalives_interval": "5",
    "tcp_keepalives_count": "3",
    "tcp_user_timeout": "25000",
}
#: libpq's side of the same: the client notices a server that vanished within about 25 s, and
#: gives up connecting to one that does not answer after 10 s (the store's call then fails).
CLIENT_SETTINGS = {
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 25000,
}


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
    """A connection in autocommit mode whose ``search_path`` is the store's schema alone, with
    :data:`SESSION_SETTINGS` and :data:`CLIENT_SETTINGS`."""
    settings = {"search_path": store.schema, **SESSION_SETTINGS}
    return psycopg.connect(
        make_conninfo(store.dsn, **CLIENT_SETTINGS),
        autocommit=True,
        row_factory=rows,
        options=" ".join(f"-c {name}={value}" for name, value in settings.items()),
        application_name=store.application,
    )


def connect(store: PostgresStore, migrations: Sequence[str]) -> PostgresConnection:
    """Connect to ``store``'s database, make its schema if missing, and apply the migrations
    it has not had yet (``migrations[i]`` moves it from version i to i + 1)."""
    raw = open_connection(store)
    try:
        # Waiting for another replica's migrations, or for the locks a migration's DDL needs,
        # may take longer than a bound fit for the services' own transactions.
        raw.execute("SET lock_timeout = 0")
        raw.execute("SELECT pg_advisory_lock(%s)", (lock_key(f"migrate:{store.schema}"),))
        try:
            _migrate(raw, store.schema, migrations)
        finally:
            raw.execute("SELECT pg_advisory_unlock(%s)", (lock_key(f"migrate:{store.schema}"),))
        raw.execute("RESET lock_timeout")  # back to SESSION_SETTINGS' value
    except BaseException:
        raw.close()
        raise
    return PostgresConnection(raw)


def reconnect(store: PostgresStore) -> PostgresConnection:
    """Connect to ``store``'s database again after a break, without migrations: they ran when
    the store was opened, and a schema a newer replica has since extended is still this code's
    (docs/deployment.md, *Database migrations*)."""
    return PostgresConnection(open_connection(store))


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
