"""Grants: the RA decides who may use which organisation key, signs that decision with its grant
key in the HSM, and tells the HSM proxy when a grant ends.

The HSM proxy checks a grant's signature next to the key and counts its uses itself, so the RA
keeps only the signed statements and their revocation; the use so far is the proxy's count.
The grants table is read and written one statement at a time, each one function on the
database's thread, its rows fetched to the end (see :mod:`ra.users`).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mobilesign import grants, records
from mobilesign.errors import Kind
from mobilesign.storage.database import Database
from mobilesign.v1 import gateway_pb2, hsm_pb2
from ra.changes import ChangeFeed
from ra.errors import RaError
from ra.hsm_proxy_client import HsmClient
from ra.organisations import OrganisationStore
from ra.users import UserStore


@dataclass(frozen=True)
class GrantRecord:
    """A grant as the RA issued it."""

    statement: grants.Statement
    signed: bytes
    revoked: bool


def grant_message(grant: GrantRecord, usage: hsm_pb2.GrantUsage) -> gateway_pb2.Grant:
    """A grant as the API shows it, with the use the HSM proxy counted."""
    statement = grant.statement
    return gateway_pb2.Grant(
        grant_id=statement.grant_id,
        user_id=statement.user_id,
        key_id=statement.key_id,
        operations=[grants.operation_value(name) for name in statement.operations],
        not_before_unix=statement.not_before,
        not_after_unix=statement.not_after,
        quota_total=statement.quota_total,
        quota_daily=statement.quota_daily,
        purpose=statement.purpose,
        used_total=usage.used_total,
        used_today=usage.used_today,
        revoked=grant.revoked,
        signed_grant=grant.signed,
    )


class GrantStore:
    """The grants table of the RA database."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, statement: grants.Statement, signed: bytes) -> None:
        """Store a newly signed grant."""
        await self._db.run(
            lambda c: c.execute(
                "INSERT INTO grants (grant_id, user_id, key_id, signed_grant, created_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (
                    statement.grant_id,
                    statement.user_id,
                    statement.key_id,
                    signed,
                    statement.issued_at,
                ),
            )
        )

    @staticmethod
    def _record(row: Any) -> GrantRecord:
        # The RA's own signature was checked when it was made; the statement is read back from
        # exactly the bytes the proxy and the phone will see.
        signed = bytes(row["signed_grant"])
        return GrantRecord(grants.read(signed), signed, row["revoked_at"] is not None)

    async def get(self, grant_id: str) -> GrantRecord | None:
        """One grant, or None."""
        rows = await self._db.run(
            lambda c: c.execute(
                "SELECT signed_grant, revoked_at FROM grants WHERE grant_id = ?", (grant_id,)
            ).fetchall()
        )
        return self._record(rows[0]) if rows else None

    async def matching(self, user_id: str = "", key_id: str = "") -> list[GrantRecord]:
        """Grants, optionally of one user and/or one key, oldest first."""
        rows = await self._db.run(
            lambda c: c.execute(
                "SELECT signed_grant, revoked_at FROM grants"
                " WHERE (? = '' OR user_id = ?) AND (? = '' OR key_id = ?)"
                " ORDER BY created_at, grant_id",
                (user_id, user_id, key_id, key_id),
            ).fetchall()
        )
        return [self._record(row) for row in rows]

    async def revoke(self, grant_id: str, now: int) -> bool:
        """Mark a grant revoked (keeping the first time); False when there is no such grant."""
        # Every row fetched in the function: a RETURNING statement still open keeps its
        # autocommit transaction open, and another write on the connection would join it
        # uncommitted.
        rows = await self._db.run(
            lambda c: c.execute(
                "UPDATE grants SET revoked_at = COALESCE(revoked_at, ?) WHERE grant_id = ?"
                " RETURNING 1",
                (now, grant_id),
            ).fetchall()
        )
        return bool(rows)

    async def revoked_ids(self) -> list[str]:
        """Every revoked grant's id."""
        rows = await self._db.run(
            lambda c: c.execute(
                "SELECT grant_id FROM grants WHERE revoked_at IS NOT NULL ORDER BY revoked_at"
            ).fetchall()
        )
        return [row["grant_id"] for row in rows]


