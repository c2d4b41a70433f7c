"""Honest two-party enrolment and signing through the client SDK: one phone signing 100
messages in one session, twenty phones at once, and shares that survive a cosigner restart with
nothing secret in its files in plaintext.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import signal

import pytest

from client import sdk
from client.keystore import Keystore
from mobilesign.testing import Deployment
from tests.integration.two_party import (
    PIN,
    SCHEME,
    cosigner_db,
    cosigner_db_path,
    enrol,
    get_key,
    new_device_key,
    new_ticket,
    signings,
    spki_of,
    verifier_for,
    verify_signature,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def deployment(two_party_deployment: Deployment) -> Deployment:
    """The shared HSM proxy, RA, gateway and cosigner (step timeout 3 s)."""
    return two_party_deployment


async def test_enrol_then_sign_100_messages_in_one_session(deployment: Deployment) -> None:
    user_id, ticket = await new_ticket(deployment)
    device_key = new_device_key()
    messages = [b""] + [f"service record {i}".encode() * (i % 7 + 1) for i in range(1, 100)]
    async with deployment.public_channel("cosigner") as channel:
        keystore = await sdk.enrol(channel, ticket, PIN, device_key)
        assert keystore.user_id == user_id
        assert keystore.key_id == keystore.group_public_key.hex()
        async with sdk.SigningSession(channel, keystore, PIN) as session:
            assert session.user_id == user_id
            signatures = await session.sign_many(messages)
            recorded = await session.close()
    assert recorded == 100
    assert len(set(signatures)) == 100
    for message, signature in zip(messages, signatures, strict=True):
        verify_signature(keystore, message, signature)

    rows = signings(deployment, keystore.key_id)
    assert [(r.message_sha256, r.signature) for r in rows] == [
        (hashlib.sha256(m).digest(), s) for m, s in zip(messages, signatures, strict=True)
    ]
    assert all(r.completed and len(r.commitments) == 128 for r in rows)
    # The stored group commitments are the phone's and the cosigner's nonce commitments: fresh
    # for every signature.
    assert len({r.commitments for r in rows}) == 100

    described = await get_key(deployment, keystore.key_id)
    assert (described.key_id, described.user_id, described.scheme) == (
        keystore.key_id,
        user_id,
        SCHEME,
    )
    assert (described.locked, described.failed_pin_attempts) == (False, 0)
    assert described.device_public_key == spki_of(device_key)


async def _phone(deployment: Deployment, count: int) -> tuple[Keystore, list[bytes], list[bytes]]:
    _, ticket = await new_ticket(deployment)
    messages = [secrets.token_bytes(48) for _ in range(count)]
    async with deployment.public_channel("cosigner") as channel:
        keystore = await sdk.enrol(channel, ticket, PIN)
        async with sdk.SigningSession(channel, keystore, PIN) as session:
            signatures = await session.sign_many(messages)
            assert await session.close() == count
    return keystore, messages, signatures


async def test_twenty_phones_enrol_and_sign_concurrently(deployment: Deployment) -> None:
    results = await asyncio.gather(*(_phone(deployment, 4) for _ in range(20)))
    assert len({keystore.key_id for keystore, _, _ in results}) == 20
    for keystore, messages, signatures in results:
        for message, signature in zip(messages, signatures, strict=True):
            verify_signature(keystore, message, signature)
        rows = signings(deployment, keystore.key_id)
        assert [r.signature for r in rows] == signatures


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
async def test_shares_survive_cosigner_restart(deployment: Deployment, sig: int) -> None:
    keystore = await enrol(deployment)
    async with (
        deployment.public_channel("cosigner") as channel,
        sdk.SigningSession(channel, keystore, PIN) as session,
    ):
        before = await session.sign(b"before the restart")
        assert await session.close() == 1

    status = deployment.stop("cosigner", sig)
    assert status == (0 if sig == signal.SIGTERM else -signal.SIGKILL)
    try:
        # Nothing in the cosigner's files (database, WAL, anything else) is a plaintext key
        # package or PIN verifier.
        package = keystore.key_package
        cosigner_package_tail = (
            package.peer_verifying_share + package.verifying_share + package.group_public_key
        )
        files = [p for p in cosigner_db_path(deployment).parent.iterdir() if p.is_file()]
        assert cosigner_db_path(deployment) in files
        for path in files:
            raw = path.read_bytes()
            assert b"2PKP" not in raw, path
            assert cosigner_package_tail not in raw, path
            assert verifier_for(keystore) not in raw, path
    finally:
        deployment.start("cosigner")

    with cosigner_db(deployment) as db:
        sealed_package, sealed_verifier = db.execute(
            "SELECT sealed_key_package, sealed_pin_verifier FROM keys WHERE key_id = ?",
            (keystore.key_id,),
        ).fetchone()
    assert b"2PKP" not in sealed_package
    assert len(sealed_package) > len(package.to_bytes())  # sealed: IV, tag and ciphertext
    assert verifier_for(keystore) not in sealed_verifier

    async with (
        deployment.public_channel("cosigner") as channel,
        sdk.SigningSession(channel, keystore, PIN) as session,
    ):
        after = await session.sign(b"after the restart")
        assert await session.close() == 1
    verify_signature(keystore, b"before the restart", before)
    verify_signature(keystore, b"after the restart", after)
    assert [r.signature for r in signings(deployment, keystore.key_id)] == [before, after]
