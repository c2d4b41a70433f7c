"""Enrolment tickets at the cosigner's KeyGen: used, raced, expired, not yet valid, for another
audience, forged or malformed tickets are refused, and a refused ticket still enrols afterwards.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from client import sdk
from client.errors import ClientError
from client.keystore import Keystore
from mobilesign import tickets, twoparty
from mobilesign.testing import Deployment
from mobilesign.v1 import cosigner_pb2 as pb
from mobilesign.v1 import hsm_pb2, hsm_pb2_grpc, ra_pb2
from tests.integration.two_party import (
    PIN,
    Code,
    cosigner_stub,
    enrols_afterwards,
    expect_status,
    keygen_start,
    keys_of,
    new_device_key,
    new_ticket,
    send,
)

pytestmark = pytest.mark.integration
#: The RA's ticket key in the token (ra/config.py).
TICKET_KEY_LABEL = "ra-tickets"


@pytest.fixture
def deployment(two_party_deployment: Deployment) -> Deployment:
    """The shared HSM proxy, RA, gateway and cosigner (step timeout 3 s)."""
    return two_party_deployment


async def _hsm_signed(
    deployment: Deployment, claims: bytes, label: str = TICKET_KEY_LABEL
) -> bytes:
    """A ticket over ``claims`` signed in the HSM by the ticket-purpose key ``label`` (created if
    new), as the RA would sign it (only the RA may use ticket keys)."""
    async with deployment.channel("hsm-proxy", "ra") as channel:
        hsm = hsm_pb2_grpc.HsmServiceStub(channel)
        listed = await hsm.ListKeys(hsm_pb2.ListKeysRequest(purpose=hsm_pb2.KEY_PURPOSE_TICKET))
        keys = [key for key in listed.keys if key.label == label]
        if keys:
            key = keys[0]
        else:
            key = (
                await hsm.GenerateKeyPair(
                    hsm_pb2.GenerateKeyPairRequest(
                        label=label,
                        purpose=hsm_pb2.KEY_PURPOSE_TICKET,
                        algorithm=hsm_pb2.KEY_ALGORITHM_EC_P256,
                    )
                )
            ).key
        signed = await hsm.SignDigest(
            hsm_pb2.SignDigestRequest(
                key_id=key.key_id,
                mechanism=hsm_pb2.SIGNATURE_MECHANISM_ECDSA_SHA256,
                digest=tickets.signing_digest(claims),
            )
        )
    return tickets.assemble(claims, signed.signature)


async def test_used_ticket_is_refused(deployment: Deployment) -> None:
    user_id, ticket = await new_ticket(deployment)
    async with deployment.public_channel("cosigner") as channel:
        await sdk.enrol(channel, ticket, PIN)
        call = cosigner_stub(channel).KeyGen()
        await send(
            call,
            pb.KeyGenRequest(start=keygen_start(ticket, twoparty.PhoneKeyGen(), new_device_key())),
        )
        await expect_status(call, Code.PERMISSION_DENIED, "TICKET_USED")
        with pytest.raises(ClientError) as info:
            await sdk.enrol(channel, ticket, PIN)
        assert info.value.reason == "TICKET_USED"
    assert keys_of(deployment, user_id) == 1


async def test_concurrent_enrolments_with_one_ticket_store_one_key(deployment: Deployment) -> None:
    user_id, ticket = await new_ticket(deployment)
    async with deployment.public_channel("cosigner") as channel:
        outcomes = await asyncio.gather(
            *(sdk.enrol(channel, ticket, PIN) for _ in range(4)), return_exceptions=True
        )
    enrolled = [o for o in outcomes if isinstance(o, Keystore)]
    refused = [o for o in outcomes if isinstance(o, ClientError)]
    assert len(enrolled) == 1, outcomes
    assert [e.reason for e in refused] == ["TICKET_USED"] * 3, outcomes
    assert keys_of(deployment, user_id) == 1


def _claims(**overrides: Any) -> bytes:
    now = int(time.time())
    fields: dict[str, Any] = {
        "ticket_id": secrets.token_hex(16),
        "user_id": f"user-{secrets.token_hex(6)}",
        "issued_at_unix": now,
        "expires_at_unix": now + 600,
        "audience": tickets.AUDIENCE,
    }
    fields.update(overrides)
    return ra_pb2.EnrolmentTicketClaims(**fields).SerializeToString(deterministic=True)


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        pytest.param(
            lambda now: {"issued_at_unix": now - 7200, "expires_at_unix": now - 3600},
            "TICKET_EXPIRED",
            id="expired",
        ),
        pytest.param(
            lambda now: {"issued_at_unix": now - 600, "expires_at_unix": now},
            "TICKET_EXPIRED",
            id="expires-now",
        ),
        pytest.param(
            lambda now: {"issued_at_unix": now + 3600, "expires_at_unix": now + 7200},
            "TICKET_EXPIRED",
            id="not-yet-valid",
        ),
        pytest.param(lambda now: {"audience": "gateway"}, "TICKET_MALFORMED", id="audience"),
        pytest.param(lambda now: {"ticket_id": "xyz"}, "TICKET_MALFORMED", id="ticket-id"),
        pytest.param(lambda now: {"user_id": ""}, "TICKET_MALFORMED", id="no-user"),
    ],
)
async def test_correctly_signed_but_unacceptable_ticket(
    deployment: Deployment, claims: Callable[[int], dict[str, Any]], reason: str
) -> None:
    overrides = claims(int(time.time()))
    encoded = _claims(**overrides)
    user_id = ra_pb2.EnrolmentTicketClaims.FromString(encoded).user_id
    ticket = await _hsm_signed(deployment, encoded)
    code = Code.INVALID_ARGUMENT if reason == "TICKET_MALFORMED" else Code.PERMISSION_DENIED
    async with deployment.public_channel("cosigner") as channel:
        call = cosigner_stub(channel).KeyGen()
        await send(
            call,
            pb.KeyGenRequest(start=keygen_start(ticket, twoparty.PhoneKeyGen(), new_device_key())),
        )
        await expect_status(call, code, reason)
    if user_id:
        assert keys_of(deployment, user_id) == 0


def _resign_claims(ticket: bytes, **overrides: Any) -> bytes:
    """The ticket with some claims changed and the original signature kept."""
    signed = ra_pb2.SignedEnrolmentTicket.FromString(ticket)
    claims = ra_pb2.EnrolmentTicketClaims.FromString(signed.claims)
    for name, value in overrides.items():
        setattr(claims, name, value)
    return tickets.assemble(claims.SerializeToString(deterministic=True), signed.signature)


def _flip_signature_bit(ticket: bytes) -> bytes:
    signed = ra_pb2.SignedEnrolmentTicket.FromString(ticket)
    signature = bytearray(signed.signature)
    signature[-1] ^= 0x01  # the low bit of s: still DER, no longer a signature
    return tickets.assemble(signed.claims, bytes(signature))


@pytest.mark.parametrize(
    ("forge", "code", "reason"),
    [
        pytest.param(_flip_signature_bit, Code.PERMISSION_DENIED, "TICKET_FORGED", id="sig-bit"),
        pytest.param(
            lambda t: tickets.assemble(ra_pb2.SignedEnrolmentTicket.FromString(t).claims, b""),
            Code.PERMISSION_DENIED,
            "TICKET_FORGED",
            id="no-signature",
        ),
        pytest.param(
            lambda t: _resign_claims(t, user_id="someone-else"),
            Code.PERMISSION_DENIED,
            "TICKET_FORGED",
            id="other-user",
        ),
        pytest.param(
            lambda t: _resign_claims(t, expires_at_unix=2**40),
            Code.PERMISSION_DENIED,
            "TICKET_FORGED",
            id="extended",
        ),
        pytest.param(lambda t: b"", Code.INVALID_ARGUMENT, "TICKET_MALFORMED", id="empty"),
        pytest.param(
            lambda t: b"\xff" * 64, Code.INVALID_ARGUMENT, "TICKET_MALFORMED", id="garbage"
        ),
        pytest.param(
            lambda t: tickets.assemble(b"not claims", b"x"),
            Code.INVALID_ARGUMENT,
            "TICKET_MALFORMED",
            id="garbage-claims",
        ),
        pytest.param(
            lambda t: t + b"\x00" * (tickets.MAX_TICKET_BYTES + 1 - len(t)),
            Code.INVALID_ARGUMENT,
            "TICKET_MALFORMED",
            id="oversized",
        ),
    ],
)
async def test_forged_or_malformed_ticket(
    deployment: Deployment, forge: Callable[[bytes], bytes], code: grpc.StatusCode, reason: str
) -> None:
    user_id, ticket = await new_ticket(deployment)
    async with deployment.public_channel("cosigner") as channel:
        call = cosigner_stub(channel).KeyGen()
        forged = forge(ticket)
        await send(
            call,
            pb.KeyGenRequest(start=keygen_start(forged, twoparty.PhoneKeyGen(), new_device_key())),
        )
        await expect_status(call, code, reason)
    await enrols_afterwards(deployment, user_id, ticket)


async def test_ticket_signed_by_another_hsm_key_is_forged(deployment: Deployment) -> None:
    user_id, ticket = await new_ticket(deployment)
    claims = ra_pb2.SignedEnrolmentTicket.FromString(ticket).claims
    forged = await _hsm_signed(deployment, claims, label="not-the-ticket-key")
    async with deployment.public_channel("cosigner") as channel:
        call = cosigner_stub(channel).KeyGen()
        await send(
            call,
            pb.KeyGenRequest(start=keygen_start(forged, twoparty.PhoneKeyGen(), new_device_key())),
        )
        await expect_status(call, Code.PERMISSION_DENIED, "TICKET_FORGED")
    await enrols_afterwards(deployment, user_id, ticket)
