"""The RA's database: one store (a SQLite file, or the ``ra`` schema in the RA's PostgreSQL
database), one schema history, several repositories (the CA's certificates are in a store of
their own, ``ca``)."""

from __future__ import annotations

from mobilesign.storage.database import Database
from mobilesign.storage.schema import Location, Schema

_SQLITE = (
    """
    CREATE TABLE users (
        user_id TEXT PRIMARY KEY,
        display_name TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE tickets (
        ticket_id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL REFERENCES users(user_id),
        issued_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        additional_key INTEGER NOT NULL,
        activation_code BLOB NOT NULL,
        certificate_serial TEXT
    );
    CREATE INDEX tickets_by_user ON tickets(user_id);
    CREATE TABLE organisations (
        organisation_id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE organisation_keys (
        key_id TEXT PRIMARY KEY,
        organisation_id TEXT NOT NULL REFERENCES organisations(organisation_id),
        label TEXT NOT NULL UNIQUE,
        algorithm INTEGER NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE grants (
        grant_id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL REFERENCES users(user_id),
        key_id TEXT NOT NULL REFERENCES organisation_keys(key_id),
        signed_grant BLOB NOT NULL,
        created_at INTEGER NOT NULL,
        revoked_at INTEGER
    );
    CREATE INDEX grants_by_user ON grants(user_id);
    CREATE INDEX grants_by_key ON grants(key_id)
    """,
    # Organisation keys asked of the token and not yet recorded (see ra/key_creations.py).
    """
    CREATE TABLE organisation_key_creations (
        label TEXT PRIMARY KEY,
        organisation_id TEXT NOT NULL REFERENCES organisations(organisation_id),
        algorithm INTEGER NOT NULL,
        started_at INTEGER NOT NULL
    )
    """,
)


_POSTGRESQL = (
    """
    CREATE TABLE users (
        user_id TEXT PRIMARY KEY,
        display_name TEXT NOT NULL,
        created_at BIGINT NOT NULL
    );
    CREATE TABLE tickets (
        ticket_id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL REFERENCES users(user_id),
        issued_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
        additional_key BIGINT NOT NULL,
        activation_code BYTEA NOT NULL,
        certificate_serial TEXT
    );
    CREATE INDEX tickets_by_user ON tickets(user_id);
    CREATE TABLE organisations (
        organisation_id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        created_at BIGINT NOT NULL
    );
    CREATE TABLE organisation_keys (
        key_id TEXT PRIMARY KEY,
        organisation_id TEXT NOT NULL REFERENCES organisations(organisation_id),
        label TEXT NOT NULL UNIQUE,
        algorithm BIGINT NOT NULL,
        created_at BIGINT NOT NULL
    );
    CREATE TABLE grants (
        grant_id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL REFERENCES users(user_id),
        key_id TEXT NOT NULL REFERENCES organisation_keys(key_id),
        signed_grant BYTEA NOT NULL,
        created_at BIGINT NOT NULL,
        revoked_at BIGINT
    );
    CREATE INDEX grants_by_user ON grants(user_id);
    CREATE INDEX grants_by_key ON grants(key_id);
    CREATE TABLE organisation_key_creations (
        label TEXT PRIMARY KEY,
        organisation_id TEXT NOT NULL REFERENCES organisations(organisation_id),
        algorithm BIGINT NOT NULL,
        started_at BIGINT NOT NULL
    )
    """,
)
SCHEMA = Schema(sqlite=_SQLITE, postgresql=_POSTGRESQL)


async def open_ra_db(where: Location) -> Database:
    """Open (creating or upgrading) the RA database."""
    return await Database.open(where, SCHEMA)
