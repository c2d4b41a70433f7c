"""What the HSM proxy has done with its keys, durably: the record ids it acted on (each
authorisation is good once), each grant's uses (in total and per UTC day, against the grant's
quotas), the revocations the RA recorded, and the one certificate request each organisation key
signed.

One connection (SQLite, or PostgreSQL) serves every caller. Each method is one function on the
database's thread (one hop, however many statements), and those functions run one after the
other, so statements of different transactions never interleave on the connection; on SQLite
``BEGIN IMMEDIATE`` takes the write lock before the first read, and on PostgreSQL (where several
proxies may share the store) each count is one upsert that locks its row, so a quota is checked
and counted with nothing in between.
A statement's rows are fetched to the end: one still in progress would keep its implicit
transaction open past the function.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from hsm_proxy.errors import HsmProxyError
from mobilesign.errors import Kind
from mobilesign.storage.connection import Connection, IntegrityError
from mobilesign.storage.database import Database, transaction
from mobilesign.storage.schema import Location, Schema

_log = logging.getLogger("mobilesign.hsm")

#: The database's schema, one script per version. The first is the schema of the proxy before
#: grants were counted here, kept verbatim so that its databases upgrade in place.
_SQLITE = (
    """
    CREATE TABLE used_records (
        record_id TEXT PRIMARY KEY,
        key_id TEXT NOT NULL,
        used_at INTEGER NOT NULL
    )
    """,
    """
    -- The grant each use counted against (NULL for uses made before grants were counted).
    ALTER TABLE used_records ADD COLUMN grant_id TEXT;
    CREATE TABLE grant_uses (
        grant_id TEXT PRIMARY KEY,
        used_total INTEGER NOT NULL CHECK (used_total >= 0)
    );
    CREATE TABLE grant_days (
        grant_id TEXT NOT NULL,
        day INTEGER NOT NULL,
        used INTEGER NOT NULL CHECK (used >= 0),
        PRIMARY KEY (grant_id, day)
    );
    CREATE TABLE revocations (
        kind TEXT NOT NULL CHECK (kind IN ('grant', 'certificate', 'organisation_key')),
        subject TEXT NOT NULL,
        revoked_at INTEGER NOT NULL,
        PRIMARY KEY (kind, subject)
    );
    CREATE TABLE certificate_requests (
        key_id TEXT PRIMARY KEY,
        subject BLOB NOT NULL,
        csr BLOB NOT NULL,
        made_at INTEGER NOT NULL
    )
    """,
)
_POSTGRESQL = (
    """
    CREATE TABLE used_records (
        record_id TEXT PRIMARY KEY,
        key_id TEXT NOT NULL,
        used_at BIGINT NOT NULL,
        grant_id TEXT
    );
    CREATE TABLE grant_uses (
        grant_id TEXT PRIMARY KEY,
        used_total BIGINT NOT NULL CHECK (used_total >= 0)
    );
    CREATE TABLE grant_days (
        grant_id TEXT NOT NULL,
        day BIGINT NOT NULL,
        used BIGINT NOT NULL CHECK (used >= 0),
        PRIMARY KEY (grant_id, day)
    );
    CREATE TABLE revocations (
        kind TEXT NOT NULL CHECK (kind IN ('grant', 'certificate', 'organisation_key')),
        subject TEXT NOT NULL,
        revoked_at BIGINT NOT NULL,
        PRIMARY KEY (kind, subject)
    );
    CREATE TABLE certificate_requests (
        key_id TEXT PRIMARY KEY,
        subject BYTEA NOT NULL,
        csr BYTEA NOT NULL,
        made_at BIGINT NOT NULL
    )
    """,
)
SCHEMA = Schema(sqlite=_SQLITE, postgresql=_POSTGRESQL)


#: Grant ids per query in :meth:`UseStore.usage`.
_IDS_PER_QUERY = 500


def utc_day(now: int) -> int:
    """Days since the epoch (UTC): the unit of daily quotas."""
    return now // 86_400


class Revoked(enum.Enum):
    """What a revocation names."""

    GRANT = "grant"
    CERTIFICATE = "certificate"  # a personal certificate, by serial (lowercase hex)
    ORGANISATION_KEY = "organisation_key"  # the certificate of an organisation key, by key id


@dataclass(frozen=True)
class Use:
    """One use of an organisation key, as the proxy counts it."""

    record_id: str
    key_id: str
    grant_id: str
    certificate_serial: str
    quota_total: int
    quota_daily: int


@dataclass(frozen=True)
class GrantUsage:
    """How often a grant was used: in total, and on one UTC day."""

    used_total: int
    used_today: int


def _quota_exceeded(which: str) -> HsmProxyError:
    return HsmProxyError(
        Kind.EXHAUSTED,
        "QUOTA_EXCEEDED",
        f"the grant's {which} quota is used up",
        {"quota": which},
    )


class UseStore:
    """The proxy's durable memory of uses, revocations and certificate requests."""

    def __init__(self, db: Database) -> None:
        self._db = db

    @classmethod
    async def open(cls, where: Location) -> UseStore:
        """Open (creating or upgrading) the store."""
        return cls(await Database.open(where, SCHEMA))

    async def close(self) -> None:
        """Close the database."""
        await self._db.close()

    async def consume(self, use: Use, now: int) -> None:
        """In one transaction: check that nothing the use depends on is revoked, mark the record
        id used and count one use of the grant, in total and on ``now``'s UTC day.

        Refuses, and changes nothing: DENIED ``GRANT_REVOKED``, ``USER_CERTIFICATE_REVOKED`` or
        ``ORGANISATION_CERTIFICATE_REVOKED``; DENIED ``AUTHORISATION_REPLAYED`` when the record
        id was used before; EXHAUSTED ``QUOTA_EXCEEDED`` (metadata ``quota``: ``total`` or
        ``daily``) when the use would go beyond a quota.
        """
        await self._db.run(lambda c: transaction(c, lambda c: _consume(c, use, now)))

    async def release(self, record_id: str) -> None:
        """Undo :meth:`consume` for a record whose operation failed before the token acted (e.g.
        queue full): in one transaction, the record id is freed and its use un-counted (on the
        day it was counted)."""
        await self._db.run(lambda c: transaction(c, lambda c: _release(c, record_id)))

    async def revoke(self, kind: Revoked, subject: str, now: int) -> None:
        """Record that ``subject`` is revoked; on disk when this returns. Idempotent (the first
        time is kept)."""
        # One statement in autocommit mode: its own transaction, synchronous on commit.
        await self._db.run(
            lambda c: c.execute(
                "INSERT INTO revocations (kind, subject, revoked_at) VALUES (?, ?, ?)"
                " ON CONFLICT (kind, subject) DO NOTHING",
                (kind.value, subject, now),
            )
        )
        _log.info("revocation recorded", extra={"fields": {"kind": kind.value, "id": subject}})

    async def usage(self, grant_ids: Sequence[str], now: int) -> list[GrantUsage]:
        """Each grant's uses, in total and on ``now``'s UTC day (zero when never used)."""
        wanted = sorted(set(grant_ids))

        def read(c: Connection) -> tuple[dict[str, int], dict[str, int]]:
            totals: dict[str, int] = {}
            today: dict[str, int] = {}
            for start in range(0, len(wanted), _IDS_PER_QUERY):
                chunk = wanted[start : start + _IDS_PER_QUERY]
                # Placeholders only: no statement is built from the ids themselves.
                marks = ",".join("?" * len(chunk))
                for r in c.execute(
                    "SELECT grant_id, used_total FROM grant_uses"  # noqa: S608 (placeholders only)
                    f" WHERE grant_id IN ({marks})",
                    chunk,
                ).fetchall():
                    totals[r[0]] = int(r[1])
                for r in c.execute(
                    "SELECT grant_id, used FROM grant_days"  # noqa: S608 (placeholders only)
                    f" WHERE day = ? AND grant_id IN ({marks})",
                    (utc_day(now), *chunk),
                ).fetchall():
                    today[r[0]] = int(r[1])
            return totals, today

        totals, today = await self._db.run(read)
        return [GrantUsage(totals.get(g, 0), today.get(g, 0)) for g in grant_ids]

    async def certificate_request(self, key_id: str) -> tuple[bytes, bytes] | None:
        """The subject and the certificate request the key signed, or None before it did."""
        return await self._db.run(lambda c: _certificate_request(c, key_id))

    async def keep_certificate_request(
        self, key_id: str, subject: bytes, csr: bytes, now: int
    ) -> tuple[bytes, bytes]:
        """Store the key's certificate request unless it has one already; on disk when this
        returns. Returns the subject and request stored (the earlier ones if there were)."""

        def keep(c: Connection) -> tuple[bytes, bytes] | None:
            c.execute(
                "INSERT INTO certificate_requests (key_id, subject, csr, made_at)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (key_id) DO NOTHING",
                (key_id, subject, csr, now),
            )
            return _certificate_request(c, key_id)

        stored = await self._db.run(lambda c: transaction(c, keep))
        assert stored is not None  # inserted or already there, in this transaction
        return stored


