"""Where a store lives, and its tables as a versioned history for each back end."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

#: A PostgreSQL schema name this code makes (never a user's input).
_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")


@dataclass(frozen=True)
class Schema:
    """A store's tables: ``sqlite[i]`` and ``postgresql[i]`` each move the store from version i
    to i + 1 on their back end.

    The two histories are separate because SQLite files made by earlier versions carry their
    own (columns added, tables dropped); a PostgreSQL store starts from today's tables.
    """

    sqlite: tuple[str, ...]
    postgresql: tuple[str, ...]


@dataclass(frozen=True)
class PostgresStore:
    """A store in a PostgreSQL database: the connection string (libpq form, a ``postgresql://``
    URL or ``key=value`` pairs) and the schema its tables live in."""

    dsn: str
    schema: str
    #: What the server shows for the connection (``pg_stat_activity.application_name``).
    application: str = "mobilesign"

    def __repr__(self) -> str:
        # The connection string may carry a password.
        return f"PostgresStore(schema={self.schema!r})"


#: A SQLite file, or a schema in PostgreSQL.
Location = Path | PostgresStore

#: What ``database =`` begins with to mean PostgreSQL.
_POSTGRES_PREFIXES = ("postgresql://", "postgres://")


def location(
    database: str, directory: Path, name: str, application: str = "mobilesign"
) -> Location:
    """Where the store ``name`` of a service lives: ``<directory>/<name>.db`` when the service's
    ``database`` setting is empty, else the schema ``name`` in that PostgreSQL database (its
    connections named ``application``)."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"not a usable store name: {name!r}")
    if not database:
        return directory / f"{name}.db"
    if not database.startswith(_POSTGRES_PREFIXES):
        raise ValueError("database must be empty (SQLite) or a postgresql:// URL")
    return PostgresStore(database, name, application)
