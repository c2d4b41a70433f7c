"""The CA's records: every certificate issued, revocations, the root and the current CRL.

Each method is one statement in autocommit mode (its own durable transaction), one function on
the database's thread, its rows fetched to the end: a statement still in progress would keep its
autocommit transaction open past the function, and a write after it would join it uncommitted.
"""

from __future__ import annotations

from typing import Any

from mobilesign.ca import CertificateRecord, SerialInUse
from mobilesign.storage.connection import IntegrityError
from mobilesign.storage.database import Database
from mobilesign.storage.schema import Location, Schema

_SQLITE = (
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
_POSTGRESQL = (
    """
    CREATE TABLE certificates (
        serial TEXT PRIMARY KEY,
        kind TEXT NOT NULL CHECK (kind IN ('organisation', 'personal')),
        subject_key_id TEXT NOT NULL,
        holder TEXT NOT NULL,
        der BYTEA NOT NULL,
        not_after BIGINT NOT NULL,
        issued_at BIGINT NOT NULL,
        revoked_at BIGINT,
        revocation_reason TEXT
    );
    CREATE INDEX certificates_by_key ON certificates(subject_key_id);
    CREATE TABLE authority (
        singleton BIGINT PRIMARY KEY CHECK (singleton = 1),
        ca_key_id TEXT NOT NULL,
        root_der BYTEA NOT NULL,
        crl_number BIGINT NOT NULL DEFAULT 0,
        crl_der BYTEA,
        crl_issued_at BIGINT
    )
    """,
)
SCHEMA = Schema(sqlite=_SQLITE, postgresql=_POSTGRESQL)


def _record(row: Any) -> CertificateRecord:
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

    def __init__(self, db: Database) -> None:
        self._db = db

    @classmethod
    async def open(cls, where: Location) -> CaStore:
        """Open (creating) the CA database."""
        return cls(await Database.open(where, SCHEMA))

    async def close(self) -> None:
        """Close the database."""
        await self._db.close()

    async def authority(self) -> tuple[str, bytes] | None:
        """(CA key id, root certificate DER), once the root exists."""
        rows = await self._db.run(
            lambda c: c.execute("SELECT ca_key_id, root_der FROM authority").fetchall()
        )
        return (rows[0]["ca_key_id"], bytes(rows[0]["root_der"])) if rows else None

    async def set_authority(self, ca_key_id: str, root_der: bytes) -> None:
        """Record the root certificate (once)."""
        await self._db.run(
            lambda c: c.execute(
                "INSERT INTO authority (singleton, ca_key_id, root_der) VALUES (1, ?, ?)",
                (ca_key_id, root_der),
            )
        )

    async def add(self, record: CertificateRecord) -> None:
        """Record an issued certificate."""
        try:
            await self._db.run(
                lambda c: c.execute(
                    "INSERT INTO certificates (serial, kind, subject_key_id, holder, der,"
                    " not_after, issued_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
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
            )
        except IntegrityError:
            raise SerialInUse from None

    async def get(self, serial: str) -> CertificateRecord | None:
        """The certificate with this serial, or None."""
        rows = await self._db.run(
            lambda c: c.execute("SELECT * FROM certificates WHERE serial = ?", (serial,)).fetchall()
        )
        return _record(rows[0]) if rows else None

    async def latest_for_key(self, subject_key_id: str) -> CertificateRecord | None:
        """The most recently issued certificate for a key, or None."""
        # Ties within one second: the RA certifies a key again only once its certificate is
        # revoked, so the later is the unrevoked one, or the one revoked later (the table keeps
        # no insertion order that both back ends can read).
        rows = await self._db.run(
            lambda c: c.execute(
                "SELECT * FROM certificates WHERE subject_key_id = ?"
                " ORDER BY issued_at DESC, revoked_at IS NULL DESC, revoked_at DESC LIMIT 1",
                (subject_key_id,),
            ).fetchall()
        )
        return _record(rows[0]) if rows else None

    async def any_revoked_for_key(self, subject_key_id: str) -> bool:
        """True when some certificate of this key was revoked."""
        rows = await self._db.run(
            lambda c: c.execute(
                "SELECT 1 FROM certificates WHERE subject_key_id = ? AND revoked_at IS NOT NULL"
                " LIMIT 1",
                (subject_key_id,),
            ).fetchall()
        )
        return bool(rows)

    async def revoke(self, serial: str, revoked_at: int, reason: str) -> bool:
        """Mark a certificate revoked; False when it was already revoked."""
        # Every row fetched in the function: a RETURNING statement still open keeps its
        # autocommit transaction open, and another write on the connection would join it
        # uncommitted.
        rows = await self._db.run(
            lambda c: c.execute(
                "UPDATE certificates SET revoked_at = ?, revocation_reason = ?"
                " WHERE serial = ? AND revoked_at IS NULL RETURNING 1",
                (revoked_at, reason, serial),
            ).fetchall()
        )
        return bool(rows)

    async def revoked(self) -> list[CertificateRecord]:
        """Every revoked certificate, by revocation time."""
        rows = await self._db.run(
            lambda c: c.execute(
                "SELECT * FROM certificates WHERE revoked_at IS NOT NULL"
                " ORDER BY revoked_at, serial"
            ).fetchall()
        )
        return [_record(row) for row in rows]

    async def next_crl_number(self) -> int:
        """Allocate the next CRL number (monotonic, durable)."""
        rows = await self._db.run(
            lambda c: c.execute(
                "UPDATE authority SET crl_number = crl_number + 1 RETURNING crl_number"
            ).fetchall()
        )
        return int(rows[0][0])

    async def crl(self) -> tuple[bytes, int] | None:
        """(current CRL DER, issued at), once one was issued."""
        rows = await self._db.run(
            lambda c: c.execute("SELECT crl_der, crl_issued_at FROM authority").fetchall()
        )
        if not rows or rows[0]["crl_der"] is None:
            return None
        return bytes(rows[0]["crl_der"]), int(rows[0]["crl_issued_at"])

    async def set_crl(self, der: bytes, issued_at: int) -> None:
        """Replace the current CRL."""
        await self._db.run(
            lambda c: c.execute(
                "UPDATE authority SET crl_der = ?, crl_issued_at = ?", (der, issued_at)
            )
        )
