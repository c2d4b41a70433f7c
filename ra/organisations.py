"""Organisations and their keys (the certificates are the CA's records)."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

import aiosqlite

from mobilesign import ids
from mobilesign.errors import Kind
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

    def __init__(self, db: aiosqlite.Connection) -> None:
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
            await self._db.execute(
                "INSERT INTO organisations (organisation_id, name, created_at) VALUES (?, ?, ?)",
                (organisation_id, name, now),
            )
        except sqlite3.IntegrityError:
            raise RaError(Kind.CONFLICT, "ORGANISATION_EXISTS", "the id is taken") from None
        return Organisation(organisation_id, name)

    async def get(self, organisation_id: str) -> Organisation:
        """A registered organisation; NOT_FOUND otherwise."""
        async with self._db.execute(
            "SELECT organisation_id, name FROM organisations WHERE organisation_id = ?",
            (organisation_id,),
        ) as cursor:
            row = await cursor.fetchone()
        if row is None:
            raise RaError(Kind.NOT_FOUND, "ORGANISATION_NOT_FOUND", "no such organisation")
        return Organisation(row["organisation_id"], row["name"])

    async def add_key(self, key: OrganisationKey, now: int) -> None:
        """Record an organisation key generated in the HSM."""
        await self._db.execute(
            "INSERT INTO organisation_keys (key_id, organisation_id, label, algorithm, created_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (key.key_id, key.organisation_id, key.label, key.algorithm, now),
        )

    async def keys(self, organisation_id: str) -> list[OrganisationKey]:
        """An organisation's keys, by label."""
        async with self._db.execute(
            "SELECT key_id, organisation_id, label, algorithm FROM organisation_keys"
            " WHERE organisation_id = ? ORDER BY label",
            (organisation_id,),
        ) as cursor:
            rows = await cursor.fetchall()
        return [
            OrganisationKey(r["key_id"], r["organisation_id"], r["label"], r["algorithm"])
            for r in rows
        ]

    async def key(self, key_id: str) -> OrganisationKey | None:
        """One organisation key by HSM key id, or None."""
        return await self._one("key_id", key_id)

    async def key_by_label(self, label: str) -> OrganisationKey | None:
        """One organisation key by label, or None."""
        return await self._one("label", label)

    async def _one(self, column: str, value: str) -> OrganisationKey | None:
        async with self._db.execute(_KEY_QUERIES[column], (value,)) as cursor:
            r = await cursor.fetchone()
        if r is None:
            return None
        return OrganisationKey(r["key_id"], r["organisation_id"], r["label"], r["algorithm"])


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
