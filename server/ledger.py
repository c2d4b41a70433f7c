"""The gateway's ledger: its copy of the RA's grants with its count of their uses, service
records, and the audit log.

One SQLite file with its own connection, and one lock: the steps that must be atomic (consume
quota, append the co-signed record to the log, mark the record logged) happen in one
transaction, so a crash leaves either all of them or none. The Merkle tree is rebuilt from the
stored entries at start (their hashes are recomputed, not trusted), then kept in memory.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import aiosqlite

from mobilesign import auditlog
from mobilesign.storage.sqlite import open_database

_MIGRATIONS = (
    """
    CREATE TABLE grants (
        grant_id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL,
        key_id TEXT NOT NULL,
        operations TEXT NOT NULL,
        not_before INTEGER NOT NULL,
        not_after INTEGER NOT NULL,
        quota_total INTEGER NOT NULL,
        quota_daily INTEGER NOT NULL,
        purpose TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        revoked_at INTEGER,
        used_total INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX grants_by_user ON grants(user_id);
    CREATE TABLE grant_days (
        grant_id TEXT NOT NULL REFERENCES grants(grant_id),
        day INTEGER NOT NULL,
        used INTEGER NOT NULL,
        PRIMARY KEY (grant_id, day)
    );
    CREATE TABLE records (
        record_id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL,
        user_key_id TEXT NOT NULL,
        grant_id TEXT NOT NULL REFERENCES grants(grant_id),
        record BLOB NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('prepared', 'logged', 'done', 'failed')),
        entry_index INTEGER,
        user_signature BLOB,
        result BLOB,
        reason TEXT,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE log_entries (
        entry_index INTEGER PRIMARY KEY,
        entry BLOB NOT NULL,
        created_at INTEGER NOT NULL
    )
    """,
    # Grants are the RA's, signed; the ledger keeps the signed bytes for the HSM proxy.
    """
    ALTER TABLE grants ADD COLUMN signed_grant BLOB NOT NULL DEFAULT x''
    """,
)


class QuotaExceeded(Exception):
    """The grant cannot take one more use now (quota, revocation or window)."""


@dataclass(frozen=True)
class GrantRow:
    """A grant and its use so far."""

    grant_id: str
    user_id: str
    key_id: str
    operations: tuple[str, ...]
    not_before: int
    not_after: int
    quota_total: int
    quota_daily: int
    purpose: str
    revoked: bool
    used_total: int
    used_today: int
    #: The RA's SignedGrant bytes.
    signed_grant: bytes


@dataclass(frozen=True)
class RecordRow:
    """A service record and how far it got."""

    record_id: str
    user_id: str
    user_key_id: str
    grant_id: str
    record: bytes
    state: str
    entry_index: int | None
    user_signature: bytes | None
    result: bytes | None
    reason: str | None


def utc_day(now: float) -> int:
    """Days since the epoch (UTC): the unit of daily quotas."""
    return int(now // 86_400)


class Ledger:
    """Grants, records and the log, behind one lock."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db
        self._lock = asyncio.Lock()
        self._nodes: dict[tuple[int, int], bytes] = {}
        self._range = auditlog.CompactRange()
        self._tree = auditlog.MerkleTree(lambda level, index: self._nodes[(level, index)])

    @classmethod
    async def open(cls, path: Path) -> Ledger:
        """Open the ledger and rebuild the Merkle tree from the stored entries."""
        ledger = cls(await open_database(path, _MIGRATIONS))
        try:
            expected = 0
            async with ledger._db.execute(
                "SELECT entry_index, entry FROM log_entries ORDER BY entry_index"
            ) as cursor:
                async for row in cursor:
                    if row["entry_index"] != expected:
                        raise RuntimeError(f"audit log entry {expected} is missing")
                    ledger._add_leaf(auditlog.leaf_hash(bytes(row["entry"])))
                    expected += 1
        except BaseException:
            await ledger.close()
            raise
        return ledger

    async def close(self) -> None:
        """Close the database."""
        await self._db.close()

    def _add_leaf(self, leaf: bytes) -> None:
        for level, index, value in self._range.append(leaf):
            self._nodes[(level, index)] = value

    # Grants ------------------------------------------------------------------------------
    async def remember_grant(self, grant: GrantRow, now: float) -> GrantRow:
        """Keep the RA's grant (once; a revocation the RA reports is kept too, and never
        undone) and return it with the ledger's counts of its uses (today: ``now``'s UTC day)."""
        async with self._lock:
            await self._db.execute(
                "INSERT INTO grants (grant_id, user_id, key_id, operations, not_before, not_after,"
                " quota_total, quota_daily, purpose, created_at, revoked_at, signed_grant)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT (grant_id) DO UPDATE SET"
                " revoked_at = COALESCE(grants.revoked_at, excluded.revoked_at)",
                (
                    grant.grant_id,
                    grant.user_id,
                    grant.key_id,
                    ",".join(grant.operations),
                    grant.not_before,
                    grant.not_after,
                    grant.quota_total,
                    grant.quota_daily,
                    grant.purpose,
                    int(now),
                    int(now) if grant.revoked else None,
                    grant.signed_grant,
                ),
            )
        found = await self.grant(grant.grant_id, now)
        assert found is not None
        return found

    async def signed_grant(self, grant_id: str) -> bytes:
        """The RA's signed bytes of a grant the ledger keeps."""
        async with (
            self._lock,
            self._db.execute(
                "SELECT signed_grant FROM grants WHERE grant_id = ?", (grant_id,)
            ) as cursor,
        ):
            row = await cursor.fetchone()
        return bytes(row["signed_grant"]) if row else b""

    def _grant(self, row: aiosqlite.Row, used_today: int) -> GrantRow:
        return GrantRow(
            grant_id=row["grant_id"],
            user_id=row["user_id"],
            key_id=row["key_id"],
            operations=tuple(row["operations"].split(",")),
            not_before=row["not_before"],
            not_after=row["not_after"],
            quota_total=row["quota_total"],
            quota_daily=row["quota_daily"],
            purpose=row["purpose"],
            revoked=row["revoked_at"] is not None,
            used_total=row["used_total"],
            used_today=used_today,
            signed_grant=bytes(row["signed_grant"]),
        )

    async def grant(self, grant_id: str, now: float) -> GrantRow | None:
        """One grant with its uses so far (in total, and on the UTC day of ``now``), or None."""
        day = utc_day(now)
        async with (
            self._lock,
            self._db.execute(
                "SELECT g.*, COALESCE(d.used, 0) AS used_today FROM grants g"
                " LEFT JOIN grant_days d ON d.grant_id = g.grant_id AND d.day = ?"
                " WHERE g.grant_id = ?",
                (day, grant_id),
            ) as cursor,
        ):
            row = await cursor.fetchone()
        return self._grant(row, row["used_today"]) if row else None

    # Records -----------------------------------------------------------------------------
    async def add_record(
        self, record_id: str, user_id: str, user_key_id: str, grant_id: str, record: bytes
    ) -> None:
        """Remember a prepared record (not yet signed, counted or logged)."""
        async with self._lock:
            await self._db.execute(
                "INSERT INTO records (record_id, user_id, user_key_id, grant_id, record, state,"
                " created_at) VALUES (?, ?, ?, ?, ?, 'prepared', ?)",
                (record_id, user_id, user_key_id, grant_id, record, int(time.time())),
            )

    async def record(self, record_id: str) -> RecordRow | None:
        """A record and its state, or None."""
        async with (
            self._lock,
            self._db.execute("SELECT * FROM records WHERE record_id = ?", (record_id,)) as cursor,
        ):
            row = await cursor.fetchone()
        if row is None:
            return None
        return RecordRow(
            record_id=row["record_id"],
            user_id=row["user_id"],
            user_key_id=row["user_key_id"],
            grant_id=row["grant_id"],
            record=bytes(row["record"]),
            state=row["state"],
            entry_index=row["entry_index"],
            user_signature=bytes(row["user_signature"]) if row["user_signature"] else None,
            result=bytes(row["result"]) if row["result"] is not None else None,
            reason=row["reason"],
        )

    async def _append(self, entry: bytes, now: int) -> int:
        index = self._range.size
        await self._db.execute(
            "INSERT INTO log_entries (entry_index, entry, created_at) VALUES (?, ?, ?)",
            (index, entry, now),
        )
        return index

    async def log_use(
        self, record_id: str, grant_id: str, entry: bytes, user_signature: bytes, now: float
    ) -> int:
        """In one transaction: consume one use of the grant (total and today), append the
        co-signed record to the log, and mark the record logged. Returns the entry index.

        Raises :class:`QuotaExceeded` (and changes nothing) when the grant cannot be used now:
        quota used up, revoked, or outside its window.
        """
        day = utc_day(now)
        async with self._lock:
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                # The grant is checked again here, in the transaction: a revocation or the end of
                # its window that landed since the caller looked still stops the use.
                async with self._db.execute(
                    "UPDATE grants SET used_total = used_total + 1"
                    " WHERE grant_id = ? AND used_total < quota_total AND revoked_at IS NULL"
                    " AND not_before <= ? AND ? < not_after RETURNING quota_daily",
                    (grant_id, int(now), int(now)),
                ) as cursor:
                    row = await cursor.fetchone()
                if row is None:
                    raise QuotaExceeded
                async with self._db.execute(
                    "INSERT INTO grant_days (grant_id, day, used) VALUES (?, ?, 1)"
                    " ON CONFLICT (grant_id, day) DO UPDATE SET used = used + 1"
                    " RETURNING used",
                    (grant_id, day),
                ) as cursor:
                    used = await cursor.fetchone()
                if used is None or used[0] > row[0]:
                    raise QuotaExceeded
                index = await self._append(entry, int(now))
                async with self._db.execute(
                    "UPDATE records SET state = 'logged', entry_index = ?, user_signature = ?"
                    " WHERE record_id = ? AND state = 'prepared' RETURNING 1",
                    (index, user_signature, record_id),
                ) as cursor:
                    if await cursor.fetchone() is None:
                        raise sqlite3.IntegrityError("record not in the prepared state")
                await self._db.execute("COMMIT")
            except BaseException:
                await self._db.execute("ROLLBACK")
                raise
            self._add_leaf(auditlog.leaf_hash(entry))
            return index

    async def log_outcome(
        self, record_id: str, entry: bytes, succeeded: bool, result: bytes | None, reason: str
    ) -> int:
        """In one transaction: append the outcome entry and close the record."""
        async with self._lock:
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                index = await self._append(entry, int(time.time()))
                await self._db.execute(
                    "UPDATE records SET state = ?, result = ?, reason = ? WHERE record_id = ?",
                    ("done" if succeeded else "failed", result, reason, record_id),
                )
                await self._db.execute("COMMIT")
            except BaseException:
                await self._db.execute("ROLLBACK")
                raise
            self._add_leaf(auditlog.leaf_hash(entry))
            return index

    # Log ---------------------------------------------------------------------------------
    @property
    def size(self) -> int:
        """Entries in the log."""
        return self._range.size

    def root(self, size: int | None = None) -> bytes:
        """The RFC 9162 root of the first ``size`` entries (default: all)."""
        return self._tree.root(self.size if size is None else size)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """Inclusion proof of entry ``index`` in the tree of ``size`` entries."""
        return self._tree.inclusion_proof(index, size)

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        """Consistency proof between two tree sizes."""
        return self._tree.consistency_proof(old_size, new_size)

    async def entry(self, index: int) -> bytes | None:
        """One entry's bytes, or None."""
        async with (
            self._lock,
            self._db.execute(
                "SELECT entry FROM log_entries WHERE entry_index = ?", (index,)
            ) as cursor,
        ):
            row = await cursor.fetchone()
        return bytes(row["entry"]) if row else None
