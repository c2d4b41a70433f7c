"""The gateway's database: one store (a SQLite file, or the ``gateway`` schema in the gateway's
PostgreSQL database, shared by every gateway), one schema history (sessions, the login challenges
answered, the CSC endpoint's applications and approvals, and a check of each key the gateways
sharing it must share; the ledger is a store of its own)."""

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
    # The CSC endpoint (server/csc/): registered applications (secrets and tokens as SHA-256),
    # and approvals with the co-signed records they keep until signHash runs them.
    """
    CREATE TABLE csc_applications (
        client_id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        secret_sha256 BLOB NOT NULL,
        grant_ids TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        revoked INTEGER NOT NULL
    );
    CREATE TABLE csc_tokens (
        token_sha256 BLOB PRIMARY KEY,
        client_id TEXT NOT NULL,
        expires_at INTEGER NOT NULL
    );
    CREATE TABLE approvals (
        approval_id TEXT PRIMARY KEY,
        client_id TEXT NOT NULL,
        application TEXT NOT NULL,
        grant_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        digests TEXT NOT NULL,
        purpose TEXT NOT NULL,
        label TEXT NOT NULL,
        state TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        records TEXT,
        user_key_id TEXT,
        sad_sha256 BLOB UNIQUE,
        sad_expires_at INTEGER
    );
    CREATE INDEX approvals_by_user ON approvals(user_id, state);
    CREATE TABLE approval_records (
        record_id TEXT PRIMARY KEY,
        approval_id TEXT NOT NULL
    )
    """,
    """
    CREATE TABLE shared_keys (
        name TEXT PRIMARY KEY,
        key_check BLOB NOT NULL
    )
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
    """
    CREATE TABLE csc_applications (
        client_id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        secret_sha256 BYTEA NOT NULL,
        grant_ids TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        revoked BIGINT NOT NULL
    );
    CREATE TABLE csc_tokens (
        token_sha256 BYTEA PRIMARY KEY,
        client_id TEXT NOT NULL,
        expires_at BIGINT NOT NULL
    );
    CREATE TABLE approvals (
        approval_id TEXT PRIMARY KEY,
        client_id TEXT NOT NULL,
        application TEXT NOT NULL,
        grant_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        digests TEXT NOT NULL,
        purpose TEXT NOT NULL,
        label TEXT NOT NULL,
        state TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
        records TEXT,
        user_key_id TEXT,
        sad_sha256 BYTEA UNIQUE,
        sad_expires_at BIGINT
    );
    CREATE INDEX approvals_by_user ON approvals(user_id, state);
    CREATE TABLE approval_records (
        record_id TEXT PRIMARY KEY,
        approval_id TEXT NOT NULL
    )
    """,
    """
    CREATE TABLE shared_keys (
        name TEXT PRIMARY KEY,
        key_check BYTEA NOT NULL
    )
    """,
)
SCHEMA = Schema(sqlite=_SQLITE, postgresql=_POSTGRESQL)


async def open_gateway_db(where: Location) -> Database:
    """Open (creating or upgrading) the gateway database."""
    return await Database.open(where, SCHEMA)
