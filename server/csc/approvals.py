"""Approvals: a registered application's request for signatures (CSC ``credentials/authorize``)
that the user answers on the phone, and the signatures it then makes (``signatures/signHash``).

A request names a grant (the CSC credential) and the digests; the phone prepares one service
record per digest, co-signs each, and hands them back (``Approve``). The gateway checks them as
it checks any co-signed record, keeps them, and issues the application a SAD: single-use, bound
to exactly those digests, alive no longer than the records themselves. ``signHash`` with it
runs each record through the ordinary execution (log, witnessed checkpoint, the HSM proxy's
checks next to the key), so every signature is in the log and has a receipt.

States: ``pending`` (the user has not answered), ``approved`` (co-signed, SAD not issued yet),
``authorised`` (SAD issued), ``used`` (signHash claimed it), ``declined`` (the user said no),
``withdrawn`` (the application was revoked). Each change is one conditional UPDATE, so that
gateways sharing the database agree on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import secrets
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from mobilesign import ids, records
from mobilesign.errors import Kind
from mobilesign.storage.connection import Connection
from mobilesign.storage.database import Database, transaction
from mobilesign.v1 import gateway_pb2
from server.csc.applications import Application
from server.errors import GatewayError
from server.operations import (
    RECORD_LIFETIME_SECONDS,
    Executed,
    Operations,
    check_usable,
    grant_row,
)
from server.ra_client import Registry
from server.sessions import Session, Sessions

#: Longest description and document label an application may give (the description goes
#: into each record's purpose after the application's name).
MAX_DESCRIPTION = 128
MAX_LABEL = 128
#: A SAD is given no later than this many seconds before its records' lifetime ends, so that
#: signHash has time to run them.
SAD_MARGIN_SECONDS = 10
#: Approvals (and which records answered them) are kept this long after they were asked for:
#: far past any record's lifetime, after which neither could be used again.
KEEP_SECONDS = 86_400
#: Seconds between two purges of older approvals by one gateway.
PURGE_EVERY_SECONDS = 60
#: How often a waiting authorisation looks at the database (the phone may answer through
#: another gateway).
POLL_SECONDS = 0.2

_COLUMNS = (
    "approval_id, client_id, application, grant_id, user_id, digests, purpose, label, state,"
    " expires_at, records, user_key_id, sad_sha256, sad_expires_at"
)


@dataclass(frozen=True)
class _Row:
    approval_id: str
    client_id: str
    application: str
    grant_id: str
    user_id: str
    digests: tuple[bytes, ...]
    purpose: str
    label: str
    state: str
    expires_at: int
    records: tuple[tuple[str, bytes, bytes], ...]  # (record id, record, user signature)
    user_key_id: str
    sad_expires_at: int


def _row(r: Any) -> _Row:
    """An approval from its database row (by column name)."""
    kept = json.loads(r["records"]) if r["records"] else []
    return _Row(
        approval_id=r["approval_id"],
        client_id=r["client_id"],
        application=r["application"],
        grant_id=r["grant_id"],
        user_id=r["user_id"],
        digests=tuple(bytes.fromhex(d) for d in json.loads(r["digests"])),
        purpose=r["purpose"],
        label=r["label"],
        state=r["state"],
        expires_at=int(r["expires_at"]),
        records=tuple((i, bytes.fromhex(rec), bytes.fromhex(sig)) for i, rec, sig in kept),
        user_key_id=r["user_key_id"] or "",
        sad_expires_at=int(r["sad_expires_at"] or 0),
    )


def _printable(value: str, limit: int) -> bool:
    return len(value) <= limit and value.isprintable()


def _purge(c: Connection, before: int) -> None:
    """Forget the approvals asked for before ``before`` (a Unix second)."""
    c.execute(
        "DELETE FROM approval_records WHERE approval_id IN"
        " (SELECT approval_id FROM approvals WHERE created_at < ?)",
        (before,),
    )
    c.execute("DELETE FROM approvals WHERE created_at < ?", (before,))


class _RecordTaken(Exception):
    """A co-signed record already answers another approval (rolls its transaction back)."""


def _not_found() -> GatewayError:
    return GatewayError(Kind.NOT_FOUND, "APPROVAL_NOT_FOUND", "no such approval")


def _sad_invalid() -> GatewayError:
    return GatewayError(Kind.DENIED, "SAD_INVALID", "the SAD is unknown or not for this credential")


@dataclass(frozen=True)
class Authorised:
    """A SAD and its remaining lifetime in seconds."""

    sad: str
    expires_in: int


class Approvals:
    """Requests for signatures, their approval on the phone, and their execution."""

    def __init__(
        self,
        *,
        db: Database,
        registry: Registry,
        sessions: Sessions,
        operations: Operations,
        approval_seconds: int,
        sad_seconds: int,
        max_signatures: int,
    ) -> None:
        self._db = db
        self._registry = registry
        self._sessions = sessions
        self._operations = operations
        self._approval_seconds = approval_seconds
        self._sad_seconds = sad_seconds
        self.max_signatures = max_signatures
        # Waiters of this process, woken when the phone's answer lands here.
        self._answered: dict[str, asyncio.Event] = {}
        self._purged_at = 0.0

    async def credential(self, application: Application, credential_id: str) -> gateway_pb2.Grant:
        """The grant behind a credential of ``application`` (revoked or not)."""
        if credential_id not in application.grant_ids:
            raise GatewayError(
                Kind.DENIED, "CREDENTIAL_NOT_ALLOWED", "the application has no such credential"
            )
        grant = await self._registry.grant(credential_id)
        if grant is None:
            raise GatewayError(Kind.NOT_FOUND, "NO_GRANT", "the grant no longer exists")
        return grant

    async def grant_for(self, application: Application, credential_id: str) -> gateway_pb2.Grant:
        """The grant behind a credential of ``application``, usable for signing now."""
        grant = await self.credential(application, credential_id)
        check_usable(grant_row(grant), "sign", time.time())
        return grant

    async def request(
        self,
        application: Application,
        *,
        credential_id: str,
        digests: list[bytes],
        description: str,
        label: str,
    ) -> str:
        """Ask the grant's user to approve signatures of ``digests``; returns the approval id."""
        if not 0 < len(digests) <= self.max_signatures:
            raise GatewayError(
                Kind.INVALID,
                "SIGNATURE_COUNT_INVALID",
                f"ask for 1 to {self.max_signatures} signatures",
            )
        if any(len(d) != 32 for d in digests):
            raise GatewayError(Kind.INVALID, "DIGEST_LENGTH", "each hash is a SHA-256 digest")
        if not _printable(description, MAX_DESCRIPTION):
            raise GatewayError(
                Kind.INVALID,
                "DESCRIPTION_INVALID",
                f"the description is at most {MAX_DESCRIPTION} printable characters",
            )
        if not _printable(label, MAX_LABEL):
            raise GatewayError(
                Kind.INVALID,
                "LABEL_INVALID",
                f"the document label is at most {MAX_LABEL} printable characters",
            )
        grant = await self.grant_for(application, credential_id)
        purpose = f"{application.name}: {description}" if description else application.name
        approval_id = secrets.token_hex(16)
        now = int(time.time())
        values = (
            approval_id,
            application.client_id,
            application.name,
            grant.grant_id,
            grant.user_id,
            json.dumps([d.hex() for d in digests]),
            purpose,
            label,
            now,
            now + self._approval_seconds,
            application.client_id,
        )
        if time.monotonic() - self._purged_at > PURGE_EVERY_SECONDS:
            self._purged_at = time.monotonic()
            await self._db.run(lambda c: transaction(c, lambda c: _purge(c, now - KEEP_SECONDS)))
        # Only while the application is registered: a revocation that commits first wins.
        inserted = await self._db.run(
            lambda c: c.execute(
                "INSERT INTO approvals (approval_id, client_id, application, grant_id, user_id,"
                " digests, purpose, label, state, created_at, expires_at)"
                " SELECT ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?"
                " WHERE EXISTS (SELECT 1 FROM csc_applications"
                " WHERE client_id = ? AND revoked = 0) RETURNING 1",
                values,
            ).fetchall()
        )
        if not inserted:
            raise GatewayError(
                Kind.UNAUTHENTICATED, "TOKEN_INVALID", "the application has been revoked"
            )
        return approval_id

    async def _find(self, approval_id: str) -> _Row | None:
        if not ids.APPROVAL_ID.matches(approval_id):
            return None
        rows = await self._db.run(
            lambda c: c.execute(
                f"SELECT {_COLUMNS} FROM approvals WHERE approval_id = ?",  # noqa: S608 (constant)
                (approval_id,),
            ).fetchall()
        )
        return _row(rows[0]) if rows else None

    async def _change(
        self, approval_id: str, sets: str, values: tuple[object, ...], was: str
    ) -> bool:
        """Move an approval from state ``was``; False when it was no longer in it."""

        def change(c: Connection) -> bool:
            return bool(
                c.execute(
                    f"UPDATE approvals SET {sets} WHERE approval_id = ? AND state = ?"  # noqa: S608 (constants)
                    " RETURNING 1",
                    (*values, approval_id, was),
                ).fetchall()
            )

        changed = await self._db.run(change)
        if changed:
            self._wake(approval_id)
        return changed

    def _wake(self, approval_id: str) -> None:
        """Wake this process's waiter on the approval, if any."""
        if approval_id in self._answered:
            self._answered[approval_id].set()

    # The phone ------------------------------------------------------------------------------
    async def pending(self, session: Session) -> list[gateway_pb2.Approval]:
        """The session user's approvals still open, oldest first (not those whose grant was
        revoked meanwhile)."""
        now = int(time.time())
        rows = await self._db.run(
            lambda c: c.execute(
                f"SELECT {_COLUMNS} FROM approvals WHERE user_id = ? AND state = 'pending'"  # noqa: S608
                " AND expires_at > ? ORDER BY created_at, approval_id",
                (session.user_id, now),
            ).fetchall()
        )
        pending = []
        for row in map(_row, rows):
            grant = await self._registry.grant(row.grant_id)
            if grant is None or grant.revoked:
                continue  # it could no longer be given: the phone is not asked
            pending.append(row)
        return [
            gateway_pb2.Approval(
                approval_id=row.approval_id,
                application=row.application,
                grant_id=row.grant_id,
                digests=list(row.digests),
                purpose=row.purpose,
                label=row.label,
                expires_unix=row.expires_at,
            )
            for row in pending
        ]

    async def _open(self, session: Session, approval_id: str) -> _Row:
        ids.APPROVAL_ID.check(approval_id)
        row = await self._find(approval_id)
        if row is None or row.user_id != session.user_id:
            raise _not_found()
        if row.state != "pending" or row.expires_at <= time.time():
            raise GatewayError(
                Kind.PRECONDITION,
                "APPROVAL_CLOSED",
                "the approval was answered, withdrawn or has expired",
            )
        return row

    async def approve(
        self, session: Session, approval_id: str, cosigned: list[gateway_pb2.CoSignedRecord]
    ) -> None:
        """Accept one co-signed record per digest, in the approval's order: each prepared by
        a gateway for this user's key, for the approval's grant, digest and purpose."""
        row = await self._open(session, approval_id)
        if len(cosigned) != len(row.digests) or len({c.record_id for c in cosigned}) != len(
            cosigned
        ):
            raise GatewayError(
                Kind.INVALID, "APPROVAL_MISMATCH", "one co-signed record per digest, in order"
            )
        for item, digest in zip(cosigned, row.digests, strict=True):
            record = self._operations.check_cosigned(
                session,
                record_id=item.record_id,
                record=item.record,
                data=digest,
                user_signature=item.user_signature,
            )
            if (
                record.grant_id != row.grant_id
                or record.purpose != row.purpose
                or not record.operation.is_sign
            ):
                raise GatewayError(
                    Kind.INVALID,
                    "APPROVAL_MISMATCH",
                    "a record is not for the approval's grant, purpose and signing",
                )
        kept = json.dumps([[c.record_id, c.record.hex(), c.user_signature.hex()] for c in cosigned])
        record_ids = [c.record_id for c in cosigned]

        def store(c: Connection) -> bool:
            # A record answers one approval: the same co-signed record cannot also stand for
            # another request with the same digest and purpose.
            for record_id in record_ids:
                if not c.execute(
                    "INSERT INTO approval_records (record_id, approval_id) VALUES (?, ?)"
                    " ON CONFLICT (record_id) DO NOTHING RETURNING 1",
                    (record_id, approval_id),
                ).fetchall():
                    raise _RecordTaken
            return bool(
                c.execute(
                    "UPDATE approvals SET state = 'approved', records = ?, user_key_id = ?"
                    " WHERE approval_id = ? AND state = 'pending' RETURNING 1",
                    (kept, session.user_key_id, approval_id),
                ).fetchall()
            )

        try:
            changed = await self._db.run(lambda c: transaction(c, store))
        except _RecordTaken:
            raise GatewayError(
                Kind.INVALID, "APPROVAL_MISMATCH", "a record already answers another approval"
            ) from None
        if not changed:
            await self._open(session, approval_id)  # says why
            raise _not_found()
        self._wake(approval_id)

    async def decline(self, session: Session, approval_id: str) -> None:
        """Refuse the approval."""
        await self._open(session, approval_id)
        if not await self._change(approval_id, "state = 'declined'", (), "pending"):
            await self._open(session, approval_id)
            raise _not_found()

    # The application -------------------------------------------------------------------------
    async def authorisation(
        self, application: Application, approval_id: str, wait_seconds: float
    ) -> Authorised | None:
        """The SAD once the user has approved (waiting up to ``wait_seconds``), None while the
        approval is still pending; refused once declined, withdrawn, expired or issued."""
        row = await self._find(approval_id)
        if row is None or row.client_id != application.client_id:
            raise _not_found()
        if row.state == "pending" and wait_seconds > 0:
            row = await self._wait(row, time.monotonic() + wait_seconds)
        now = int(time.time())
        if row.state == "pending":
            if row.expires_at <= now:
                raise GatewayError(
                    Kind.PRECONDITION, "APPROVAL_EXPIRED", "the user did not answer in time"
                )
            return None
        if row.state == "declined":
            raise GatewayError(Kind.DENIED, "APPROVAL_DECLINED", "the user declined")
        if row.state == "withdrawn":
            raise GatewayError(Kind.DENIED, "APPROVAL_WITHDRAWN", "the application was revoked")
        if row.state != "approved":
            raise GatewayError(
                Kind.PRECONDITION, "SAD_ALREADY_ISSUED", "the approval's SAD was issued already"
            )
        prepared_at = min(records.decode_record(r).time_ms for _, r, _ in row.records) // 1000
        expires = min(
            now + self._sad_seconds,
            prepared_at + RECORD_LIFETIME_SECONDS - SAD_MARGIN_SECONDS,
        )
        if expires <= now:
            raise GatewayError(
                Kind.PRECONDITION, "APPROVAL_EXPIRED", "the approved records are too old"
            )
        sad = secrets.token_urlsafe(32)
        if not await self._change(
            approval_id,
            "state = 'authorised', sad_sha256 = ?, sad_expires_at = ?",
            (hashlib.sha256(sad.encode()).digest(), expires),
            "approved",
        ):
            raise GatewayError(
                Kind.PRECONDITION, "SAD_ALREADY_ISSUED", "the approval's SAD was issued already"
            )
        return Authorised(sad, expires - now)

    async def _wait(self, row: _Row, deadline: float) -> _Row:
        event = self._answered.setdefault(row.approval_id, asyncio.Event())
        try:
            while row.state == "pending" and time.monotonic() < deadline:
                remaining = min(POLL_SECONDS, deadline - time.monotonic())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), max(remaining, 0))
                found = await self._find(row.approval_id)
                assert found is not None  # kept a day, far longer than anyone waits
                row = found
        finally:
            self._answered.pop(row.approval_id, None)
        return row

    async def sign(
        self, application: Application, *, credential_id: str, sad: str, digests: list[bytes]
    ) -> list[Executed]:
        """Run the approved records for ``digests`` (exactly the SAD's, in any order) and
        return each result with its receipt, in the order of ``digests``. The SAD is used up
        first, so that it serves once even if a signature then fails."""
        if not 0 < len(sad) <= 128:
            raise _sad_invalid()
        sad_sha256 = hashlib.sha256(sad.encode()).digest()
        rows = await self._db.run(
            lambda c: c.execute(
                f"SELECT {_COLUMNS} FROM approvals WHERE sad_sha256 = ?",  # noqa: S608 (constant)
                (sad_sha256,),
            ).fetchall()
        )
        row = _row(rows[0]) if rows else None
        if row is None or row.client_id != application.client_id or row.grant_id != credential_id:
            raise _sad_invalid()
        if row.state == "used":
            raise GatewayError(Kind.PRECONDITION, "SAD_USED", "the SAD has been used")
        if row.state != "authorised":
            raise _sad_invalid()
        if row.sad_expires_at <= time.time():
            raise GatewayError(Kind.PRECONDITION, "SAD_EXPIRED", "the SAD has expired")
        if Counter(digests) != Counter(row.digests):
            raise GatewayError(
                Kind.DENIED, "SAD_HASH_MISMATCH", "the SAD was given for other hashes"
            )
        if not await self._change(row.approval_id, "state = 'used'", (), "authorised"):
            raise GatewayError(Kind.PRECONDITION, "SAD_USED", "the SAD has been used")
        session = Session(
            row.user_id, row.user_key_id, await self._sessions.certificate(row.user_key_id)
        )
        unused: dict[bytes, list[tuple[str, bytes, bytes]]] = {d: [] for d in row.digests}
        for (record_id, record, signature), digest in zip(row.records, row.digests, strict=True):
            unused[digest].append((record_id, record, signature))
        results: list[Executed] = []
        for digest in digests:
            record_id, record, signature = unused[digest].pop()
            results.append(
                await self._operations.execute(
                    session,
                    record_id=record_id,
                    record=record,
                    data=digest,
                    user_signature=signature,
                )
            )
        return results
