"""The cosigner's repository: enrolled keys (shares sealed by the HSM), PIN failure counts,
consumed tickets, and every signing the cosigner took part in. Durable commits, on SQLite or
PostgreSQL; several cosigners may share one PostgreSQL store (every check is one statement or
one transaction in it, never a copy in memory).

Each method is one function on the database's thread (one hop); the signings of every session
share commits (group commit: one fsync per batch). A statement's rows are fetched to the end:
one still in progress would keep its autocommit transaction open past the function.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from mobilesign.storage.connection import Connection, IntegrityError
from mobilesign.storage.database import Database
from mobilesign.storage.group_commit import GroupCommit
from mobilesign.storage.schema import Location, Schema

_SQLITE = (
    """
    CREATE TABLE keys (
        key_id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL,
        scheme TEXT NOT NULL,
        sealed_key_package BLOB NOT NULL,
        sealed_pin_verifier BLOB NOT NULL,
        device_public_key BLOB NOT NULL,
        failed_pin_attempts INTEGER NOT NULL DEFAULT 0,
        locked INTEGER NOT NULL DEFAULT 0,
        ticket_id TEXT NOT NULL UNIQUE,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE signings (
        signing_id INTEGER PRIMARY KEY AUTOINCREMENT,
        key_id TEXT NOT NULL REFERENCES keys(key_id),
        message_sha256 BLOB NOT NULL,
        -- The phone's hiding commitment: unique, so a replayed request is refused even in a
        -- later session.
        phone_commitment BLOB NOT NULL UNIQUE,
        -- D1 || E1 || D2 || E2: both parties' nonce commitments (32-byte points).
        commitments BLOB NOT NULL,
        signature BLOB,
        created_at INTEGER NOT NULL,
        completed_at INTEGER
    );
    CREATE INDEX signings_by_key ON signings(key_id)
    """,
)
_POSTGRESQL = (
    """
    CREATE TABLE keys (
        key_id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL,
        scheme TEXT NOT NULL,
        sealed_key_package BYTEA NOT NULL,
        sealed_pin_verifier BYTEA NOT NULL,
        device_public_key BYTEA NOT NULL,
        failed_pin_attempts BIGINT NOT NULL DEFAULT 0,
        locked BIGINT NOT NULL DEFAULT 0,
        ticket_id TEXT NOT NULL UNIQUE,
        created_at BIGINT NOT NULL
    );
    CREATE TABLE signings (
        signing_id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        key_id TEXT NOT NULL REFERENCES keys(key_id),
        message_sha256 BYTEA NOT NULL,
        phone_commitment BYTEA NOT NULL UNIQUE,
        commitments BYTEA NOT NULL,
        signature BYTEA,
        created_at BIGINT NOT NULL,
        completed_at BIGINT
    );
    CREATE INDEX signings_by_key ON signings(key_id)
    """,
)
SCHEMA = Schema(sqlite=_SQLITE, postgresql=_POSTGRESQL)


class TicketAlreadyUsed(Exception):
    """A key was already enrolled with this ticket."""


class KeyExists(Exception):
    """A key with this id is enrolled already."""


class CommitmentReplayed(Exception):
    """The phone's nonce commitment was seen in an earlier signing."""


@dataclass(frozen=True)
class StoredKey:
    """A key as the cosigner keeps it; secret parts are sealed blobs."""

    key_id: str
    user_id: str
    scheme: str
    sealed_key_package: bytes
    sealed_pin_verifier: bytes
    device_public_key: bytes
    failed_pin_attempts: int
    locked: bool
    ticket_id: str
    created_at: int


@dataclass(frozen=True)
class Signing:
    """One signing the cosigner took part in."""

    signing_id: int
    key_id: str
    message_sha256: bytes
    commitments: bytes
    signature: bytes | None
    created_at: int


class KeyStore:
    """Queries over the cosigner database. Every write is one statement or one transaction."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._signings = GroupCommit(db)

    @classmethod
    async def open(cls, where: Location) -> KeyStore:
        """Open (creating or upgrading) the store."""
        return cls(await Database.open(where, SCHEMA))

    async def close(self) -> None:
        """Finish the signings being written, then close the database."""
        await self._signings.drain()
        await self._db.close()

    async def add(self, key: StoredKey) -> None:
        """Store a new key, consuming its ticket; :class:`TicketAlreadyUsed` if consumed."""
        try:
            await self._db.run(
                lambda c: c.execute(
                    "INSERT INTO keys (key_id, user_id, scheme, sealed_key_package,"
                    " sealed_pin_verifier, device_public_key, failed_pin_attempts, locked,"
                    " ticket_id, created_at) VALUES (?, ?, ?, ?, ?, ?, 0, 0, ?, ?)",
                    (
                        key.key_id,
                        key.user_id,
                        key.scheme,
                        key.sealed_key_package,
                        key.sealed_pin_verifier,
                        key.device_public_key,
                        key.ticket_id,
                        key.created_at,
                    ),
                )
            )
        except IntegrityError as exc:
            if "ticket_id" in str(exc):
                raise TicketAlreadyUsed from None
            raise KeyExists from None

    async def ticket_used(self, ticket_id: str) -> bool:
        """True when a key was enrolled with ``ticket_id``."""
        rows = await self._db.run(
            lambda c: c.execute("SELECT 1 FROM keys WHERE ticket_id = ?", (ticket_id,)).fetchall()
        )
        return bool(rows)

    async def get(self, key_id: str) -> StoredKey | None:
        """The key with this id, or None."""
        rows = await self._db.run(
            lambda c: c.execute("SELECT * FROM keys WHERE key_id = ?", (key_id,)).fetchall()
        )
        if not rows:
            return None
        row = rows[0]
        return StoredKey(
            key_id=row["key_id"],
            user_id=row["user_id"],
            scheme=row["scheme"],
            sealed_key_package=bytes(row["sealed_key_package"]),
            sealed_pin_verifier=bytes(row["sealed_pin_verifier"]),
            device_public_key=bytes(row["device_public_key"]),
            failed_pin_attempts=row["failed_pin_attempts"],
            locked=bool(row["locked"]),
            ticket_id=row["ticket_id"],
            created_at=row["created_at"],
        )

    async def reserve_pin_attempt(self, key_id: str, max_attempts: int) -> int | None:
        """Count one PIN attempt before its proof is checked (durably, so that a crash or a
        flood of sessions cannot check more than ``max_attempts`` proofs); the attempt's number,
        or None when the key is locked or has no attempt left."""
        rows = await self._db.run(
            lambda c: c.execute(
                "UPDATE keys SET failed_pin_attempts = failed_pin_attempts + 1"
                " WHERE key_id = ? AND locked = 0 AND failed_pin_attempts < ?"
                " RETURNING failed_pin_attempts",
                (key_id, max_attempts),
            ).fetchall()
        )
        return int(rows[0][0]) if rows else None

    async def lock(self, key_id: str) -> None:
        """Lock the key (its last attempt failed); an administrator unlocks it."""
        await self._db.run(
            lambda c: c.execute("UPDATE keys SET locked = 1 WHERE key_id = ?", (key_id,))
        )

    async def reset_pin_failures(self, key_id: str) -> None:
        """A correct PIN proof ends the run of consecutive failures (its own attempt too)."""
        await self._db.run(
            lambda c: c.execute(
                "UPDATE keys SET failed_pin_attempts = 0"
                " WHERE key_id = ? AND failed_pin_attempts > 0 AND locked = 0",
                (key_id,),
            )
        )

    async def unlock(self, key_id: str) -> bool:
        """Clear a lockout; False when there is no such key."""
        rows = await self._db.run(
            lambda c: c.execute(
                "UPDATE keys SET failed_pin_attempts = 0, locked = 0 WHERE key_id = ? RETURNING 1",
                (key_id,),
            ).fetchall()
        )
        return bool(rows)

    async def begin_signing(
        self, key_id: str, message_sha256: bytes, commitments: bytes, now: int
    ) -> int:
        """Record a signing before the cosigner releases its share; returns its id.

        ``commitments`` is D1 || E1 || D2 || E2; :class:`CommitmentReplayed` if D1 was used.
        """

        def record(c: Connection) -> int:
            try:
                (row,) = c.execute(
                    "INSERT INTO signings (key_id, message_sha256, phone_commitment, commitments,"
                    " created_at) VALUES (?, ?, ?, ?, ?) RETURNING signing_id",
                    (key_id, message_sha256, commitments[:32], commitments, now),
                ).fetchall()
            except IntegrityError:
                raise CommitmentReplayed from None
            return int(row[0])

        # Signings of every session share commits: one fsync per batch, not per signature.
        return await self._signings.run(record)

    def complete_signing(self, signing_id: int, signature: bytes, now: int) -> asyncio.Future[None]:
        """Attach the final signature the phone reported, in the next batch of signings; the
        future is done once it is durable."""

        def complete(c: Connection) -> None:
            c.execute(
                "UPDATE signings SET signature = ?, completed_at = ? WHERE signing_id = ?",
                (signature, now, signing_id),
            )

        return self._signings.submit(complete)

    async def signings(self, key_id: str) -> list[Signing]:
        """Every signing recorded for a key, oldest first."""
        rows = await self._db.run(
            lambda c: c.execute(
                "SELECT signing_id, key_id, message_sha256, commitments, signature, created_at"
                " FROM signings WHERE key_id = ? ORDER BY signing_id",
                (key_id,),
            ).fetchall()
        )
        return [
            Signing(
                r["signing_id"],
                r["key_id"],
                bytes(r["message_sha256"]),
                bytes(r["commitments"]),
                bytes(r["signature"]) if r["signature"] is not None else None,
                r["created_at"],
            )
            for r in rows
        ]
