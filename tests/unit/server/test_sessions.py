"""The gateway's login challenges: self-authenticating (timestamp, random, MAC over both and the
key id under the challenge key), so the gateway keeps nothing per challenge; every part tampered
with, expiry, another key id and another key refused; single use after a valid device answer,
recorded in the gateway database, so also for two concurrent answers and for answers through two
gateways sharing the database; the used challenges bounded per key and deleted as they expire;
the challenge key file kept across a restart."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from mobilesign import deviceauth
from mobilesign.hosting.secret_file import load_or_create
from mobilesign.storage.schema import Location
from mobilesign.v1 import cosigner_pb2
from server.database import open_gateway_db
from server.errors import GatewayError
from server.ra_client import KeyStatus
from server.sessions import (
    CHALLENGE_BYTES,
    CLOCK_SKEW_SECONDS,
    MAX_LOGINS_PER_KEY,
    Challenges,
    Sessions,
)
from tests.conftest import peek

KEY_ID = "ab" * 32
OTHER_KEY_ID = "cd" * 32
SECOND = 1_000_000_000
CHALLENGE_KEY = secrets.token_bytes(32)


class Clock:
    """A wall clock in nanoseconds since the Unix epoch that tests move by hand."""

    def __init__(self) -> None:
        self.ns = 1_780_000_000 * SECOND

    def __call__(self) -> int:
        return self.ns

    def advance(self, seconds: float) -> None:
        self.ns += int(seconds * SECOND)


def refused(reason: str, challenges: Challenges, key_id: str, challenge: bytes) -> None:
    with pytest.raises(GatewayError) as info:
        challenges.check(key_id, challenge)
    assert info.value.reason == reason


def flipped(challenge: bytes, index: int) -> bytes:
    changed = bytearray(challenge)
    changed[index] ^= 0x01
    return bytes(changed)


# The challenge and its MAC ----------------------------------------------------------------------


def test_a_challenge_is_32_bytes_and_checks_for_its_key_within_its_lifetime() -> None:
    clock = Clock()
    challenges = Challenges(CHALLENGE_KEY, 60, clock=clock)
    challenge = challenges.issue(KEY_ID)
    assert len(challenge) == CHALLENGE_BYTES == 32
    assert challenges.issue(KEY_ID) != challenge
    clock.advance(60)
    assert challenges.check(KEY_ID, challenge) == challenges.now()


@pytest.mark.parametrize(
    ("part", "indices"),
    [("timestamp", range(0, 8)), ("random", range(8, 16)), ("mac", range(16, 32))],
)
def test_each_part_tampered_with_is_refused(part: str, indices: range) -> None:
    challenges = Challenges(CHALLENGE_KEY, 60, clock=Clock())
    challenge = challenges.issue(KEY_ID)
    for index in indices:
        refused("CHALLENGE_INVALID", challenges, KEY_ID, flipped(challenge, index))


def test_expired_refused() -> None:
    clock = Clock()
    challenges = Challenges(CHALLENGE_KEY, 60, clock=clock)
    challenge = challenges.issue(KEY_ID)
    clock.advance(60.000_000_001)
    refused("CHALLENGE_INVALID", challenges, KEY_ID, challenge)


def test_a_challenge_for_another_key_id_is_refused() -> None:
    challenges = Challenges(CHALLENGE_KEY, 60, clock=Clock())
    refused("CHALLENGE_INVALID", challenges, OTHER_KEY_ID, challenges.issue(KEY_ID))
    refused("CHALLENGE_INVALID", challenges, KEY_ID.upper(), challenges.issue(KEY_ID))


def test_a_challenge_under_another_key_is_refused() -> None:
    clock = Clock()
    challenge = Challenges(CHALLENGE_KEY, 60, clock=clock).issue(KEY_ID)
    refused(
        "CHALLENGE_INVALID", Challenges(secrets.token_bytes(32), 60, clock=clock), KEY_ID, challenge
    )


def test_forged_and_wrong_lengths_refused() -> None:
    clock = Clock()
    challenges = Challenges(CHALLENGE_KEY, 60, clock=clock)
    challenge = challenges.issue(KEY_ID)
    for candidate in (b"", challenge[:-1], challenge + b"\x00", secrets.token_bytes(32)):
        refused("CHALLENGE_INVALID", challenges, KEY_ID, candidate)
    # A stamp further in the future than gateways' clocks differ, even with a valid MAC.
    ahead = Clock()
    future = Challenges(CHALLENGE_KEY, 60, clock=ahead)
    ahead.advance(CLOCK_SKEW_SECONDS + 0.001)
    refused("CHALLENGE_INVALID", challenges, KEY_ID, future.issue(KEY_ID))
    assert future.check(KEY_ID, future.issue(KEY_ID))


def test_a_challenge_from_a_gateway_whose_clock_is_a_little_ahead_is_taken() -> None:
    clock, ahead = Clock(), Clock()
    ahead.advance(CLOCK_SKEW_SECONDS)
    challenge = Challenges(CHALLENGE_KEY, 60, clock=ahead).issue(KEY_ID)
    assert Challenges(CHALLENGE_KEY, 60, clock=clock).check(KEY_ID, challenge)


# Single use, in the gateway database ------------------------------------------------------------


class _Cosigner:
    def __init__(self, devices: dict[str, ec.EllipticCurvePrivateKey]) -> None:
        self.responses = {
            key_id: cosigner_pb2.GetKeyResponse(
                key_id=key_id, user_id="alice", device_public_key=deviceauth.device_key_spki(d)
            )
            for key_id, d in devices.items()
        }
        self.calls = 0

    async def key(self, key_id: str) -> cosigner_pb2.GetKeyResponse | None:
        self.calls += 1
        await asyncio.sleep(0)  # let a concurrent answer run up to the same point
        return self.responses.get(key_id)


class _Registry:
    def __init__(self) -> None:
        issuer_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "alice")])
        now = datetime.datetime.now(datetime.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(issuer_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .sign(issuer_key, hashes.SHA256())
        )
        self.status = KeyStatus("1a", certificate.public_bytes(Encoding.DER), False)

    async def key_status(self, key_id: str) -> KeyStatus:
        return self.status


DEVICES = {key_id: ec.generate_private_key(ec.SECP256R1()) for key_id in (KEY_ID, OTHER_KEY_ID)}

#: A gateway on the test's database file: (challenge key, clock) -> its sessions.
Gateway = Callable[..., Awaitable[tuple[Sessions, _Cosigner]]]


@pytest.fixture
async def gateway(where: Callable[[str], Location]) -> AsyncIterator[Gateway]:
    """Opens gateways (each its own database connection) on one store, on each back end."""
    async with contextlib.AsyncExitStack() as opened:

        async def open_gateway(
            key: bytes = CHALLENGE_KEY, clock: Clock | None = None
        ) -> tuple[Sessions, _Cosigner]:
            db = await open_gateway_db(where("gateway"))
            opened.push_async_callback(db.close)
            cosigner = _Cosigner(DEVICES)
            challenges = Challenges(key, 60, clock=clock) if clock else Challenges(key, 60)
            return Sessions(db, _Registry(), cosigner, challenges), cosigner  # type: ignore[arg-type]

        yield open_gateway


def _answer(challenge: bytes, key_id: str = KEY_ID) -> bytes:
    return deviceauth.sign(
        DEVICES[key_id], deviceauth.gateway_session_transcript(bytes.fromhex(key_id), challenge)
    )


def _used_rows(where: Location) -> list[tuple[bytes, str]]:
    with peek(where) as other:
        rows = other.execute("SELECT challenge_sha256, user_key_id FROM used_challenges")
        return [(bytes(row[0]), row[1]) for row in rows.fetchall()]


async def _refused(reason: str, attempt: Awaitable[object]) -> None:
    with pytest.raises(GatewayError) as info:
        await attempt
    assert info.value.reason == reason


async def test_a_wrong_answer_leaves_the_challenge_usable_and_a_right_one_uses_it_up(
    gateway: Gateway,
) -> None:
    sessions, cosigner = await gateway()
    challenge = sessions.challenge(KEY_ID)
    intruder = ec.generate_private_key(ec.SECP256R1())
    wrong = deviceauth.sign(
        intruder, deviceauth.gateway_session_transcript(bytes.fromhex(KEY_ID), challenge)
    )
    await _refused("DEVICE_PROOF_INVALID", sessions.finish(KEY_ID, challenge, wrong))
    _, _, user_id = await sessions.finish(KEY_ID, challenge, _answer(challenge))
    assert user_id == "alice"
    calls = cosigner.calls
    await _refused("CHALLENGE_INVALID", sessions.finish(KEY_ID, challenge, _answer(challenge)))
    assert cosigner.calls == calls, "a used challenge is refused before asking the cosigner"


async def test_a_used_challenge_is_recorded_by_its_digest_only(
    gateway: Gateway, where: Callable[[str], Location]
) -> None:
    sessions, _ = await gateway()
    challenge = sessions.challenge(KEY_ID)
    await sessions.finish(KEY_ID, challenge, _answer(challenge))
    assert _used_rows(where("gateway")) == [(hashlib.sha256(challenge).digest(), KEY_ID)]


async def test_two_concurrent_answers_to_one_challenge_make_one_session(
    gateway: Gateway,
) -> None:
    sessions, _ = await gateway()
    challenge = sessions.challenge(KEY_ID)
    answer = _answer(challenge)
    results = await asyncio.gather(
        *(sessions.finish(KEY_ID, challenge, answer) for _ in range(5)), return_exceptions=True
    )
    tokens = [r for r in results if isinstance(r, tuple)]
    errors = [r for r in results if isinstance(r, GatewayError)]
    assert len(tokens) == 1
    assert [e.reason for e in errors] == ["CHALLENGE_INVALID"] * 4


async def test_a_challenge_answered_at_one_gateway_is_refused_at_another(
    gateway: Gateway,
) -> None:
    first, _ = await gateway()
    second, cosigner = await gateway()
    challenge = first.challenge(KEY_ID)
    await first.finish(KEY_ID, challenge, _answer(challenge))
    await _refused("CHALLENGE_INVALID", second.finish(KEY_ID, challenge, _answer(challenge)))
    # Known used now at the second gateway too: the next replay does not reach the cosigner.
    calls = cosigner.calls
    await _refused("CHALLENGE_INVALID", second.finish(KEY_ID, challenge, _answer(challenge)))
    assert cosigner.calls == calls


async def test_two_concurrent_answers_through_two_gateways_make_one_session(
    gateway: Gateway,
) -> None:
    gateways = [(await gateway())[0] for _ in range(2)]
    for _ in range(5):
        challenge = gateways[0].challenge(KEY_ID)
        answer = _answer(challenge)
        results = await asyncio.gather(
            *(g.finish(KEY_ID, challenge, answer) for g in gateways), return_exceptions=True
        )
        assert len([r for r in results if isinstance(r, tuple)]) == 1
        assert [r.reason for r in results if isinstance(r, GatewayError)] == ["CHALLENGE_INVALID"]


async def test_a_challenge_issued_under_another_key_file_is_refused(
    gateway: Gateway, tmp_path: Path
) -> None:
    ours, _ = await gateway(load_or_create(tmp_path / "a" / "challenge.key"))
    theirs, cosigner = await gateway(load_or_create(tmp_path / "b" / "challenge.key"))
    challenge = theirs.challenge(KEY_ID)
    await _refused("CHALLENGE_INVALID", ours.finish(KEY_ID, challenge, _answer(challenge)))
    assert cosigner.calls == 0


async def test_the_challenge_key_file_is_made_owner_only_and_kept_across_a_restart(
    gateway: Gateway, tmp_path: Path
) -> None:
    path = tmp_path / "state" / "gateway" / "challenge.key"
    before, _ = await gateway(load_or_create(path))
    assert path.stat().st_mode & 0o777 == 0o600
    outstanding, used = before.challenge(KEY_ID), before.challenge(KEY_ID)
    await before.finish(KEY_ID, used, _answer(used))
    # A restart: the key read back from the file, the used challenges from the database.
    after, _ = await gateway(load_or_create(path))
    await after.finish(KEY_ID, outstanding, _answer(outstanding))
    await _refused("CHALLENGE_INVALID", after.finish(KEY_ID, used, _answer(used)))


async def test_used_challenges_are_bounded_per_key_and_deleted_when_expired(
    gateway: Gateway, where: Callable[[str], Location]
) -> None:
    clock = Clock()
    sessions, _ = await gateway(clock=clock)
    issued = [sessions.challenge(KEY_ID) for _ in range(MAX_LOGINS_PER_KEY + 1)]
    for challenge in issued[:-1]:
        await sessions.finish(KEY_ID, challenge, _answer(challenge))
    # Through another gateway, so that the database (not this one's memory) refuses the replay.
    other, _ = await gateway(clock=clock)
    await _refused("CHALLENGE_INVALID", other.finish(KEY_ID, issued[0], _answer(issued[0])))
    await _refused("TOO_MANY_CHALLENGES", other.finish(KEY_ID, issued[-1], _answer(issued[-1])))
    # Another key is not affected by this one's logins.
    challenge = sessions.challenge(OTHER_KEY_ID)
    await sessions.finish(OTHER_KEY_ID, challenge, _answer(challenge, OTHER_KEY_ID))
    assert len(_used_rows(where("gateway"))) == MAX_LOGINS_PER_KEY + 1
    # Kept while a gateway whose clock is behind might still take them, then deleted at the
    # next login.
    clock.advance(60 + CLOCK_SKEW_SECONDS)
    challenge = sessions.challenge(KEY_ID)
    await _refused("TOO_MANY_CHALLENGES", sessions.finish(KEY_ID, challenge, _answer(challenge)))
    clock.advance(1)
    await sessions.finish(KEY_ID, challenge, _answer(challenge))
    assert len(_used_rows(where("gateway"))) == 1


async def test_challenges_for_unknown_keys_cost_nothing(
    gateway: Gateway, where: Callable[[str], Location]
) -> None:
    sessions, _ = await gateway()
    for _ in range(20_000):
        sessions.challenge(secrets.token_hex(32))
    assert _used_rows(where("gateway")) == []
    challenge = sessions.challenge(KEY_ID)
    await sessions.finish(KEY_ID, challenge, _answer(challenge))
