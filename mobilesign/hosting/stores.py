"""Where a service keeps each of its stores, from its ``database`` setting."""

from __future__ import annotations

import os
from pathlib import Path

from mobilesign.hosting.config import ConfigError
from mobilesign.storage.schema import Location, location


def store_location(service: str, database: str, directory: Path, name: str) -> Location:
    """``<directory>/<name>.db`` when ``database`` is empty, else the schema ``name`` in that
    PostgreSQL database, the connections named ``<instance>/<name>`` (the instance is
    ``MOBILESIGN_INSTANCE``, or the service); :class:`ConfigError` for any other value (the
    value is not repeated: a connection string may hold a password)."""
    instance = os.environ.get("MOBILESIGN_INSTANCE") or service
    try:
        return location(database, directory, name, f"{instance}/{name}")
    except ValueError as exc:
        raise ConfigError(f"database: {exc}") from None
