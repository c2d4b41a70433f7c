"""Organisations and their keys (the certificates are the CA's records).

Each method is one statement in autocommit mode, one function on the database's thread, its rows
fetched to the end (see :mod:`ra.users`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mobilesign import ids
from mobilesign.errors import Kind
from mobilesign.storage.connection import IntegrityError
from mobilesign.storage.database import Database
from mobilesign.v1 import gateway_pb2
from ra.errors import RaError

_MAX_NAME = 64  # RFC 5280 ub-organization-name


_SELECT_KEY = "SELECT key_id, organisation_id, label, algorithm FROM organisation_keys WHERE "
_KEY_QUERIES = {"key_id": _SELECT_KEY + "key_id = ?", "label": _SELECT_KEY + "label = ?"}


@dataclass(frozen=True)
class Organisation:
    """A registered organisation."""

    organisation_id: str
    name: str


@dataclass(frozen=True)
class OrganisationKey:
    """An organisation key held in the HSM."""

    key_id: str
    organisation_id: str
    label: str
    algorithm: int


class OrganisationStore:
    """Queries over the organisations tables of the RA database."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, organisation_id: str, name: str, now: int) -> Organisation:
        """Register an organisation; ALREADY_EXISTS if the id is taken."""
        ids.ORGANISATION_ID.check(organisation_id)
        if not name or len(name) > _MAX_NAME:
            raise RaError(
                Kind.INVALID,
                "MALFORMED_ORGANISATION_NAME",
                f"an organisation name is 1 to {_MAX_NAME} characters",
            )
        try:
            await self._db.run(
                lambda c: c.execute(
                    "INSERT INTO organisations (organisation_id, name, created_at)"
                    " VALUES (?, ?, ?)",
                    (organisation_id, name, now),
                )
            )
        except IntegrityError:
            raise RaError(Kind.CONFLICT, "ORGANISATION_EXISTS", "the id is taken") from None
        return Organisation(organisation_id, name)

    async def get(self, organisation_id: str) -> Organisation:
        """A registered organisation; NOT_FOUND otherwise."""
        rows = await self._db.run(
            lambda c: c.execute(
                "SELECT organisation_id, name FROM organisations WHERE organisation_id = ?",
                (organisation_id,),
            ).fetchall()
        )
        if not rows:
            raise RaError(Kind.NOT_FOUND, "ORGANISATION_NOT_FOUND", "no such organisation")
        return Organisation(rows[0]["organisation_id"], rows[0]["name"])

    async def add_key(self, key: OrganisationKey, now: int) -> None:
        """Record an organisation key generated in the HSM."""
        await self._db.run(
            lambda c: c.execute(
                "INSERT INTO organisation_keys"
                " (key_id, organisation_id, label, algorithm, created_at) VALUES (?, ?, ?, ?, ?)",
                (key.key_id, key.organisation_id, key.label, key.algorithm, now),
            )
        )

    async def keys(self, organisation_id: str) -> list[OrganisationKey]:
        """An organisation's keys, by label."""
        rows = await self._db.run(
            lambda c: c.execute(
                "SELECT key_id, organisation_id, label, algorithm FROM organisation_keys"
                " WHERE organisation_id = ? ORDER BY label",
                (organisation_id,),
            ).fetchall()
        )
        return [_key(r) for r in rows]

    async def key(self, key_id: str) -> OrganisationKey | None:
        """One organisation key by HSM key id, or None."""
        return await self._one("key_id", key_id)

    async def key_by_label(self, label: str) -> OrganisationKey | None:
        """One organisation key by label, or None."""
        return await self._one("label", label)

    async def _one(self, column: str, value: str) -> OrganisationKey | None:
        query = _KEY_QUERIES[column]
        rows = await self._db.run(lambda c: c.execute(query, (value,)).fetchall())
        return _key(rows[0]) if rows else None


def _key(row: Any) -> OrganisationKey:
    return OrganisationKey(row["key_id"], row["organisation_id"], row["label"], row["algorithm"])


def key_message(
    key: OrganisationKey, certificate: bytes, serial: str
) -> gateway_pb2.OrganisationKey:
    """An organisation key as the API shows it, with its current certificate (DER)."""
    return gateway_pb2.OrganisationKey(
        key_id=key.key_id,
        organisation_id=key.organisation_id,
        label=key.label,
        algorithm=gateway_pb2.OrganisationKeyAlgorithm.ValueType(key.algorithm),
        certificate=certificate,
        certificate_serial=serial,
    )
