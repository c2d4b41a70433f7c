"""Concurrent first enrolments on a fresh deployment: the cosigner's first seals must all use one
sealing key, so that every key acknowledged can sign afterwards (four at once once created three
sealing keys, and three of the four keys could never sign)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

import client
from mobilesign.testing import Deployment
from mobilesign.v1 import hsm_pb2, hsm_pb2_grpc, ra_pb2, ra_pb2_grpc

pytestmark = pytest.mark.integration
PIN = "731590"


@pytest.fixture
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """A fresh deployment: nothing was ever sealed in its token."""
    deployment = Deployment(tmp_path_factory.mktemp("first-enrolments"))
    deployment.start_all()
    yield deployment
    deployment.stop_all()


async def _ticket(deployment: Deployment, user_id: str) -> bytes:
    async with deployment.channel("ra") as channel:
        admin = ra_pb2_grpc.AdminServiceStub(channel)
        await admin.CreateUser(ra_pb2.CreateUserRequest(user_id=user_id))
        reply = await admin.IssueEnrolmentTicket(
            ra_pb2.IssueEnrolmentTicketRequest(user_id=user_id)
        )
    return reply.ticket


async def _enrol_and_sign(deployment: Deployment, ticket: bytes) -> None:
    async with deployment.public_channel("cosigner") as channel:
        keystore = await client.enrol(channel, ticket, PIN)
        async with client.SigningSession(channel, keystore, PIN) as session:
            message = b"signed after a concurrent first enrolment"
            signature = await session.sign(message)
    Ed25519PublicKey.from_public_bytes(bytes.fromhex(keystore.key_id)).verify(signature, message)


async def test_concurrent_first_enrolments_can_all_sign(deployment: Deployment) -> None:
    tickets = [await _ticket(deployment, f"first-{i}-{secrets.token_hex(2)}") for i in range(4)]
    await asyncio.gather(*(_enrol_and_sign(deployment, t) for t in tickets))
    # And the keys still sign after a restart of the HSM proxy (the key is found by its id).
    deployment.stop("cosigner")
    deployment.stop("hsm-proxy")
    deployment.start("hsm-proxy")
    deployment.start("cosigner")
    more = [await _ticket(deployment, f"later-{i}-{secrets.token_hex(2)}") for i in range(2)]
    await asyncio.gather(*(_enrol_and_sign(deployment, t) for t in more))


async def test_one_sealing_key_exists_before_anyone_seals(deployment: Deployment) -> None:
    """The sealing key is made at the proxy's start; seals from several callers share it."""
    async with deployment.channel("hsm-proxy", "cosigner") as channel:
        stub = hsm_pb2_grpc.HsmServiceStub(channel)
        blobs = await asyncio.gather(
            *(
                stub.Seal(hsm_pb2.SealRequest(plaintext=bytes([i]) * 8, associated_data=b"t"))
                for i in range(8)
            )
        )
        key_ids = {blob.sealed[1:17] for blob in blobs}
        assert len(key_ids) == 1
        for i, blob in enumerate(blobs):
            opened = await stub.Unseal(
                hsm_pb2.UnsealRequest(sealed=blob.sealed, associated_data=b"t")
            )
            assert opened.plaintext == bytes([i]) * 8
