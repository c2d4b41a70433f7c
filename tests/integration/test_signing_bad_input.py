"""Sign sessions with bad input: steps out of order, invalid commitment points, replayed commits,
forged reports, missing reports, oversize messages and abandoned sessions, each checked against
the signings the cosigner did or did not record.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable

import pytest

from client import sdk
from client.keystore import Keystore
from mobilesign import twoparty
from mobilesign.rpc import wire
from mobilesign.testing import Deployment
from mobilesign.v1 import cosigner_pb2 as pb
from tests.integration.two_party import (
    IDENTITY,
    MIXED_ORDER,
    NON_CANONICAL,
    OFF_CURVE,
    PIN,
    SCHEME,
    TORSION_2,
    TORSION_8,
    Code,
    SignCall,
    SigningRow,
    close_session,
    cosigner_stub,
    expect_status,
    next_step,
    open_challenge,
    plus_one,
    random_point,
    send,
    signings,
    until_ready,
    verifier_for,
    verify_signature,
)

pytestmark = pytest.mark.integration
MAX_MESSAGE_BYTES = 65_536  # SignCommit.message
REQUEST_LIMIT_BYTES = 128 * 1024  # the cosigner's [cosigner] max_message_bytes
TRANSPORT_LIMIT_BYTES = 2 * REQUEST_LIMIT_BYTES  # where grpc itself refuses


@pytest.fixture
def deployment(two_party_deployment: Deployment) -> Deployment:
    """The shared HSM proxy, RA, gateway and cosigner (step timeout 3 s)."""
    return two_party_deployment


async def _commit(
    call: SignCall, signer: twoparty.PhoneSigner, message: bytes
) -> tuple[twoparty.SignRequest, pb.SignShare]:
    request = signer.request(message)
    await send(call, pb.SignRequest(commit=wire.sign_commit_to_proto(request)))
    return request, (await next_step(call, "share")).share


async def _sign(
    call: SignCall, signer: twoparty.PhoneSigner, message: bytes
) -> tuple[twoparty.SignRequest, bytes]:
    """One honest signature (commit, share, report); returns the commit and the signature."""
    request, share = await _commit(call, signer, message)
    report = signer.receive_response(wire.sign_share_from_proto(share))
    await send(call, pb.SignRequest(report=pb.SignReport(signature=report.signature)))
    return request, report.signature


async def test_sign_steps_out_of_order_are_refused(
    deployment: Deployment, keystore: Keystore
) -> None:
    verifier = verifier_for(keystore)
    signer = twoparty.PhoneSigner(keystore.key_package)
    commit = pb.SignRequest(commit=wire.sign_commit_to_proto(signer.request(b"early")))
    signer.abort()
    async with deployment.public_channel("cosigner") as channel:
        stub = cosigner_stub(channel)
        # Anything but open first; a commit where the proof is expected.
        for first in (pb.SignRequest(proof=pb.SignProof()), commit, pb.SignRequest()):
            call = stub.Sign()
            await send(call, first)
            await expect_status(call, Code.FAILED_PRECONDITION, "UNEXPECTED_STEP")
        call = stub.Sign()
        await open_challenge(call, keystore.key_id)
        await send(call, commit)
        await expect_status(call, Code.FAILED_PRECONDITION, "UNEXPECTED_STEP")
        # open again inside an open session
        call = stub.Sign()
        await until_ready(call, keystore, verifier)
        await send(call, pb.SignRequest(open=pb.SignOpen(scheme=SCHEME, key_id=keystore.key_id)))
        await expect_status(call, Code.FAILED_PRECONDITION, "UNEXPECTED_STEP")
        # a report with no signature in progress
        call = stub.Sign()
        await until_ready(call, keystore, verifier)
        await send(call, pb.SignRequest(report=pb.SignReport(signature=bytes(64))))
        await expect_status(call, Code.FAILED_PRECONDITION, "UNEXPECTED_MESSAGE")
        # a second commit before the first one's report
        call = stub.Sign()
        await until_ready(call, keystore, verifier)
        signer = twoparty.PhoneSigner(keystore.key_package)
        await _commit(call, signer, b"first")
        signer.abort()
        await send(call, pb.SignRequest(commit=wire.sign_commit_to_proto(signer.request(b"2"))))
        await expect_status(call, Code.FAILED_PRECONDITION, "UNEXPECTED_MESSAGE")
    # Only the commit that got a share was recorded, and it has no signature.
    rows = signings(deployment, keystore.key_id)
    assert [(r.message_sha256, r.signature) for r in rows] == [
        (hashlib.sha256(b"first").digest(), None)
    ]


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        pytest.param("hiding_commitment", IDENTITY, "IDENTITY_ELEMENT", id="hiding-identity"),
        pytest.param("binding_commitment", IDENTITY, "IDENTITY_ELEMENT", id="binding-identity"),
        pytest.param("hiding_commitment", NON_CANONICAL, "INVALID_ELEMENT", id="hiding-ff"),
        pytest.param("binding_commitment", TORSION_2, "INVALID_ELEMENT", id="binding-order-2"),
        pytest.param("hiding_commitment", TORSION_8, "INVALID_ELEMENT", id="hiding-order-8"),
        pytest.param("hiding_commitment", MIXED_ORDER, "INVALID_ELEMENT", id="hiding-mixed"),
        pytest.param("binding_commitment", OFF_CURVE, "INVALID_ELEMENT", id="binding-off-curve"),
        pytest.param("hiding_commitment", b"", "MALFORMED_MESSAGE", id="hiding-empty"),
    ],
)
async def test_invalid_commitment_points_are_refused(
    deployment: Deployment, keystore: Keystore, field: str, value: bytes, reason: str
) -> None:
    signer = twoparty.PhoneSigner(keystore.key_package)
    commit = wire.sign_commit_to_proto(signer.request(b"a message"))
    signer.abort()
    setattr(commit, field, value)
    async with deployment.public_channel("cosigner") as channel:
        call = cosigner_stub(channel).Sign()
        await until_ready(call, keystore, verifier_for(keystore))
        await send(call, pb.SignRequest(commit=commit))
        await expect_status(call, Code.INVALID_ARGUMENT, reason)
    assert signings(deployment, keystore.key_id) == []


async def test_replayed_commit_is_refused(deployment: Deployment, keystore: Keystore) -> None:
    signer = twoparty.PhoneSigner(keystore.key_package)
    signatures = []
    async with deployment.public_channel("cosigner") as channel:
        # After a completed signature, its commitments again: for the same message, and for
        # another one (in a second session).
        for message, replayed in ((b"once", b"once"), (b"first", b"another message")):
            call = cosigner_stub(channel).Sign()
            await until_ready(call, keystore, verifier_for(keystore))
            request, signature = await _sign(call, signer, message)
            signatures.append(signature)
            replay = pb.SignCommit(
                message=replayed,
                hiding_commitment=request.hiding_commitment,
                binding_commitment=request.binding_commitment,
            )
            await send(call, pb.SignRequest(commit=replay))
            await expect_status(call, Code.INVALID_ARGUMENT, "REPLAYED_MESSAGE")
    # The replays got no share, so nothing was recorded for them.
    assert [r.signature for r in signings(deployment, keystore.key_id)] == signatures


async def test_commit_replayed_in_a_later_session_is_refused(
    deployment: Deployment, keystore: Keystore
) -> None:
    signer = twoparty.PhoneSigner(keystore.key_package)
    async with deployment.public_channel("cosigner") as channel:
        call = cosigner_stub(channel).Sign()
        await until_ready(call, keystore, verifier_for(keystore))
        request, signature = await _sign(call, signer, b"recorded once")
        assert await close_session(call) == 1
        # A new session (new cosigner signer state) gets the old commitments again.
        call = cosigner_stub(channel).Sign()
        await until_ready(call, keystore, verifier_for(keystore))
        replay = pb.SignCommit(
            message=b"something else",
            hiding_commitment=request.hiding_commitment,
            binding_commitment=request.binding_commitment,
        )
        await send(call, pb.SignRequest(commit=replay))
        await expect_status(call, Code.INVALID_ARGUMENT, "REPLAYED_MESSAGE")
    assert [r.signature for r in signings(deployment, keystore.key_id)] == [signature]


def _z_plus_one(signature: bytes, earlier: bytes) -> bytes:
    return signature[:32] + plus_one(signature[32:])


@pytest.mark.parametrize(
    ("forge", "reason"),
    [
        pytest.param(_z_plus_one, "INVALID_SIGNATURE", id="z-altered"),
        pytest.param(lambda s, e: random_point() + s[32:], "INVALID_SIGNATURE", id="other-r"),
        pytest.param(lambda s, e: e, "INVALID_SIGNATURE", id="earlier-signature"),
        pytest.param(lambda s, e: s[:63], "MALFORMED_MESSAGE", id="short"),
        pytest.param(lambda s, e: s + b"\x00", "MALFORMED_MESSAGE", id="long"),
    ],
)
async def test_forged_report_is_refused(
    deployment: Deployment, keystore: Keystore, forge: Callable[[bytes, bytes], bytes], reason: str
) -> None:
    signer = twoparty.PhoneSigner(keystore.key_package)
    async with deployment.public_channel("cosigner") as channel:
        call = cosigner_stub(channel).Sign()
        await until_ready(call, keystore, verifier_for(keystore))
        _, earlier = await _sign(call, signer, b"earlier")
        _, share = await _commit(call, signer, b"later")
        honest = signer.receive_response(wire.sign_share_from_proto(share)).signature
        await send(call, pb.SignRequest(report=pb.SignReport(signature=forge(honest, earlier))))
        await expect_status(call, Code.INVALID_ARGUMENT, reason)
    rows = signings(deployment, keystore.key_id)
    assert [(r.message_sha256, r.signature) for r in rows] == [
        (hashlib.sha256(b"earlier").digest(), earlier),
        (hashlib.sha256(b"later").digest(), None),
    ]


async def test_close_with_a_report_missing_is_refused(
    deployment: Deployment, keystore: Keystore
) -> None:
    signer = twoparty.PhoneSigner(keystore.key_package)
    async with deployment.public_channel("cosigner") as channel:
        call = cosigner_stub(channel).Sign()
        await until_ready(call, keystore, verifier_for(keystore))
        await _commit(call, signer, b"unreported")
        await send(call, pb.SignRequest(close=pb.SignClose()))
        await expect_status(call, Code.FAILED_PRECONDITION, "REPORT_MISSING")
    assert [r.signature for r in signings(deployment, keystore.key_id)] == [None]


async def test_message_size_limits(deployment: Deployment, keystore: Keystore) -> None:
    largest = secrets.token_bytes(MAX_MESSAGE_BYTES)
    async with deployment.public_channel("cosigner") as channel:
        async with sdk.SigningSession(channel, keystore, PIN) as session:
            verify_signature(keystore, largest, await session.sign(largest))
            assert await session.close() == 1

        signer = twoparty.PhoneSigner(keystore.key_package)
        call = cosigner_stub(channel).Sign()
        await until_ready(call, keystore, verifier_for(keystore))
        await send(
            call, pb.SignRequest(commit=wire.sign_commit_to_proto(signer.request(largest + b"!")))
        )
        signer.abort()
        await expect_status(call, Code.INVALID_ARGUMENT, "MESSAGE_TOO_LARGE")

        call = cosigner_stub(channel).Sign()
        await until_ready(call, keystore, verifier_for(keystore))
        over = bytes(REQUEST_LIMIT_BYTES + 1)
        await send(call, pb.SignRequest(commit=wire.sign_commit_to_proto(signer.request(over))))
        signer.abort()
        await expect_status(call, Code.INVALID_ARGUMENT, "MESSAGE_TOO_LARGE")

        # Far beyond: the transport refuses it before anything reads it (no reason then).
        call = cosigner_stub(channel).Sign()
        await until_ready(call, keystore, verifier_for(keystore))
        huge = bytes(TRANSPORT_LIMIT_BYTES + 1)
        await send(call, pb.SignRequest(commit=wire.sign_commit_to_proto(signer.request(huge))))
        signer.abort()
        await expect_status(call, Code.RESOURCE_EXHAUSTED, None)

        # The cosigner still serves.
        async with sdk.SigningSession(channel, keystore, PIN) as session:
            verify_signature(keystore, b"still", await session.sign(b"still"))
    assert len(signings(deployment, keystore.key_id)) == 2


async def test_abandoned_session_after_a_share_is_recorded(
    deployment: Deployment, keystore: Keystore
) -> None:
    signer = twoparty.PhoneSigner(keystore.key_package)
    async with deployment.public_channel("cosigner") as channel:
        call = cosigner_stub(channel).Sign()
        await until_ready(call, keystore, verifier_for(keystore))
        request, share = await _commit(call, signer, b"abandoned")
        signer.abort()
        assert call.cancel()
        rows = signings(deployment, keystore.key_id)
        assert rows == [
            SigningRow(
                hashlib.sha256(b"abandoned").digest(),
                request.hiding_commitment
                + request.binding_commitment
                + share.hiding_commitment
                + share.binding_commitment,
                None,
                False,
            )
        ]
        async with sdk.SigningSession(channel, keystore, PIN) as session:
            signature = await session.sign(b"next session")
            assert await session.close() == 1
    verify_signature(keystore, b"next session", signature)
    assert [r.signature for r in signings(deployment, keystore.key_id)] == [None, signature]
