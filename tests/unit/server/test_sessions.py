"""The gateway's login challenges: self-authenticating (timestamp, random, MAC over both and the
key id), so the gateway keeps nothing per challenge; every part tampered with, expiry, another
key id and another process's key refused; single use after a valid device answer, also for two
concurrent answers; the memory of used challenges bounded per key and emptied as they expire."""

from __future__ import annotations

import asyncio
import datetime
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from mobilesign import deviceauth
from mobilesign.v1 import cosigner_pb2
from server.database import open_gateway_db
from server.errors import GatewayError
from server.ra_client import KeyStatus
from server.sessions import (
    CHALLENGE_BYTES,
    MAX_LOGINS_PER_KEY,
    Challenges,
    Sessions,
    UsedChallenges,
)

KEY_ID = "ab" * 32
OTHER_KEY_ID = "cd" * 32
SECOND = 1_000_000_000


class Clock:
    """A monotonic clock in nanoseconds that tests move by hand."""

    def __init__(self) -> None:
        self.ns = 5 * SECOND

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
    challenges = Challenges(60, clock=clock)
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
    challenges = Challenges(60, clock=Clock())
    challenge = challenges.issue(KEY_ID)
    for index in indices:
        refused("CHALLENGE_INVALID", challenges, KEY_ID, flipped(challenge, index))


def test_expired_refused() -> None:
    clock = Clock()
    challenges = Challenges(60, clock=clock)
    challenge = challenges.issue(KEY_ID)
    clock.advance(60.000_000_001)
    refused("CHALLENGE_INVALID", challenges, KEY_ID, challenge)


def test_a_challenge_for_another_key_id_is_refused() -> None:
    challenges = Challenges(60, clock=Clock())
    refused("CHALLENGE_INVALID", challenges, OTHER_KEY_ID, challenges.issue(KEY_ID))
    refused("CHALLENGE_INVALID", challenges, KEY_ID.upper(), challenges.issue(KEY_ID))


def test_a_challenge_of_another_process_is_refused() -> None:
    clock = Clock()
    challenge = Challenges(60, clock=clock).issue(KEY_ID)
    # A restart: a new random MAC key, a new epoch on the same monotonic clock.
    refused("CHALLENGE_INVALID", Challenges(60, clock=clock), KEY_ID, challenge)


def test_forged_and_wrong_lengths_refused() -> None:
    clock = Clock()
    key = secrets.token_bytes(32)
    challenges = Challenges(60, key=key, clock=clock)
    challenge = challenges.issue(KEY_ID)
    for candidate in (b"", challenge[:-1], challenge + b"\x00", secrets.token_bytes(32)):
        refused("CHALLENGE_INVALID", challenges, KEY_ID, candidate)
    # A stamp in the future (which this process never issues) even with a valid MAC.
    ahead = Clock()
    future = Challenges(60, key=key, clock=ahead)
    ahead.advance(10)
    refused("CHALLENGE_INVALID", challenges, KEY_ID, future.issue(KEY_ID))
    assert future.check(KEY_ID, future.issue(KEY_ID))


# Single use -------------------------------------------------------------------------------------


def test_used_challenges_are_single_use_bounded_per_key_and_forgotten_when_expired() -> None:
    clock = Clock()
    challenges = Challenges(60, clock=clock)
    used = UsedChallenges(challenges)
    issued = [challenges.issue(KEY_ID) for _ in range(MAX_LOGINS_PER_KEY + 1)]
    for challenge in issued[:-1]:
        used.use(KEY_ID, challenge, challenges.check(KEY_ID, challenge))
    with pytest.raises(GatewayError) as info:
        used.use(KEY_ID, issued[0], challenges.check(KEY_ID, issued[0]))
    assert info.value.reason == "CHALLENGE_INVALID"
    with pytest.raises(GatewayError) as info:
        used.use(KEY_ID, issued[-1], challenges.check(KEY_ID, issued[-1]))
    assert info.value.reason == "TOO_MANY_CHALLENGES"
    # Another key is not affected by this one's logins.
    other = challenges.issue(OTHER_KEY_ID)
    used.use(OTHER_KEY_ID, other, challenges.check(OTHER_KEY_ID, other))
    assert len(used) == MAX_LOGINS_PER_KEY + 1
    # Once they would have expired, they are forgotten (the key's next login sweeps them all).
    clock.advance(61)
    fresh = challenges.issue(KEY_ID)
    used.use(KEY_ID, fresh, challenges.check(KEY_ID, fresh))
    assert len(used) == 1


