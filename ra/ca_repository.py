"""The CA's records: every certificate issued, revocations, the root and the current CRL."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import aiosqlite

from mobilesign.ca import CertificateRecord, SerialInUse
from mobilesign.storage.sqlite import open_database

_MIGRATIONS = (
    """
    CREATE TABLE certificates (
        serial TEXT PRIMARY KEY,
        kind TEXT NOT NULL CHECK (kind IN ('organisation', 'personal')),
        subject_key_id TEXT NOT NULL,
        holder TEXT NOT NULL,
        der BLOB NOT NULL,
        not_after INTEGER NOT NULL,
        issued_at INTEGER NOT NULL,
        revoked_at INTEGER,
        revocation_reason TEXT
    );
    CREATE INDEX certificates_by_key ON certificates(subject_key_id);
    CREATE TABLE authority (
        singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
        ca_key_id TEXT NOT NULL,
        root_der BLOB NOT NULL,
        crl_number INTEGER NOT NULL DEFAULT 0,
        crl_der BLOB,
        crl_issued_at INTEGER
    )
    """,
)


def _record(row: aiosqlite.Row) -> CertificateRecord:
    return CertificateRecord(
        serial=row["serial"],
        kind=row["kind"],
        subject_key_id=row["subject_key_id"],
        holder=row["holder"],
        der=bytes(row["der"]),
        not_after=row["not_after"],
        issued_at=row["issued_at"],
        revoked_at=row["revoked_at"],
        revocation_reason=row["revocation_reason"],
    )


class CaStore:
    """The CA's repository (:class:`mobilesign.ca.CertificateStore`) in SQLite."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    @classmethod
    async def open(cls, path: Path) -> CaStore:
        """Open (creating) the CA database."""
        return cls(await open_database(path, _MIGRATIONS))

    async def close(self) -> None:
        """Close the database."""
        await self._db.close()

    async def authority(self) -> tuple[str, bytes] | None:
        """(CA key id, root certificate DER), once the root exists."""
        async with self._db.execute("SELECT ca_key_id, root_der FROM authority") as cursor:
            row = await cursor.fetchone()
        return (row["ca_key_id"], bytes(row["root_der"])) if row else None

    async def set_authority(self, ca_key_id: str, root_der: bytes) -> None:
        """Record the root certificate (once)."""
        await self._db.execute(
            "INSERT INTO authority (singleton, ca_key_id, root_der) VALUES (1, ?, ?)",
            (ca_key_id, root_der),
        )

    async def add(self, record: CertificateRecord) -> None:
        """Record an issued certificate."""
        try:
            await self._db.execute(
                "INSERT INTO certificates (serial, kind, subject_key_id, holder, der, not_after,"
                " issued_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    record.serial,
                    record.kind,
                    record.subject_key_id,
                    record.holder,
                    record.der,
                    record.not_after,
                    record.issued_at,
                ),
            )
        except sqlite3.IntegrityError:
            raise SerialInUse from None

    async def get(self, serial: str) -> CertificateRecord | None:
        """The certificate with this serial, or None."""
        async with self._db.execute(
            "SELECT * FROM certificates WHERE serial = ?", (serial,)
        ) as cursor:
            row = await cursor.fetchone()
        return _record(row) if row else None

    async def latest_for_key(self, subject_key_id: str) -> CertificateRecord | None:
        """The most recently issued certificate for a key, or None."""
        async with self._db.execute(
            "SELECT * FROM certificates WHERE subject_key_id = ?"
            " ORDER BY issued_at DESC, rowid DESC LIMIT 1",
            (subject_key_id,),
        ) as cursor:
            row = await cursor.fetchone()
        return _record(row) if row else None

    async def any_revoked_for_key(self, subject_key_id: str) -> bool:
        """True when some certificate of this key was revoked."""
        async with self._db.execute(
            "SELECT 1 FROM certificates WHERE subject_key_id = ? AND revoked_at IS NOT NULL",
            (subject_key_id,),
        ) as cursor:
            return await cursor.fetchone() is not None

    async def revoke(self, serial: str, revoked_at: int, reason: str) -> bool:
        """Mark a certificate revoked; False when it was already revoked."""
        # All rows in one call: a RETURNING statement still open keeps its autocommit
        # transaction open, and another write on the connection would join it uncommitted.
        rows = await self._db.execute_fetchall(
            "UPDATE certificates SET revoked_at = ?, revocation_reason = ?"
            " WHERE serial = ? AND revoked_at IS NULL RETURNING 1",
            (revoked_at, reason, serial),
        )
        return bool(rows)

    async def revoked(self) -> list[CertificateRecord]:
        """Every revoked certificate, by revocation time."""
        async with self._db.execute(
            "SELECT * FROM certificates WHERE revoked_at IS NOT NULL ORDER BY revoked_at, serial"
        ) as cursor:
            return [_record(row) for row in await cursor.fetchall()]

    async def next_crl_number(self) -> int:
        """Allocate the next CRL number (monotonic, durable)."""
        rows = list(
            await self._db.execute_fetchall(
                "UPDATE authority SET crl_number = crl_number + 1 RETURNING crl_number"
            )
        )
        return int(rows[0][0])

    async def crl(self) -> tuple[bytes, int] | None:
        """(current CRL DER, issued at), once one was issued."""
        async with self._db.execute("SELECT crl_der, crl_issued_at FROM authority") as cursor:
            row = await cursor.fetchone()
        if row is None or row["crl_der"] is None:
            return None
        return bytes(row["crl_der"]), int(row["crl_issued_at"])

    async def set_crl(self, der: bytes, issued_at: int) -> None:
        """Replace the current CRL."""
        await self._db.execute(
            "UPDATE authority SET crl_der = ?, crl_issued_at = ?", (der, issued_at)
        )