class GrantIssuer:
    """Checks, signs, lists and revokes grants."""

    def __init__(
        self,
        *,
        store: GrantStore,
        users: UserStore,
        organisations: OrganisationStore,
        hsm: HsmClient,
        grant_key: hsm_pb2.KeyInfo,
        changes: ChangeFeed,
    ) -> None:
        self._store = store
        self._changes = changes
        self._users = users
        self._organisations = organisations
        self._hsm = hsm
        self._grant_key = grant_key

    @property
    def public_key_spki(self) -> bytes:
        """The grant key (DER SubjectPublicKeyInfo): what the phone checks grants with."""
        return self._grant_key.public_key_spki

    async def create(
        self,
        *,
        user_id: str,
        key_id: str,
        operations: Sequence[str],
        not_before: int,
        not_after: int,
        quota_total: int,
        quota_daily: int,
        purpose: str,
        now: int,
    ) -> gateway_pb2.Grant:
        """Check, sign and store a new grant (operations named as by
        :func:`mobilesign.grants.operation_name`)."""
        await self._users.get(user_id)
        key = await self._organisations.key(key_id)
        if key is None:
            raise RaError(Kind.NOT_FOUND, "ORGANISATION_KEY_NOT_FOUND", "no such organisation key")
        names: list[str] = []
        for name in operations:
            if name not in grants.OPERATIONS:
                raise RaError(Kind.INVALID, "OPERATION_INVALID", "unknown operation")
            if name == "decrypt" and key.algorithm == hsm_pb2.KEY_ALGORITHM_EC_P256:
                raise RaError(
                    Kind.INVALID, "OPERATION_INVALID", "EC organisation keys do not decrypt"
                )
            if name not in names:
                names.append(name)
        if not names:
            raise RaError(
                Kind.INVALID, "OPERATION_INVALID", "a grant allows at least one operation"
            )
        if not 0 <= not_before < not_after:
            raise RaError(Kind.INVALID, "WINDOW_INVALID", "the validity window is empty")
        if not (0 < quota_daily <= grants.MAX_QUOTA and 0 < quota_total <= grants.MAX_QUOTA):
            raise RaError(Kind.INVALID, "QUOTA_INVALID", f"quotas are 1 to {grants.MAX_QUOTA}")
        if len(purpose) > records.MAX_PURPOSE:
            raise RaError(
                Kind.INVALID, "PURPOSE_TOO_LONG", f"at most {records.MAX_PURPOSE} characters"
            )
        statement = grants.Statement(
            grant_id=secrets.token_hex(16),
            user_id=user_id,
            key_id=key_id,
            operations=tuple(names),
            not_before=not_before,
            not_after=not_after,
            quota_total=quota_total,
            quota_daily=quota_daily,
            purpose=purpose,
            issued_at=now,
        )
        encoded = grants.encode(statement)
        signature = await self._hsm.sign_digest(
            self._grant_key.key_id,
            hsm_pb2.SIGNATURE_MECHANISM_ECDSA_SHA256,
            grants.signing_digest(encoded),
        )
        signed = grants.assemble(encoded, signature)
        await self._store.add(statement, signed)
        return grant_message(
            GrantRecord(statement, signed, False), hsm_pb2.GrantUsage(grant_id=statement.grant_id)
        )

    async def _with_usage(self, found: list[GrantRecord]) -> list[gateway_pb2.Grant]:
        usage = await self._hsm.grant_usage([g.statement.grant_id for g in found])
        return [grant_message(g, u) for g, u in zip(found, usage, strict=True)]

    async def get(self, grant_id: str) -> gateway_pb2.Grant:
        """One grant, signed, and whether it is revoked (its use counts are left at zero: the
        gateway keeps its own and the HSM proxy's are in :meth:`list`); NOT_FOUND when there is
        none."""
        found = await self._store.get(grant_id)
        if found is None:
            raise RaError(Kind.NOT_FOUND, "GRANT_NOT_FOUND", "no such grant")
        return grant_message(found, hsm_pb2.GrantUsage(grant_id=grant_id))

    async def list(self, user_id: str = "", key_id: str = "") -> list[gateway_pb2.Grant]:
        """Grants with their use so far, optionally of one user and/or one key."""
        return await self._with_usage(await self._store.matching(user_id, key_id))

    async def revoke(self, grant_id: str, now: int) -> None:
        """End a grant: stored here, then at the HSM proxy and at every gateway that keeps it,
        before this returns. Repeating it is harmless (and finishes a revocation whose push to
        the proxy failed)."""
        if not await self._store.revoke(grant_id, now):
            raise RaError(Kind.NOT_FOUND, "GRANT_NOT_FOUND", "no such grant")
        await self._hsm.record_revocation(hsm_pb2.RecordRevocationRequest(grant_id=grant_id))
        await self._changes.publish(grant_ids=[grant_id])

    async def push_revocations(self) -> None:
        """Tell the HSM proxy of every revoked grant again (idempotent): a revocation whose push
        failed before a crash reaches the proxy at the next start."""
        for grant_id in await self._store.revoked_ids():
            await self._hsm.record_revocation(hsm_pb2.RecordRevocationRequest(grant_id=grant_id))