class _Cosigner:
    def __init__(self, device: ec.EllipticCurvePrivateKey) -> None:
        self.response = cosigner_pb2.GetKeyResponse(
            key_id=KEY_ID, user_id="alice", device_public_key=deviceauth.device_key_spki(device)
        )
        self.calls = 0

    async def key(self, key_id: str) -> cosigner_pb2.GetKeyResponse | None:
        self.calls += 1
        await asyncio.sleep(0)  # let a concurrent answer run up to the same point
        return self.response if key_id == KEY_ID else None


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


@pytest.fixture
async def sessions_and_device(tmp_path: Path) -> AsyncIterator[tuple[Sessions, Any, _Cosigner]]:
    db = await open_gateway_db(tmp_path / "gateway.db")
    device = ec.generate_private_key(ec.SECP256R1())
    cosigner = _Cosigner(device)
    try:
        yield Sessions(db, _Registry(), cosigner, 60), device, cosigner  # type: ignore[arg-type]
    finally:
        await db.close()


def _answer(device: ec.EllipticCurvePrivateKey, challenge: bytes) -> bytes:
    return deviceauth.sign(
        device, deviceauth.gateway_session_transcript(bytes.fromhex(KEY_ID), challenge)
    )


async def test_a_wrong_answer_leaves_the_challenge_usable_and_a_right_one_uses_it_up(
    sessions_and_device: tuple[Sessions, Any, _Cosigner],
) -> None:
    sessions, device, cosigner = sessions_and_device
    challenge = sessions.challenge(KEY_ID)
    intruder = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(GatewayError) as info:
        await sessions.finish(KEY_ID, challenge, _answer(intruder, challenge))
    assert info.value.reason == "DEVICE_PROOF_INVALID"
    _, _, user_id = await sessions.finish(KEY_ID, challenge, _answer(device, challenge))
    assert user_id == "alice"
    calls = cosigner.calls
    with pytest.raises(GatewayError) as info:
        await sessions.finish(KEY_ID, challenge, _answer(device, challenge))
    assert info.value.reason == "CHALLENGE_INVALID"
    assert cosigner.calls == calls, "a used challenge is refused before asking the cosigner"


async def test_two_concurrent_answers_to_one_challenge_make_one_session(
    sessions_and_device: tuple[Sessions, Any, _Cosigner],
) -> None:
    sessions, device, _ = sessions_and_device
    challenge = sessions.challenge(KEY_ID)
    answer = _answer(device, challenge)
    results = await asyncio.gather(
        *(sessions.finish(KEY_ID, challenge, answer) for _ in range(5)), return_exceptions=True
    )
    tokens = [r for r in results if isinstance(r, tuple)]
    errors = [r for r in results if isinstance(r, GatewayError)]
    assert len(tokens) == 1
    assert [e.reason for e in errors] == ["CHALLENGE_INVALID"] * 4


async def test_challenges_for_unknown_keys_cost_nothing(
    sessions_and_device: tuple[Sessions, Any, _Cosigner],
) -> None:
    sessions, device, _ = sessions_and_device
    for _ in range(20_000):
        sessions.challenge(secrets.token_hex(32))
    assert len(sessions._used) == 0
    challenge = sessions.challenge(KEY_ID)
    await sessions.finish(KEY_ID, challenge, _answer(device, challenge))
