"""Phone sessions with the gateway: the device key answers a fresh challenge, the user's
personal certificate must be valid and unrevoked, and a short-lived bearer token results.

A challenge costs the gateway no state until the device key has answered it: it is a timestamp,
random bytes and a MAC over both and the key id, under a key that lives only in this process's
memory (a restart invalidates the challenges outstanding, nothing else). Single use holds because
a challenge is remembered once a device key answered it, until it would have expired anyway, and
at most a few per key; so strangers asking for challenges, or answering them without the device
key, cannot fill anything.

Tokens are 32 random bytes; the gateway stores only their SHA-256, so a copy of its database
does not let anyone act as a user. Every call re-checks that the certificate is not revoked.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiosqlite
import grpc
from cachetools import LRUCache

from mobilesign import deviceauth, ids
from mobilesign.errors import Kind
from server.cosigner_client import CosignerClient
from server.errors import GatewayError
from server.ra_client import KeyStatus, Registry

CHALLENGE_SECONDS = 60
SESSION_SECONDS = 900
#: Sessions kept in memory once read from the database.
KNOWN_SESSIONS = 65_536
#: A challenge: timestamp (8 bytes, big-endian nanoseconds on this process's monotonic clock),
#: random (8 bytes), HMAC-SHA256 truncated to 16 bytes: 32 bytes in all, the length the wire
#: format always had.
_STAMP_BYTES = 8
_RANDOM_BYTES = 8
_MAC_BYTES = 16
CHALLENGE_BYTES = _STAMP_BYTES + _RANDOM_BYTES + _MAC_BYTES
#: Logins one key may complete within one challenge lifetime; beyond it TOO_MANY_CHALLENGES.
#: Only the device key's holder can use them up, and they bound the memory of used challenges.
MAX_LOGINS_PER_KEY = 16


def _challenge_invalid() -> GatewayError:
    return GatewayError(
        Kind.UNAUTHENTICATED, "CHALLENGE_INVALID", "unknown, used or expired challenge"
    )


class Challenges:
    """Issues and checks self-authenticating login challenges; keeps no state per challenge.

    ``key`` (random when None) is the MAC key, ``clock`` a monotonic clock in nanoseconds.
    """

    def __init__(
        self,
        lifetime_seconds: float = CHALLENGE_SECONDS,
        *,
        key: bytes | None = None,
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        # Used for nothing but these MACs, and never stored: no domain tag needed, and a
        # restart simply invalidates the challenges outstanding.
        self._key = key if key is not None else secrets.token_bytes(32)
        self._clock = clock
        # Stamps count from this object's creation, so challenges do not tell the host's uptime.
        self._epoch = clock()
        self.lifetime_ns = int(lifetime_seconds * 1_000_000_000)

    def now(self) -> int:
        """The current stamp (nanoseconds since this object was created)."""
        return self._clock() - self._epoch

    def _mac(self, user_key_id: str, stamp_and_random: bytes) -> bytes:
        # Stamp and random have fixed lengths and the key id comes last: unambiguous.
        message = stamp_and_random + user_key_id.encode("utf-8", "surrogatepass")
        return hmac.digest(self._key, message, "sha256")[:_MAC_BYTES]

    def issue(self, user_key_id: str) -> bytes:
        """A fresh challenge for ``user_key_id`` (whose format the caller checked)."""
        stamp = max(self.now(), 0).to_bytes(_STAMP_BYTES, "big")
        body = stamp + secrets.token_bytes(_RANDOM_BYTES)
        return body + self._mac(user_key_id, body)

    def check(self, user_key_id: str, challenge: bytes) -> int:
        """Check that this process issued ``challenge`` for ``user_key_id`` and that it has not
        expired; return the stamp at which it expires. Raise CHALLENGE_INVALID otherwise."""
        if len(challenge) != CHALLENGE_BYTES:
            raise _challenge_invalid()
        body, mac = challenge[:-_MAC_BYTES], challenge[-_MAC_BYTES:]
        if not hmac.compare_digest(mac, self._mac(user_key_id, body)):
            raise _challenge_invalid()
        stamp = int.from_bytes(body[:_STAMP_BYTES], "big")
        if not 0 <= self.now() - stamp <= self.lifetime_ns:
            raise _challenge_invalid()
        return stamp + self.lifetime_ns


class UsedChallenges:
    """The challenges a device key has answered, each until it expires, at most
    ``per_key`` per key: what makes a challenge single use."""

    def __init__(self, challenges: Challenges, per_key: int = MAX_LOGINS_PER_KEY) -> None:
        self._challenges = challenges
        self._per_key = per_key
        self._used: dict[str, dict[bytes, int]] = {}
        self._swept = challenges.now()

    def _sweep(self, now: int) -> None:
        # Every key's expired entries once per lifetime, so keys that never log in again do not
        # keep theirs; the cost is spread over a lifetime's logins.
        if now - self._swept < self._challenges.lifetime_ns:
            return
        self._swept = now
        for key_id in list(self._used):
            self._expire(key_id, now)

    def _expire(self, key_id: str, now: int) -> dict[bytes, int]:
        live = {c: t for c, t in self._used.get(key_id, {}).items() if t >= now}
        if live:
            self._used[key_id] = live
        else:
            self._used.pop(key_id, None)
        return live

    def seen(self, user_key_id: str, challenge: bytes) -> bool:
        """True when ``challenge`` was already answered for ``user_key_id``."""
        return challenge in self._used.get(user_key_id, {})

    def use(self, user_key_id: str, challenge: bytes, expires: int) -> None:
        """Record that the device key answered ``challenge``; raise CHALLENGE_INVALID when it
        already did, TOO_MANY_CHALLENGES when the key has used up its logins for now."""
        now = self._challenges.now()
        self._sweep(now)
        live = self._expire(user_key_id, now)
        if challenge in live:
            raise _challenge_invalid()
        if len(live) >= self._per_key:
            raise GatewayError(
                Kind.EXHAUSTED,
                "TOO_MANY_CHALLENGES",
                f"at most {self._per_key} logins per key within "
                f"{self._challenges.lifetime_ns / 1e9:g} s; try again shortly",
            )
        self._used.setdefault(user_key_id, {})[challenge] = expires

    def __len__(self) -> int:
        return sum(len(used) for used in self._used.values())


@dataclass(frozen=True)
class Session:
    """Who a valid session token belongs to."""

    user_id: str
    user_key_id: str
    certificate: KeyStatus


class Sessions:
    """Challenges (self-authenticating, single use) and session tokens (hashed, in the gateway
    DB)."""

    def __init__(
        self,
        db: aiosqlite.Connection,
        registry: Registry,
        cosigner: CosignerClient,
        challenge_seconds: float = CHALLENGE_SECONDS,
    ) -> None:
        self._db = db
        self._registry = registry
        self._cosigner = cosigner
        self._challenges = Challenges(challenge_seconds)
        self._used = UsedChallenges(self._challenges)
        # Sessions found in the database (user key, user, expiry), by token hash: a session
        # ends only by expiring, so one found stays as it was.
        self._known: LRUCache[bytes, tuple[str, str, int]] = LRUCache(KNOWN_SESSIONS)

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
        certificate = record.parsed
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
        """A fresh single-use challenge for ``user_key_id``; nothing is stored."""
        ids.USER_KEY_ID.check(user_key_id)
        return self._challenges.issue(user_key_id)

    async def finish(
        self, user_key_id: str, challenge: bytes, device_signature: bytes
    ) -> tuple[str, int, str]:
        """Check the device's answer; return (token, expiry, user id)."""
        expires = self._challenges.check(user_key_id, challenge)
        # Early, to spare the cosigner a call; use() below decides, after the awaits.
        if self._used.seen(user_key_id, challenge):
            raise _challenge_invalid()
        key = await self._cosigner.key(user_key_id)
        if key is None:
            raise GatewayError(Kind.UNAUTHENTICATED, "KEY_NOT_ENROLLED", "no such enrolled key")
        transcript = deviceauth.gateway_session_transcript(bytes.fromhex(user_key_id), challenge)
        device_key = deviceauth.load_device_key(key.device_public_key)
        if not deviceauth.verify(device_key, device_signature, transcript):
            raise GatewayError(
                Kind.UNAUTHENTICATED, "DEVICE_PROOF_INVALID", "the device key did not sign"
            )
        # No await between the check and the record: of two concurrent answers, one wins.
        self._used.use(user_key_id, challenge, expires)
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
        digest = hashlib.sha256(token.encode()).digest()
        known = self._known.get(digest)
        if known is None:
            async with self._db.execute(
                "SELECT user_key_id, user_id, expires_at FROM sessions WHERE token_sha256 = ?",
                (digest,),
            ) as cursor:
                row = await cursor.fetchone()
            if row is not None:
                known = (row["user_key_id"], row["user_id"], row["expires_at"])
                self._known[digest] = known
        if known is None or known[2] <= time.time():
            raise GatewayError(
                Kind.UNAUTHENTICATED, "SESSION_EXPIRED", "the session is unknown or has expired"
            )
        user_key_id, user_id, _ = known
        certificate = await self.certificate(user_key_id)
        return Session(user_id, user_key_id, certificate)
