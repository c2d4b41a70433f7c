"""Applications registered for the CSC endpoint, and their OAuth 2.0 access tokens (client
credentials grant).

A client secret and an access token are 32 random bytes each; the gateway keeps only their
SHA-256 (high-entropy values need no slow hash), so its database cannot speak for an
application. An application sees as CSC credentials exactly the grants it was registered with.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from typing import Any

from mobilesign import ids
from mobilesign.errors import Kind
from mobilesign.storage.connection import Connection
from mobilesign.storage.database import Database, transaction
from server.errors import GatewayError
from server.ra_client import Registry

#: Longest application name (it is shown on the phone and goes into every record's purpose).
MAX_NAME = 64
#: Most grants one application may be registered with.
MAX_GRANTS = 64


@dataclass(frozen=True)
class Application:
    """A registered application."""

    client_id: str
    name: str
    grant_ids: tuple[str, ...]
    created_at: int
    revoked: bool


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()


def _application(row: Any) -> Application:
    return Application(
        client_id=row["client_id"],
        name=row["name"],
        grant_ids=tuple(json.loads(row["grant_ids"])),
        created_at=int(row["created_at"]),
        revoked=bool(row["revoked"]),
    )


def _invalid_client() -> GatewayError:
    # One answer for an unknown client, a wrong secret and a revoked application.
    return GatewayError(
        Kind.UNAUTHENTICATED, "CLIENT_AUTHENTICATION_FAILED", "unknown client or wrong secret"
    )


class Applications:
    """Registration (by an administrator), client authentication and access tokens."""

    def __init__(self, db: Database, registry: Registry, token_seconds: int) -> None:
        self._db = db
        self._registry = registry
        self._token_seconds = token_seconds

    async def register(self, name: str, grant_ids: list[str], now: int) -> tuple[Application, str]:
        """Register ``name`` for ``grant_ids`` (grants the RA knows); returns the application
        and its client secret, which is not kept."""
        if not (0 < len(name) <= MAX_NAME and name.isprintable() and name == name.strip()):
            raise GatewayError(
                Kind.INVALID,
                "APPLICATION_NAME_INVALID",
                f"an application name is 1 to {MAX_NAME} printable characters",
            )
        if not 0 < len(grant_ids) <= MAX_GRANTS or len(set(grant_ids)) != len(grant_ids):
            raise GatewayError(
                Kind.INVALID,
                "GRANTS_INVALID",
                f"name 1 to {MAX_GRANTS} different grants",
            )
        for grant_id in grant_ids:
            ids.GRANT_ID.check(grant_id)
            if await self._registry.grant(grant_id) is None:
                raise GatewayError(Kind.NOT_FOUND, "NO_GRANT", f"no grant {grant_id}")
        application = Application(secrets.token_hex(16), name, tuple(grant_ids), now, False)
        secret = secrets.token_urlsafe(32)
        await self._db.run(
            lambda c: c.execute(
                "INSERT INTO csc_applications"
                " (client_id, name, secret_sha256, grant_ids, created_at, revoked)"
                " VALUES (?, ?, ?, ?, ?, 0)",
                (
                    application.client_id,
                    name,
                    _digest(secret),
                    json.dumps(list(grant_ids)),
                    now,
                ),
            )
        )
        return application, secret

    async def list(self) -> list[Application]:
        """Every registered application, oldest first."""
        rows = await self._db.run(
            lambda c: c.execute(
                "SELECT client_id, name, grant_ids, created_at, revoked FROM csc_applications"
                " ORDER BY created_at, client_id"
            ).fetchall()
        )
        return [_application(row) for row in rows]

    async def revoke(self, client_id: str) -> None:
        """End the application's access: its tokens go, its pending approvals are withdrawn."""
        ids.CLIENT_ID.check(client_id)

        def revoke(c: Connection) -> int:
            changed = c.execute(
                "UPDATE csc_applications SET revoked = 1 WHERE client_id = ? RETURNING 1",
                (client_id,),
            ).fetchall()
            c.execute("DELETE FROM csc_tokens WHERE client_id = ?", (client_id,))
            c.execute(
                "UPDATE approvals SET state = 'withdrawn'"
                " WHERE client_id = ? AND state IN ('pending', 'approved', 'authorised')",
                (client_id,),
            )
            return len(changed)

        if not await self._db.run(lambda c: transaction(c, revoke)):
            raise GatewayError(Kind.NOT_FOUND, "NO_APPLICATION", "no such application")

    async def token(self, client_id: str, client_secret: str, now: int) -> tuple[str, int]:
        """An access token for a client that proves its secret; returns (token, lifetime)."""
        if not ids.CLIENT_ID.matches(client_id) or len(client_secret) > 128:
            raise _invalid_client()
        rows = await self._db.run(
            lambda c: c.execute(
                "SELECT secret_sha256, revoked FROM csc_applications WHERE client_id = ?",
                (client_id,),
            ).fetchall()
        )
        expected = bytes(rows[0]["secret_sha256"]) if rows else bytes(32)
        matches = hmac.compare_digest(expected, _digest(client_secret))
        if not rows or rows[0]["revoked"] or not matches:
            raise _invalid_client()
        token = secrets.token_urlsafe(32)

        def store(c: Connection) -> None:
            c.execute("DELETE FROM csc_tokens WHERE expires_at <= ?", (now,))
            c.execute(
                "INSERT INTO csc_tokens (token_sha256, client_id, expires_at) VALUES (?, ?, ?)",
                (_digest(token), client_id, now + self._token_seconds),
            )

        await self._db.run(lambda c: transaction(c, store))
        return token, self._token_seconds

    async def authenticate(self, token: str, now: int) -> Application:
        """The application an access token was issued to, while it is valid and not revoked."""
        rows = (
            await self._db.run(
                lambda c: c.execute(
                    "SELECT a.client_id, a.name, a.grant_ids, a.created_at, a.revoked"
                    " FROM csc_tokens t JOIN csc_applications a ON a.client_id = t.client_id"
                    " WHERE t.token_sha256 = ? AND t.expires_at > ? AND a.revoked = 0",
                    (_digest(token), now),
                ).fetchall()
            )
            if 0 < len(token) <= 128
            else []
        )
        if not rows:
            raise GatewayError(
                Kind.UNAUTHENTICATED, "TOKEN_INVALID", "the access token is unknown or expired"
            )
        return _application(rows[0])
