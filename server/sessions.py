"""Phone sessions with the gateway: the device key answers a fresh challenge, the user's
personal certificate must be valid and unrevoked, and a short-lived bearer token results.

Tokens are 32 random bytes; the gateway stores only their SHA-256, so a copy of its database
does not let anyone act as a user. Every call re-checks that the certificate is not revoked.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Any

import aiosqlite
import grpc
from cryptography import x509

from mobilesign import deviceauth, ids
from mobilesign.errors import Kind
from server.cosigner_client import CosignerClient
from server.errors import GatewayError
from server.ra_client import KeyStatus, Registry

CHALLENGE_SECONDS = 60
SESSION_SECONDS = 900
_MAX_CHALLENGES = 10_000


@dataclass(frozen=True)
class Session:
    """Who a valid session token belongs to."""

    user_id: str
    user_key_id: str
    certificate: KeyStatus


class Sessions:
    """Challenges (in memory, single use) and session tokens (hashed, in the gateway DB)."""

    def __init__(
        self, db: aiosqlite.Connection, registry: Registry, cosigner: CosignerClient
    ) -> None:
        self._db = db
        self._registry = registry
        self._cosigner = cosigner
        self._challenges: dict[tuple[str, bytes], float] = {}

    async def certificate(self, user_key_id: str) -> KeyStatus:
        """The key's personal certificate (the RA's answer), which must be valid now and never
        revoked."""
        record = await self._registry.key_status(user_key_id)
        if not record.serial:
            raise GatewayError(Kind.DENIED, "NO_CERTIFICATE", "the key has no certificate")
        if record.revoked:
            raise GatewayError(
                Kind.DENIED,
                "CERTIFICATE_REVOKED",
                "the user's certificate has been revoked",
            )
        certificate = x509.load_der_x509_certificate(record.der)
        now = time.time()
        if not (
            certificate.not_valid_before_utc.timestamp()
            <= now
            < certificate.not_valid_after_utc.timestamp()
        ):
            raise GatewayError(
                Kind.DENIED,
                "CERTIFICATE_EXPIRED",
                "the user's certificate is not valid now",
            )
        return record

    def challenge(self, user_key_id: str) -> bytes:
        """A fresh single-use challenge for ``user_key_id``."""
        ids.USER_KEY_ID.check(user_key_id)
        now = time.monotonic()
        self._challenges = {k: t for k, t in self._challenges.items() if t > now}
        if len(self._challenges) >= _MAX_CHALLENGES:
            raise GatewayError(Kind.EXHAUSTED, "TOO_MANY_CHALLENGES", "try again shortly")
        challenge = secrets.token_bytes(deviceauth.CHALLENGE_BYTES)
        self._challenges[(user_key_id, challenge)] = now + CHALLENGE_SECONDS
        return challenge

    async def finish(
        self, user_key_id: str, challenge: bytes, device_signature: bytes
    ) -> tuple[str, int, str]:
        """Check the device's answer; return (token, expiry, user id)."""
        expiry = self._challenges.pop((user_key_id, challenge), None)
        if expiry is None or expiry < time.monotonic():
            raise GatewayError(
                Kind.UNAUTHENTICATED, "CHALLENGE_INVALID", "unknown, used or expired challenge"
            )
        key = await self._cosigner.key(user_key_id)
        if key is None:
            raise GatewayError(Kind.UNAUTHENTICATED, "KEY_NOT_ENROLLED", "no such enrolled key")
        transcript = deviceauth.gateway_session_transcript(bytes.fromhex(user_key_id), challenge)
        device_key = deviceauth.load_device_key(key.device_public_key)
        if not deviceauth.verify(device_key, device_signature, transcript):
            raise GatewayError(
                Kind.UNAUTHENTICATED, "DEVICE_PROOF_INVALID", "the device key did not sign"
            )
        await self.certificate(user_key_id)
        token = secrets.token_urlsafe(32)
        now = int(time.time())
        expires_at = now + SESSION_SECONDS
        await self._db.execute("DELETE FROM sessions WHERE expires_at <= ?", (now,))
        await self._db.execute(
            "INSERT INTO sessions (token_sha256, user_key_id, user_id, expires_at)"
            " VALUES (?, ?, ?, ?)",
            (hashlib.sha256(token.encode()).digest(), user_key_id, key.user_id, expires_at),
        )
        return token, expires_at, key.user_id

    async def authenticate(self, context: grpc.aio.ServicerContext[Any, Any]) -> Session:
        """The session named by the call's ``authorization: Bearer <token>`` metadata."""
        token = ""
        for key, value in context.invocation_metadata() or ():
            if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
                token = value[len("Bearer ") :]
        if not token or len(token) > 128:
            raise GatewayError(
                Kind.UNAUTHENTICATED, "SESSION_REQUIRED", "a session token is required"
            )
        async with self._db.execute(
            "SELECT user_key_id, user_id, expires_at FROM sessions WHERE token_sha256 = ?",
            (hashlib.sha256(token.encode()).digest(),),
        ) as cursor:
            row = await cursor.fetchone()
        if row is None or row["expires_at"] <= time.time():
            raise GatewayError(
                Kind.UNAUTHENTICATED, "SESSION_EXPIRED", "the session is unknown or has expired"
            )
        certificate = await self.certificate(row["user_key_id"])
        return Session(row["user_id"], row["user_key_id"], certificate)