def _revocation(c: Connection, use: Use) -> HsmProxyError | None:
    rows = c.execute(
        "SELECT kind FROM revocations WHERE (kind = 'grant' AND subject = ?)"
        " OR (kind = 'certificate' AND subject = ?)"
        " OR (kind = 'organisation_key' AND subject = ?)",
        (use.grant_id, use.certificate_serial, use.key_id),
    ).fetchall()
    found = {Revoked(row["kind"]) for row in rows}
    # The reason names the broadest thing revoked.
    if Revoked.ORGANISATION_KEY in found:
        return HsmProxyError(
            Kind.DENIED,
            "ORGANISATION_CERTIFICATE_REVOKED",
            "the organisation key's certificate is revoked",
        )
    if Revoked.CERTIFICATE in found:
        return HsmProxyError(
            Kind.DENIED, "USER_CERTIFICATE_REVOKED", "the user's certificate is revoked"
        )
    if Revoked.GRANT in found:
        return HsmProxyError(Kind.DENIED, "GRANT_REVOKED", "the grant is revoked")
    return None


def _consume(c: Connection, use: Use, now: int) -> None:
    # Runs inside ``transaction``: a refusal raised here rolls back what came before it.
    refusal = _revocation(c, use)
    if refusal is not None:
        raise refusal
    try:
        c.execute(
            "INSERT INTO used_records (record_id, key_id, used_at, grant_id) VALUES (?, ?, ?, ?)",
            (use.record_id, use.key_id, now, use.grant_id),
        )
    except IntegrityError:
        raise HsmProxyError(
            Kind.DENIED, "AUTHORISATION_REPLAYED", "this record was already used"
        ) from None
    (total,) = c.execute(
        "INSERT INTO grant_uses (grant_id, used_total) VALUES (?, 1)"
        " ON CONFLICT (grant_id) DO UPDATE SET used_total = grant_uses.used_total + 1"
        " RETURNING used_total",
        (use.grant_id,),
    ).fetchall()
    if total[0] > use.quota_total:
        raise _quota_exceeded("total")
    (today,) = c.execute(
        "INSERT INTO grant_days (grant_id, day, used) VALUES (?, ?, 1)"
        " ON CONFLICT (grant_id, day) DO UPDATE SET used = grant_days.used + 1 RETURNING used",
        (use.grant_id, utc_day(now)),
    ).fetchall()
    if today[0] > use.quota_daily:
        raise _quota_exceeded("daily")


def _release(c: Connection, record_id: str) -> None:
    rows = c.execute(
        "DELETE FROM used_records WHERE record_id = ? RETURNING grant_id, used_at", (record_id,)
    ).fetchall()
    if rows and rows[0]["grant_id"] is not None:
        grant_id = rows[0]["grant_id"]
        c.execute(
            "UPDATE grant_uses SET used_total = used_total - 1 WHERE grant_id = ?", (grant_id,)
        )
        c.execute(
            "UPDATE grant_days SET used = used - 1 WHERE grant_id = ? AND day = ?",
            (grant_id, utc_day(int(rows[0]["used_at"]))),
        )


def _certificate_request(c: Connection, key_id: str) -> tuple[bytes, bytes] | None:
    rows = c.execute(
        "SELECT subject, csr FROM certificate_requests WHERE key_id = ?", (key_id,)
    ).fetchall()
    return (bytes(rows[0]["subject"]), bytes(rows[0]["csr"])) if rows else None
