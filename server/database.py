"""The gateway's database: one SQLite file, one schema history (sessions and the login
challenges answered; the ledger is a file of its own)."""

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
        expires_at INTEGER NOT NULL
    )
    """,
    """
    ALTER TABLE tickets ADD COLUMN certificate_serial TEXT;
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
    )
    """,
    """
    CREATE TABLE sessions (
        token_sha256 BLOB PRIMARY KEY,
        user_key_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        expires_at INTEGER NOT NULL
    )
    """,
    # Users, tickets and organisations belong to the RA now (its own database); the gateway
    # keeps no copy, so that nothing it holds can speak for identity.
    """
    DROP TABLE organisation_keys;
    DROP TABLE organisations;
    DROP TABLE tickets;
    DROP TABLE users
    """,
    # Login challenges answered (server/sessions.py), shared by the gateways that share this
    # database: the primary key makes each challenge good for one session. ``expires_at`` is
    # the Unix second from which no gateway takes the challenge any more.
    """
    CREATE TABLE used_challenges (
        challenge_sha256 BLOB PRIMARY KEY,
        user_key_id TEXT NOT NULL,
        expires_at INTEGER NOT NULL
    );
    CREATE INDEX used_challenges_by_key ON used_challenges(user_key_id)
    """,
)


_POSTGRESQL = (
    """
    CREATE TABLE sessions (
        token_sha256 BYTEA PRIMARY KEY,
        user_key_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        expires_at BIGINT NOT NULL
    );
    CREATE TABLE used_challenges (
        challenge_sha256 BYTEA PRIMARY KEY,
        user_key_id TEXT NOT NULL,
        expires_at BIGINT NOT NULL
    );
    CREATE INDEX used_challenges_by_key ON used_challenges(user_key_id)
    """,
)
SCHEMA = Schema(sqlite=_SQLITE, postgresql=_POSTGRESQL)


async def open_gateway_db(where: Location) -> Database:
    """Open (creating or upgrading) the gateway database."""
    return await Database.open(where, SCHEMA)
