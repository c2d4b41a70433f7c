"""Phone sessions with the gateway: the device key answers a fresh challenge, the user's
personal certificate must be valid and unrevoked, and a short-lived bearer token results.

A challenge costs the gateway no state until the device key has answered it: it is a timestamp,
random bytes and a MAC over both and the key id, under the challenge key (a file that every
gateway sharing the database shares, so that a phone may answer at any gateway the challenge
another issued, and a restart keeps the challenges outstanding). Single use holds because a
challenge the device key answered is recorded in the gateway database (its SHA-256, until it
would have expired anyway) in the transaction that stores the session: of two answers to one
challenge, through one gateway or two, the primary key lets one through. At most a few are
recorded per key, so strangers asking for challenges, or answering them without the device key,
cannot fill anything.

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

import grpc
from cachetools import LRUCache

from mobilesign import deviceauth, ids
from mobilesign.errors import Kind
from mobilesign.storage.connection import Connection
from mobilesign.storage.database import Database, transaction
from server.cosigner_client import CosignerClient
from server.errors import GatewayError
from server.ra_client import KeyStatus, Registry

CHALLENGE_SECONDS = 60
SESSION_SECONDS = 900
#: Sessions kept in memory once read from the database.
KNOWN_SESSIONS = 65_536
#: Challenges kept in memory once known to be used (a replay is refused before the cosigner is
#: asked; one not known here is looked up in the database).
KNOWN_USED_CHALLENGES = 65_536
#: A challenge: timestamp (8 bytes, big-endian nanoseconds since the Unix epoch), random
#: (8 bytes), HMAC-SHA256 truncated to 16 bytes: 32 bytes in all, the length the wire format
#: always had.
_STAMP_BYTES = 8
_RANDOM_BYTES = 8
_MAC_BYTES = 16
CHALLENGE_BYTES = _STAMP_BYTES + _RANDOM_BYTES + _MAC_BYTES
#: Logins one key may complete within one challenge lifetime; beyond it TOO_MANY_CHALLENGES.
#: Only the device key's holder can use them up, and they bound the used challenges recorded.
MAX_LOGINS_PER_KEY = 16
#: How far apart the clocks of the gateways sharing a database may be (NTP keeps them far
#: closer): a challenge stamped by a gateway ahead is taken by one behind, and a used challenge
#: is recorded that much past its expiry.
CLOCK_SKEW_SECONDS = 2
_SECOND = 1_000_000_000


def _challenge_invalid() -> GatewayError:
    return GatewayError(
        Kind.UNAUTHENTICATED, "CHALLENGE_INVALID", "unknown, used or expired challenge"
    )


class Challenges:
    """Issues and checks self-authenticating login challenges; keeps no state per challenge.

    ``key`` is the MAC key (the challenge key file's), ``clock`` the wall clock in nanoseconds
    since the Unix epoch: gateways check one another's challenges, so the stamp is one they all
    read alike.
    """

    def __init__(
        self,
        key: bytes,
        lifetime_seconds: float = CHALLENGE_SECONDS,
        *,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        # The key is used for nothing but these MACs: no domain tag needed.
        self._key = key
        self._clock = clock
        self.lifetime_ns = int(lifetime_seconds * _SECOND)
        self._skew_ns = CLOCK_SKEW_SECONDS * _SECOND

    def now(self) -> int:
        """The current stamp (nanoseconds since the Unix epoch)."""
        return self._clock()

    def _mac(self, user_key_id: str, stamp_and_random: bytes) -> bytes:
        # Stamp and random have fixed lengths and the key id comes last: unambiguous.
        message = stamp_and_random + user_key_id.encode("utf-8", "surrogatepass")
        return hmac.digest(self._key, message, "sha256")[:_MAC_BYTES]

    def issue(self, user_key_id: str) -> bytes:
        """A fresh challenge for ``user_key_id`` (whose format the caller checked)."""
        body = self.now().to_bytes(_STAMP_BYTES, "big") + secrets.token_bytes(_RANDOM_BYTES)
        return body + self._mac(user_key_id, body)

    def check(self, user_key_id: str, challenge: bytes) -> int:
        """Check that ``challenge`` was issued under this key for ``user_key_id`` and has not
        expired; return the stamp at which it expires. Raise CHALLENGE_INVALID otherwise."""
        if len(challenge) != CHALLENGE_BYTES:
            raise _challenge_invalid()
        body, mac = challenge[:-_MAC_BYTES], challenge[-_MAC_BYTES:]
        if not hmac.compare_digest(mac, self._mac(user_key_id, body)):
            raise _challenge_invalid()
        stamp = int.from_bytes(body[:_STAMP_BYTES], "big")
        if not -self._skew_ns <= self.now() - stamp <= self.lifetime_ns:
            raise _challenge_invalid()
        return stamp + self.lifetime_ns

    def forget_at(self, expires: int) -> int:
        """The Unix second from which no gateway takes a challenge that expires at stamp
        ``expires`` (its clock may be behind this one's): when its record may go."""
        return (expires + self._skew_ns) // _SECOND + 1


@dataclass(frozen=True)
class Session:
    """Who a valid session token belongs to."""

    user_id: str
    user_key_id: str
    certificate: KeyStatus


class Sessions:
    """Challenges (self-authenticating, single use across the gateways sharing the database)
    and session tokens (hashed, in the gateway DB)."""

    def __init__(
        self,
        db: Database,
        registry: Registry,
        cosigner: CosignerClient,
        challenges: Challenges,
    ) -> None:
        self._db = db
        self._registry = registry
        self._cosigner = cosigner
        self._challenges = challenges
        # Challenges known to be used: answered here, or refused by the database. Only these
        # (a challenge not found here may have been used through another gateway).
        self._used: LRUCache[bytes, bool] = LRUCache(KNOWN_USED_CHALLENGES)
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
        # Early, to spare the cosigner a call; the database decides, after the awaits.
        if challenge in self._used:
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
        await self.certificate(user_key_id)
        token = secrets.token_urlsafe(32)
        now = int(time.time())
        login = _Login(
            challenge_sha256=hashlib.sha256(challenge).digest(),
            user_key_id=user_key_id,
            forget_at=self._challenges.forget_at(expires),
            challenges_now=self._challenges.now() // _SECOND,
            token_sha256=hashlib.sha256(token.encode()).digest(),
            user_id=key.user_id,
            expires_at=now + SESSION_SECONDS,
            now=now,
        )
        try:
            await self._db.run(lambda c: transaction(c, lambda c: _store_session(c, login)))
        except _ChallengeUsed:
            self._used[challenge] = True
            raise _challenge_invalid() from None
        except _TooManyLogins:
            raise GatewayError(
                Kind.EXHAUSTED,
                "TOO_MANY_CHALLENGES",
                f"at most {MAX_LOGINS_PER_KEY} logins per key within "
                f"{self._challenges.lifetime_ns / 1e9:g} s; try again shortly",
            ) from None
        self._used[challenge] = True
        return token, login.expires_at, key.user_id

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
            rows = await self._db.run(
                lambda c: c.execute(
                    "SELECT user_key_id, user_id, expires_at FROM sessions WHERE token_sha256 = ?",
                    (digest,),
                ).fetchall()
            )
            if rows:
                row = rows[0]
                known = (row["user_key_id"], row["user_id"], row["expires_at"])
                self._known[digest] = known
        if known is None or known[2] <= time.time():
            raise GatewayError(
                Kind.UNAUTHENTICATED, "SESSION_EXPIRED", "the session is unknown or has expired"
            )
        user_key_id, user_id, _ = known
        certificate = await self.certificate(user_key_id)
        return Session(user_id, user_key_id, certificate)


class _ChallengeUsed(Exception):
    """The challenge was answered before (here or through another gateway)."""


class _TooManyLogins(Exception):
    """The key has used up its logins for now."""


@dataclass(frozen=True)
class _Login:
    """What :func:`_store_session` records of a device's valid answer."""

    challenge_sha256: bytes
    user_key_id: str
    forget_at: int  # Unix second from which the used challenge's record may go
    challenges_now: int  # Unix second by the challenges' clock
    token_sha256: bytes
    user_id: str
    expires_at: int  # the session's, in Unix seconds
    now: int  # Unix second by the wall clock, which sessions' expiries are on


def _store_session(c: Connection, login: _Login) -> None:
    # Runs inside ``transaction``: a refusal raised here rolls back the challenge's record.
    c.execute("DELETE FROM sessions WHERE expires_at <= ?", (login.now,))
    c.execute("DELETE FROM used_challenges WHERE expires_at <= ?", (login.challenges_now,))
    # The primary key decides between two answers to one challenge: the second waits for the
    # first's commit, then inserts nothing.
    inserted = c.execute(
        "INSERT INTO used_challenges (challenge_sha256, user_key_id, expires_at)"
        " VALUES (?, ?, ?) ON CONFLICT (challenge_sha256) DO NOTHING RETURNING 1",
        (login.challenge_sha256, login.user_key_id, login.forget_at),
    ).fetchall()
    if not inserted:
        raise _ChallengeUsed
    used = c.execute(
        "SELECT COUNT(*) FROM used_challenges WHERE user_key_id = ?", (login.user_key_id,)
    ).fetchall()[0][0]
    if used > MAX_LOGINS_PER_KEY:
        raise _TooManyLogins
    c.execute(
        "INSERT INTO sessions (token_sha256, user_key_id, user_id, expires_at) VALUES (?, ?, ?, ?)",
        (login.token_sha256, login.user_key_id, login.user_id, login.expires_at),
    )
