"""Two-party enrolment (KeyGen) and signing (Sign) against real HSM proxy, gateway and cosigner
processes on loopback.

The client SDK drives the honest paths; raw streams, with the real ``twoparty`` state machines for
the honest parts, drive every malformed, forged, replayed or out-of-order step. Each refusal is
checked by gRPC code and stable reason, and by the state it must not have changed (a ticket that
still enrols, a PIN count that did not move, a signing the cosigner did or did not record).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
import signal
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import reduce
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from google.protobuf.message import Message

from client import sdk
from client.errors import ClientError
from client.keystore import Keystore
from mobilesign import deviceauth, tickets, twoparty
from mobilesign.rpc import wire
from mobilesign.rpc.status import reason_of
from mobilesign.testing import Deployment
from mobilesign.v1 import cosigner_pb2 as pb
from mobilesign.v1 import cosigner_pb2_grpc, gateway_pb2, gateway_pb2_grpc, hsm_pb2, hsm_pb2_grpc
from tests.conftest import TWO_PARTY_STEP_TIMEOUT_SECONDS

pytestmark = pytest.mark.integration

PIN = "271828"
OTHER_PIN = "314159"
SCHEME = pb.SCHEME_FROST_ED25519_SHA512_V1
MAX_PIN_ATTEMPTS = 5  # the cosigner's default
MAX_MESSAGE_BYTES = 65_536  # SignCommit.message
TRANSPORT_LIMIT_BYTES = 128 * 1024  # the cosigner's gRPC receive bound
TICKET_KEY_LABEL = "gateway-tickets"
Code = grpc.StatusCode

# Ed25519 encodings (32-byte compressed points, little-endian y, sign of x in the top bit).
ORDER = 2**252 + 27742317777372353535851937790883648493
BASE_POINT = bytes.fromhex("58" + "66" * 31)
IDENTITY = bytes.fromhex("01" + "00" * 31)
#: (0, 1) again, with the sign bit of x = 0 set: a non-canonical encoding of the identity.
IDENTITY_SIGN_BIT = bytes.fromhex("01" + "00" * 30 + "80")
#: y = 2^255 - 1 >= p: not a canonical field element.
NON_CANONICAL = b"\xff" * 32
#: y = 2: (y^2 - 1) / (d y^2 + 1) is not a square mod p, so no point has this y.
OFF_CURVE = bytes.fromhex("02" + "00" * 31)
#: The small-order (torsion) points: (0, -1) of order 2, (sqrt(-1), 0) of order 4, and one of
#: order 8.
TORSION_2 = bytes.fromhex("ec" + "ff" * 30 + "7f")
TORSION_4 = bytes(32)
TORSION_8 = bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05")
#: B + (0, -1): on the curve but outside the prime-order subgroup.
MIXED_ORDER = bytes.fromhex("95" + "99" * 31)

KeyGenCall = grpc.aio.StreamStreamCall[pb.KeyGenRequest, pb.KeyGenResponse]
SignCall = grpc.aio.StreamStreamCall[pb.SignRequest, pb.SignResponse]
Resp = TypeVar("Resp", bound=Message)


@pytest.fixture
def deployment(two_party_deployment: Deployment) -> Deployment:
    """The module's HSM proxy, gateway and cosigner (step timeout 3 s)."""
    return two_party_deployment


# Gateway, HSM and cosigner admin ------------------------------------------------------------


async def _new_ticket(deployment: Deployment) -> tuple[str, bytes]:
    """A new user and an enrolment ticket for them, issued by the gateway."""
    user_id = f"user-{secrets.token_hex(6)}"
    async with deployment.channel("gateway", "admin") as channel:
        admin = gateway_pb2_grpc.AdminServiceStub(channel)
        await admin.CreateUser(gateway_pb2.CreateUserRequest(user_id=user_id, display_name="T"))
        reply = await admin.IssueEnrolmentTicket(
            gateway_pb2.IssueEnrolmentTicketRequest(user_id=user_id)
        )
    return user_id, reply.ticket


async def _hsm_signed(
    deployment: Deployment, claims: bytes, label: str = TICKET_KEY_LABEL
) -> bytes:
    """A ticket over ``claims`` signed in the HSM by the service key ``label`` (created if new)."""
    async with deployment.channel("hsm-proxy", "admin") as channel:
        hsm = hsm_pb2_grpc.HsmServiceStub(channel)
        listed = await hsm.ListKeys(hsm_pb2.ListKeysRequest(purpose=hsm_pb2.KEY_PURPOSE_SERVICE))
        keys = [key for key in listed.keys if key.label == label]
        if keys:
            key = keys[0]
        else:
            key = (
                await hsm.GenerateKeyPair(
                    hsm_pb2.GenerateKeyPairRequest(
                        label=label,
                        purpose=hsm_pb2.KEY_PURPOSE_SERVICE,
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


async def _get_key(deployment: Deployment, key_id: str) -> pb.GetKeyResponse:
    async with deployment.channel("cosigner", "admin") as channel:
        stub = cosigner_pb2_grpc.CosignerServiceStub(channel)
        return await stub.GetKey(pb.GetKeyRequest(key_id=key_id))


async def _unlock(deployment: Deployment, key_id: str) -> None:
    async with deployment.channel("cosigner", "admin") as channel:
        stub = cosigner_pb2_grpc.CosignerServiceStub(channel)
        await stub.UnlockKey(pb.UnlockKeyRequest(key_id=key_id))


# The cosigner's database, read-only --------------------------------------------------------


def _db_path(deployment: Deployment) -> Path:
    return deployment.state_dir / "cosigner" / "cosigner.db"


@contextlib.contextmanager
def _db(deployment: Deployment) -> Iterator[sqlite3.Connection]:
    connection = sqlite3.connect(f"file:{_db_path(deployment)}?mode=ro", uri=True)
    try:
        yield connection
    finally:
        connection.close()


@dataclass(frozen=True)
class SigningRow:
    message_sha256: bytes
    commitments: bytes  # D1 || E1 || D2 || E2, the phone's then the cosigner's
    signature: bytes | None
    completed: bool


def _signings(deployment: Deployment, key_id: str) -> list[SigningRow]:
    """The signings the cosigner recorded for a key, oldest first."""
    with _db(deployment) as db:
        rows = db.execute(
            "SELECT message_sha256, commitments, signature, completed_at FROM signings"
            " WHERE key_id = ? ORDER BY signing_id",
            (key_id,),
        ).fetchall()
    return [
        SigningRow(bytes(m), bytes(c), None if s is None else bytes(s), done is not None)
        for m, c, s, done in rows
    ]


def _keys_of(deployment: Deployment, user_id: str) -> int:
    with _db(deployment) as db:
        (count,) = db.execute("SELECT COUNT(*) FROM keys WHERE user_id = ?", (user_id,)).fetchone()
    return int(count)


# Streams ------------------------------------------------------------------------------------


def _cosigner(channel: grpc.aio.Channel) -> cosigner_pb2_grpc.CosignerServiceAsyncStub:
    return cosigner_pb2_grpc.CosignerServiceStub(channel)


async def _send(call: grpc.aio.StreamStreamCall[Any, Any], message: Message) -> None:
    """Write one step; if the cosigner already ended the stream, the next read says why."""
    with contextlib.suppress(asyncio.InvalidStateError, grpc.aio.AioRpcError):
        await call.write(message)


async def _next(call: grpc.aio.StreamStreamCall[Any, Resp], step: str) -> Resp:
    """The next response, which must be the ``step`` case of the envelope."""
    response = await call.read()
    assert isinstance(response, Message), "the stream ended"
    assert response.WhichOneof("step") == step, response
    return response  # type: ignore[return-value]


async def _expect_status(
    call: grpc.aio.StreamStreamCall[Any, Any], code: grpc.StatusCode, reason: str | None
) -> None:
    """The stream's next event is its end with ``code`` and ``reason``, not another response."""
    try:
        response = await call.read()
    except grpc.aio.AioRpcError as exc:
        error = exc
    else:
        pytest.fail(f"expected {code.name} {reason}, got {response!r}")
    assert (error.code(), reason_of(error)) == (code, reason), error.details()


async def _expect_unary(call: Any, code: grpc.StatusCode, reason: str) -> None:
    try:
        response = await call
    except grpc.aio.AioRpcError as exc:
        error = exc
    else:
        pytest.fail(f"expected {code.name} {reason}, got {response!r}")
    assert (error.code(), reason_of(error)) == (code, reason), error.details()


# Phones -------------------------------------------------------------------------------------


def _device_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _spki(key: Any) -> bytes:
    return bytes(
        key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def _verifier(keystore: Keystore, pin: str = PIN) -> bytes:
    return deviceauth.pin_verifier(pin, deviceauth.device_key_spki(keystore.device_key))


def _verify(keystore: Keystore, message: bytes, signature: bytes) -> None:
    """Plain RFC 8032 verification with ``cryptography`` (raises InvalidSignature)."""
    ed25519.Ed25519PublicKey.from_public_bytes(keystore.group_public_key).verify(signature, message)


async def _enrol(deployment: Deployment, pin: str = PIN) -> Keystore:
    """A new user enrolled through the SDK over the cosigner's public listener."""
    _, ticket = await _new_ticket(deployment)
    async with deployment.public_channel("cosigner") as channel:
        return await sdk.enrol(channel, ticket, pin)


@pytest.fixture
async def keystore(deployment: Deployment) -> Keystore:
    """A freshly enrolled key (its own user, device and PIN)."""
    return await _enrol(deployment)


def _start(
    ticket: bytes, machine: twoparty.PhoneKeyGen, device_key: ec.EllipticCurvePrivateKey
) -> pb.KeyGenStart:
    spki = deviceauth.device_key_spki(device_key)
    return pb.KeyGenStart(
        scheme=SCHEME,
        ticket=ticket,
        device_public_key=spki,
        pin_verifier=deviceauth.pin_verifier(PIN, spki),
        commitment=wire.commitment_to_proto(machine.start()),
    )


async def _until_secret_share(
    call: KeyGenCall, ticket: bytes, machine: twoparty.PhoneKeyGen, device_key: Any
) -> twoparty.DkgRound2:
    """Honest start; returns the phone's share for the cosigner (not yet sent)."""
    await _send(call, pb.KeyGenRequest(start=_start(ticket, machine, device_key)))
    reply = await _next(call, "commitment")
    return machine.receive_round1(wire.commitment_from_proto(reply.commitment))


async def _until_confirm(
    call: KeyGenCall, ticket: bytes, machine: twoparty.PhoneKeyGen, device_key: Any
) -> twoparty.KeyPackage:
    """Honest start and share exchange; returns the phone's key package (confirm not sent)."""
    own = await _until_secret_share(call, ticket, machine, device_key)
    await _send(
        call,
        pb.KeyGenRequest(secret_share=pb.KeyGenSecretShare(secret_share=own.secret_share)),
    )
    reply = (await _next(call, "secret_share")).secret_share
    _, package = machine.receive_round2(
        twoparty.DkgRound2(reply.secret_share, reply.group_public_key)
    )
    return package


async def _enrols_afterwards(deployment: Deployment, user_id: str, ticket: bytes) -> None:
    """Nothing was stored for the user, and the ticket still enrols exactly one key."""
    assert _keys_of(deployment, user_id) == 0
    async with deployment.public_channel("cosigner") as channel:
        keystore = await sdk.enrol(channel, ticket, PIN)
    assert keystore.user_id == user_id
    assert _keys_of(deployment, user_id) == 1


async def _challenge(call: SignCall, key_id: str) -> bytes:
    await _send(call, pb.SignRequest(open=pb.SignOpen(scheme=SCHEME, key_id=key_id)))
    return (await _next(call, "challenge")).challenge.challenge


def _proof(
    keystore: Keystore, challenge: bytes, verifier: bytes, device_key: ec.EllipticCurvePrivateKey
) -> pb.SignRequest:
    transcript = deviceauth.session_transcript(bytes.fromhex(keystore.key_id), challenge)
    return pb.SignRequest(
        proof=pb.SignProof(
            device_signature=deviceauth.sign(device_key, transcript),
            pin_proof=deviceauth.pin_proof(verifier, transcript),
        )
    )


async def _prove(
    call: SignCall,
    keystore: Keystore,
    verifier: bytes,
    device_key: ec.EllipticCurvePrivateKey | None = None,
) -> None:
    """Open a session on ``keystore``'s key and answer the challenge (response not read)."""
    challenge = await _challenge(call, keystore.key_id)
    await _send(call, _proof(keystore, challenge, verifier, device_key or keystore.device_key))


async def _ready(call: SignCall, keystore: Keystore, verifier: bytes) -> None:
    await _prove(call, keystore, verifier)
    await _next(call, "ready")


async def _commit(
    call: SignCall, signer: twoparty.PhoneSigner, message: bytes
) -> tuple[twoparty.SignRequest, pb.SignShare]:
    request = signer.request(message)
    await _send(call, pb.SignRequest(commit=wire.sign_commit_to_proto(request)))
    return request, (await _next(call, "share")).share


async def _sign(
    call: SignCall, signer: twoparty.PhoneSigner, message: bytes
) -> tuple[twoparty.SignRequest, bytes]:
    """One honest signature (commit, share, report); returns the commit and the signature."""
    request, share = await _commit(call, signer, message)
    report = signer.receive_response(wire.sign_share_from_proto(share))
    await _send(call, pb.SignRequest(report=pb.SignReport(signature=report.signature)))
    return request, report.signature


async def _close(call: SignCall) -> int:
    await _send(call, pb.SignRequest(close=pb.SignClose()))
    closed = (await _next(call, "closed")).closed
    await call.done_writing()
    return closed.signatures_recorded


def _scalar(value: int) -> bytes:
    return value.to_bytes(32, "little")


def _plus_one(scalar: bytes) -> bytes:
    return _scalar((int.from_bytes(scalar, "little") + 1) % ORDER)


def _random_point() -> bytes:
    """A valid prime-order point nobody knows the discrete log of in this test."""
    return twoparty.PhoneKeyGen().start().commitment[0]


# 1. Enrol, then 100 signatures in one session -------------------------------------------------


async def test_enrol_then_sign_100_messages_in_one_session(deployment: Deployment) -> None:
    user_id, ticket = await _new_ticket(deployment)
    device_key = _device_key()
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
        _verify(keystore, message, signature)

    rows = _signings(deployment, keystore.key_id)
    assert [(r.message_sha256, r.signature) for r in rows] == [
        (hashlib.sha256(m).digest(), s) for m, s in zip(messages, signatures, strict=True)
    ]
    assert all(r.completed and len(r.commitments) == 128 for r in rows)
    # The stored group commitments are the phone's and the cosigner's nonce commitments: fresh
    # for every signature.
    assert len({r.commitments for r in rows}) == 100

    described = await _get_key(deployment, keystore.key_id)
    assert (described.key_id, described.user_id, described.scheme) == (
        keystore.key_id,
        user_id,
        SCHEME,
    )
    assert (described.locked, described.failed_pin_attempts) == (False, 0)
    assert described.device_public_key == _spki(device_key)


# 2. Twenty phones at once ---------------------------------------------------------------------


async def _phone(deployment: Deployment, count: int) -> tuple[Keystore, list[bytes], list[bytes]]:
    _, ticket = await _new_ticket(deployment)
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
            _verify(keystore, message, signature)
        rows = _signings(deployment, keystore.key_id)
        assert [r.signature for r in rows] == signatures


# 3. Shares survive a restart; nothing secret in the database in plaintext ---------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
async def test_shares_survive_cosigner_restart(deployment: Deployment, sig: int) -> None:
    keystore = await _enrol(deployment)
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
        files = [p for p in _db_path(deployment).parent.iterdir() if p.is_file()]
        assert _db_path(deployment) in files
        for path in files:
            raw = path.read_bytes()
            assert b"2PKP" not in raw, path
            assert cosigner_package_tail not in raw, path
            assert _verifier(keystore) not in raw, path
    finally:
        deployment.start("cosigner")

    with _db(deployment) as db:
        sealed_package, sealed_verifier = db.execute(
            "SELECT sealed_key_package, sealed_pin_verifier FROM keys WHERE key_id = ?",
            (keystore.key_id,),
        ).fetchone()
    assert b"2PKP" not in sealed_package
    assert len(sealed_package) > len(package.to_bytes())  # sealed: IV, tag and ciphertext
    assert _verifier(keystore) not in sealed_verifier

    async with (
        deployment.public_channel("cosigner") as channel,
        sdk.SigningSession(channel, keystore, PIN) as session,
    ):
        after = await session.sign(b"after the restart")
        assert await session.close() == 1
    _verify(keystore, b"before the restart", before)
    _verify(keystore, b"after the restart", after)
    assert [r.signature for r in _signings(deployment, keystore.key_id)] == [before, after]


# 4. Enrolment: bad input changes nothing -----------------------------------------------------


async def test_used_ticket_is_refused(deployment: Deployment) -> None:
    user_id, ticket = await _new_ticket(deployment)
    async with deployment.public_channel("cosigner") as channel:
        await sdk.enrol(channel, ticket, PIN)
        call = _cosigner(channel).KeyGen()
        await _send(
            call, pb.KeyGenRequest(start=_start(ticket, twoparty.PhoneKeyGen(), _device_key()))
        )
        await _expect_status(call, Code.PERMISSION_DENIED, "TICKET_USED")
        with pytest.raises(ClientError) as info:
            await sdk.enrol(channel, ticket, PIN)
        assert info.value.reason == "TICKET_USED"
    assert _keys_of(deployment, user_id) == 1


async def test_concurrent_enrolments_with_one_ticket_store_one_key(deployment: Deployment) -> None:
    user_id, ticket = await _new_ticket(deployment)
    async with deployment.public_channel("cosigner") as channel:
        outcomes = await asyncio.gather(
            *(sdk.enrol(channel, ticket, PIN) for _ in range(4)), return_exceptions=True
        )
    enrolled = [o for o in outcomes if isinstance(o, Keystore)]
    refused = [o for o in outcomes if isinstance(o, ClientError)]
    assert len(enrolled) == 1, outcomes
    assert [e.reason for e in refused] == ["TICKET_USED"] * 3, outcomes
    assert _keys_of(deployment, user_id) == 1


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
    return gateway_pb2.EnrolmentTicketClaims(**fields).SerializeToString(deterministic=True)


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
    user_id = gateway_pb2.EnrolmentTicketClaims.FromString(encoded).user_id
    ticket = await _hsm_signed(deployment, encoded)
    code = Code.INVALID_ARGUMENT if reason == "TICKET_MALFORMED" else Code.PERMISSION_DENIED
    async with deployment.public_channel("cosigner") as channel:
        call = _cosigner(channel).KeyGen()
        await _send(
            call, pb.KeyGenRequest(start=_start(ticket, twoparty.PhoneKeyGen(), _device_key()))
        )
        await _expect_status(call, code, reason)
    if user_id:
        assert _keys_of(deployment, user_id) == 0


def _resign_claims(ticket: bytes, **overrides: Any) -> bytes:
    """The ticket with some claims changed and the original signature kept."""
    signed = gateway_pb2.SignedEnrolmentTicket.FromString(ticket)
    claims = gateway_pb2.EnrolmentTicketClaims.FromString(signed.claims)
    for name, value in overrides.items():
        setattr(claims, name, value)
    return tickets.assemble(claims.SerializeToString(deterministic=True), signed.signature)


def _flip_signature_bit(ticket: bytes) -> bytes:
    signed = gateway_pb2.SignedEnrolmentTicket.FromString(ticket)
    signature = bytearray(signed.signature)
    signature[-1] ^= 0x01  # the low bit of s: still DER, no longer a signature
    return tickets.assemble(signed.claims, bytes(signature))


@pytest.mark.parametrize(
    ("forge", "code", "reason"),
    [
        pytest.param(_flip_signature_bit, Code.PERMISSION_DENIED, "TICKET_FORGED", id="sig-bit"),
        pytest.param(
            lambda t: tickets.assemble(gateway_pb2.SignedEnrolmentTicket.FromString(t).claims, b""),
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
    user_id, ticket = await _new_ticket(deployment)
    async with deployment.public_channel("cosigner") as channel:
        call = _cosigner(channel).KeyGen()
        forged = forge(ticket)
        await _send(
            call, pb.KeyGenRequest(start=_start(forged, twoparty.PhoneKeyGen(), _device_key()))
        )
        await _expect_status(call, code, reason)
    await _enrols_afterwards(deployment, user_id, ticket)


async def test_ticket_signed_by_another_hsm_key_is_forged(deployment: Deployment) -> None:
    user_id, ticket = await _new_ticket(deployment)
    claims = gateway_pb2.SignedEnrolmentTicket.FromString(ticket).claims
    forged = await _hsm_signed(deployment, claims, label="not-the-ticket-key")
    async with deployment.public_channel("cosigner") as channel:
        call = _cosigner(channel).KeyGen()
        await _send(
            call, pb.KeyGenRequest(start=_start(forged, twoparty.PhoneKeyGen(), _device_key()))
        )
        await _expect_status(call, Code.PERMISSION_DENIED, "TICKET_FORGED")
    await _enrols_afterwards(deployment, user_id, ticket)


Mutation = Callable[[pb.KeyGenStart], None]


def _set(path: str, value: Any) -> Mutation:
    """Set a (dotted) field of KeyGenStart."""
    *parents, name = path.split(".")

    def mutate(start: pb.KeyGenStart) -> None:
        setattr(reduce(getattr, parents, start), name, value)

    return mutate


def _coefficient(index: int, value: bytes) -> Mutation:
    def mutate(start: pb.KeyGenStart) -> None:
        start.commitment.coefficient_commitments[index] = value

    return mutate


def _coefficients(count: int) -> Mutation:
    def mutate(start: pb.KeyGenStart) -> None:
        commitments = start.commitment.coefficient_commitments
        if count < len(commitments):
            del commitments[count:]
        while len(commitments) < count:
            commitments.append(_random_point())

    return mutate


def _bump_mu(start: pb.KeyGenStart) -> None:
    start.commitment.proof_mu = _plus_one(start.commitment.proof_mu)


def _other_phone_proof(start: pb.KeyGenStart) -> None:
    """A valid proof, for another phone's constant term."""
    other = twoparty.PhoneKeyGen().start()
    start.commitment.proof_r, start.commitment.proof_mu = other.proof_r, other.proof_mu


_P384 = _spki(ec.generate_private_key(ec.SECP384R1()))
_SECP256K1 = _spki(ec.generate_private_key(ec.SECP256K1()))
#: A P-256-shaped SPKI naming an EC curve OID (1.3.132.0.99) that nobody implements.
_UNKNOWN_CURVE = _SECP256K1.replace(
    bytes.fromhex("06052b8104000a"), bytes.fromhex("06052b81040063")
)
_INVALID_ARG = Code.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("mutate", "code", "reason"),
    [
        pytest.param(_set("scheme", 0), _INVALID_ARG, "UNSUPPORTED_SCHEME", id="scheme-unset"),
        pytest.param(_set("scheme", 99), _INVALID_ARG, "UNSUPPORTED_SCHEME", id="scheme-99"),
        pytest.param(
            _set("device_public_key", b""), _INVALID_ARG, "DEVICE_KEY_INVALID", id="device-empty"
        ),
        pytest.param(
            _set("device_public_key", b"\x30\x03abc"),
            _INVALID_ARG,
            "DEVICE_KEY_INVALID",
            id="device-garbage",
        ),
        pytest.param(
            _set("device_public_key", _spki(rsa.generate_private_key(65537, 2048))),
            _INVALID_ARG,
            "DEVICE_KEY_INVALID",
            id="device-rsa",
        ),
        pytest.param(
            _set("device_public_key", _spki(ed25519.Ed25519PrivateKey.generate())),
            _INVALID_ARG,
            "DEVICE_KEY_INVALID",
            id="device-ed25519",
        ),
        pytest.param(
            _set("device_public_key", _P384), _INVALID_ARG, "DEVICE_KEY_INVALID", id="device-p384"
        ),
        pytest.param(
            _set("device_public_key", _SECP256K1),
            _INVALID_ARG,
            "DEVICE_KEY_INVALID",
            id="device-secp256k1",
        ),
        pytest.param(
            _set("device_public_key", _UNKNOWN_CURVE),
            _INVALID_ARG,
            "DEVICE_KEY_INVALID",
            id="device-unknown-curve",
        ),
        pytest.param(
            _set("pin_verifier", b""), _INVALID_ARG, "PIN_VERIFIER_INVALID", id="verifier-empty"
        ),
        pytest.param(
            _set("pin_verifier", bytes(31)), _INVALID_ARG, "PIN_VERIFIER_INVALID", id="verifier-31"
        ),
        pytest.param(
            _set("pin_verifier", bytes(33)), _INVALID_ARG, "PIN_VERIFIER_INVALID", id="verifier-33"
        ),
        pytest.param(
            _coefficient(0, NON_CANONICAL), _INVALID_ARG, "INVALID_ELEMENT", id="c0-non-canonical"
        ),
        pytest.param(
            _coefficient(0, OFF_CURVE), _INVALID_ARG, "INVALID_ELEMENT", id="c0-off-curve"
        ),
        pytest.param(_coefficient(0, IDENTITY), _INVALID_ARG, "IDENTITY_ELEMENT", id="c0-identity"),
        pytest.param(_coefficient(1, IDENTITY), _INVALID_ARG, "IDENTITY_ELEMENT", id="c1-identity"),
        pytest.param(
            _coefficient(0, IDENTITY_SIGN_BIT),
            _INVALID_ARG,
            "INVALID_ELEMENT",
            id="c0-identity-non-canonical",
        ),
        pytest.param(_coefficient(0, TORSION_2), _INVALID_ARG, "INVALID_ELEMENT", id="c0-order-2"),
        pytest.param(_coefficient(1, TORSION_4), _INVALID_ARG, "INVALID_ELEMENT", id="c1-order-4"),
        pytest.param(_coefficient(0, TORSION_8), _INVALID_ARG, "INVALID_ELEMENT", id="c0-order-8"),
        pytest.param(
            _coefficient(0, MIXED_ORDER), _INVALID_ARG, "INVALID_ELEMENT", id="c0-mixed-order"
        ),
        pytest.param(_coefficient(1, bytes(31)), _INVALID_ARG, "MALFORMED_MESSAGE", id="c1-short"),
        pytest.param(_coefficients(1), _INVALID_ARG, "MALFORMED_MESSAGE", id="one-coefficient"),
        pytest.param(_coefficients(3), _INVALID_ARG, "MALFORMED_MESSAGE", id="three-coefficients"),
        pytest.param(
            _set("commitment.identifier", 2), _INVALID_ARG, "MALFORMED_MESSAGE", id="identifier-2"
        ),
        pytest.param(
            _set("commitment.proof_r", IDENTITY), _INVALID_ARG, "IDENTITY_ELEMENT", id="r-identity"
        ),
        pytest.param(
            _set("commitment.proof_r", TORSION_8), _INVALID_ARG, "INVALID_ELEMENT", id="r-order-8"
        ),
        pytest.param(
            _set("commitment.proof_mu", _scalar(ORDER)),
            _INVALID_ARG,
            "NON_CANONICAL_SCALAR",
            id="mu-order",
        ),
        pytest.param(
            _set("commitment.proof_mu", b"\xff" * 32),
            _INVALID_ARG,
            "NON_CANONICAL_SCALAR",
            id="mu-max",
        ),
        pytest.param(
            _set("commitment.proof_mu", bytes(31)), _INVALID_ARG, "MALFORMED_MESSAGE", id="mu-short"
        ),
        pytest.param(
            _set("commitment.proof_r", BASE_POINT), _INVALID_ARG, "INVALID_PROOF", id="r-wrong"
        ),
        pytest.param(_bump_mu, _INVALID_ARG, "INVALID_PROOF", id="mu-wrong"),
        pytest.param(_other_phone_proof, _INVALID_ARG, "INVALID_PROOF", id="proof-of-another"),
    ],
)
async def test_bad_start_is_refused_and_changes_nothing(
    deployment: Deployment, mutate: Mutation, code: grpc.StatusCode, reason: str
) -> None:
    user_id, ticket = await _new_ticket(deployment)
    start = _start(ticket, twoparty.PhoneKeyGen(), _device_key())
    mutate(start)
    async with deployment.public_channel("cosigner") as channel:
        call = _cosigner(channel).KeyGen()
        await _send(call, pb.KeyGenRequest(start=start))
        await _expect_status(call, code, reason)
    await _enrols_afterwards(deployment, user_id, ticket)


@pytest.mark.parametrize(
    ("corrupt", "reason"),
    [
        pytest.param(_plus_one, "INVALID_SHARE", id="wrong-value"),
        pytest.param(lambda s: _scalar(0), "INVALID_SHARE", id="zero"),
        pytest.param(lambda s: _scalar(ORDER), "NON_CANONICAL_SCALAR", id="non-canonical"),
        pytest.param(lambda s: s[:31], "MALFORMED_MESSAGE", id="short"),
    ],
)
async def test_bad_secret_share_is_refused(
    deployment: Deployment, corrupt: Callable[[bytes], bytes], reason: str
) -> None:
    user_id, ticket = await _new_ticket(deployment)
    machine = twoparty.PhoneKeyGen()
    async with deployment.public_channel("cosigner") as channel:
        call = _cosigner(channel).KeyGen()
        own = await _until_secret_share(call, ticket, machine, _device_key())
        share = pb.KeyGenSecretShare(secret_share=corrupt(own.secret_share))
        await _send(call, pb.KeyGenRequest(secret_share=share))
        await _expect_status(call, Code.INVALID_ARGUMENT, reason)
    await _enrols_afterwards(deployment, user_id, ticket)


#: Builds the phone's confirm from (ticket, the real group key, device key).
ConfirmMaker = Callable[[bytes, bytes, Any], pb.KeyGenConfirm]


def _transcript(ticket: bytes, group_key: bytes, device_key: Any) -> bytes:
    return deviceauth.enrol_transcript(ticket, group_key, deviceauth.device_key_spki(device_key))


def _confirm_group_key(group_key: bytes) -> ConfirmMaker:
    """A confirm naming ``group_key`` instead of the real one, signed by the device."""

    def confirm(ticket: bytes, _: bytes, device_key: Any) -> pb.KeyGenConfirm:
        signature = deviceauth.sign(device_key, _transcript(ticket, group_key, device_key))
        return pb.KeyGenConfirm(group_public_key=group_key, device_signature=signature)

    return confirm


def _confirm_signed(sign: Callable[[bytes, bytes, Any], bytes]) -> ConfirmMaker:
    """A confirm naming the real group key, with the device signature ``sign`` makes."""

    def confirm(ticket: bytes, group_key: bytes, device_key: Any) -> pb.KeyGenConfirm:
        signature = sign(ticket, group_key, device_key)
        return pb.KeyGenConfirm(group_public_key=group_key, device_signature=signature)

    return confirm


@pytest.mark.parametrize(
    ("confirm", "code", "reason"),
    [
        pytest.param(
            _confirm_group_key(BASE_POINT), _INVALID_ARG, "GROUP_KEY_MISMATCH", id="other-key"
        ),
        pytest.param(
            _confirm_group_key(IDENTITY), _INVALID_ARG, "IDENTITY_ELEMENT", id="identity-key"
        ),
        pytest.param(
            _confirm_group_key(TORSION_8), _INVALID_ARG, "INVALID_ELEMENT", id="torsion-key"
        ),
        pytest.param(
            _confirm_signed(lambda t, g, d: deviceauth.sign(_device_key(), _transcript(t, g, d))),
            Code.PERMISSION_DENIED,
            "DEVICE_PROOF_INVALID",
            id="signed-by-another-device",
        ),
        pytest.param(
            _confirm_signed(lambda t, g, d: deviceauth.sign(d, _transcript(b"other", g, d))),
            Code.PERMISSION_DENIED,
            "DEVICE_PROOF_INVALID",
            id="signed-other-ticket",
        ),
        pytest.param(
            _confirm_signed(lambda t, g, d: b""),
            Code.PERMISSION_DENIED,
            "DEVICE_PROOF_INVALID",
            id="unsigned",
        ),
    ],
)
async def test_bad_confirm_is_refused(
    deployment: Deployment,
    confirm: ConfirmMaker,
    code: grpc.StatusCode,
    reason: str,
) -> None:
    user_id, ticket = await _new_ticket(deployment)
    device_key = _device_key()
    async with deployment.public_channel("cosigner") as channel:
        call = _cosigner(channel).KeyGen()
        package = await _until_confirm(call, ticket, twoparty.PhoneKeyGen(), device_key)
        message = confirm(ticket, package.group_public_key, device_key)
        await _send(call, pb.KeyGenRequest(confirm=message))
        await _expect_status(call, code, reason)
    await _enrols_afterwards(deployment, user_id, ticket)


async def test_keygen_steps_out_of_order_are_refused(deployment: Deployment) -> None:
    user_id, ticket = await _new_ticket(deployment)
    device_key = _device_key()
    async with deployment.public_channel("cosigner") as channel:
        stub = _cosigner(channel)
        firsts = [
            pb.KeyGenRequest(confirm=pb.KeyGenConfirm(group_public_key=BASE_POINT)),
            pb.KeyGenRequest(secret_share=pb.KeyGenSecretShare(secret_share=_scalar(1))),
            pb.KeyGenRequest(),
        ]
        for first in firsts:
            call = stub.KeyGen()
            await _send(call, first)
            await _expect_status(call, Code.FAILED_PRECONDITION, "UNEXPECTED_STEP")

        # start twice
        call = stub.KeyGen()
        await _until_secret_share(call, ticket, twoparty.PhoneKeyGen(), device_key)
        await _send(
            call, pb.KeyGenRequest(start=_start(ticket, twoparty.PhoneKeyGen(), device_key))
        )
        await _expect_status(call, Code.FAILED_PRECONDITION, "UNEXPECTED_STEP")

        # confirm instead of the secret share
        call = stub.KeyGen()
        await _until_secret_share(call, ticket, twoparty.PhoneKeyGen(), device_key)
        await _send(call, pb.KeyGenRequest(confirm=pb.KeyGenConfirm(group_public_key=BASE_POINT)))
        await _expect_status(call, Code.FAILED_PRECONDITION, "UNEXPECTED_STEP")

        # the secret share again instead of the confirm
        call = stub.KeyGen()
        machine = twoparty.PhoneKeyGen()
        await _until_confirm(call, ticket, machine, device_key)
        await _send(
            call, pb.KeyGenRequest(secret_share=pb.KeyGenSecretShare(secret_share=_scalar(1)))
        )
        await _expect_status(call, Code.FAILED_PRECONDITION, "UNEXPECTED_STEP")
    await _enrols_afterwards(deployment, user_id, ticket)


async def test_unparseable_step_is_refused(deployment: Deployment, keystore: Keystore) -> None:
    user_id, ticket = await _new_ticket(deployment)
    garbage = b"\xff\xff\xff"  # a truncated varint: not a protobuf message at all
    async with deployment.public_channel("cosigner") as channel:

        def raw(method: str, response: Callable[[bytes], Message]) -> Any:
            """A stream that sends bytes as they are."""
            path = f"/mobilesign.v1.CosignerService/{method}"
            return channel.stream_stream(path, response_deserializer=response)()

        for method, response in (
            ("KeyGen", pb.KeyGenResponse.FromString),
            ("Sign", pb.SignResponse.FromString),
        ):
            call = raw(method, response)
            await call.write(garbage)
            await _expect_status(call, Code.INVALID_ARGUMENT, "MALFORMED_REQUEST")

        # Mid-protocol: after the cosigner's commitment, and inside an open session.
        call = raw("KeyGen", pb.KeyGenResponse.FromString)
        start = _start(ticket, twoparty.PhoneKeyGen(), _device_key())
        await call.write(pb.KeyGenRequest(start=start).SerializeToString())
        await _next(call, "commitment")
        await call.write(garbage)
        await _expect_status(call, Code.INVALID_ARGUMENT, "MALFORMED_REQUEST")

        call = raw("Sign", pb.SignResponse.FromString)
        open_ = pb.SignRequest(open=pb.SignOpen(scheme=SCHEME, key_id=keystore.key_id))
        await call.write(open_.SerializeToString())
        challenge = (await _next(call, "challenge")).challenge.challenge
        proof = _proof(keystore, challenge, _verifier(keystore), keystore.device_key)
        await call.write(proof.SerializeToString())
        await _next(call, "ready")
        await call.write(garbage)
        await _expect_status(call, Code.INVALID_ARGUMENT, "MALFORMED_REQUEST")
    assert (await _get_key(deployment, keystore.key_id)).failed_pin_attempts == 0
    assert _signings(deployment, keystore.key_id) == []
    await _enrols_afterwards(deployment, user_id, ticket)


async def test_abandoned_enrolment_leaves_the_ticket_usable(deployment: Deployment) -> None:
    user_id, ticket = await _new_ticket(deployment)
    device_key = _device_key()
    async with deployment.public_channel("cosigner") as channel:
        stub = _cosigner(channel)
        # Cancelled after the cosigner's commitment, and after the cosigner's secret share.
        call = stub.KeyGen()
        await _until_secret_share(call, ticket, twoparty.PhoneKeyGen(), device_key)
        assert call.cancel()
        call = stub.KeyGen()
        await _until_confirm(call, ticket, twoparty.PhoneKeyGen(), device_key)
        assert call.cancel()
        # Half-closed by the phone where the confirm was expected.
        call = stub.KeyGen()
        await _until_confirm(call, ticket, twoparty.PhoneKeyGen(), device_key)
        await call.done_writing()
        await _expect_status(call, Code.ABORTED, "STREAM_ENDED")
    await _enrols_afterwards(deployment, user_id, ticket)


async def test_silent_phones_time_out(deployment: Deployment, keystore: Keystore) -> None:
    user_id, ticket = await _new_ticket(deployment)
    verifier = _verifier(keystore)
    timeout = TWO_PARTY_STEP_TIMEOUT_SECONDS

    async def silent(call: grpc.aio.StreamStreamCall[Any, Any]) -> None:
        started = time.monotonic()
        await _expect_status(call, Code.DEADLINE_EXCEEDED, "STEP_TIMEOUT")
        assert timeout - 0.5 <= time.monotonic() - started <= timeout + 5

    async def before_start(stub: cosigner_pb2_grpc.CosignerServiceAsyncStub) -> None:
        await silent(stub.KeyGen())

    async def after_commitment(stub: cosigner_pb2_grpc.CosignerServiceAsyncStub) -> None:
        call = stub.KeyGen()
        await _until_secret_share(call, ticket, twoparty.PhoneKeyGen(), _device_key())
        await silent(call)

    async def in_session(stub: cosigner_pb2_grpc.CosignerServiceAsyncStub) -> None:
        call = stub.Sign()
        await _ready(call, keystore, verifier)
        await silent(call)

    async with deployment.public_channel("cosigner") as channel:
        stub = _cosigner(channel)
        await asyncio.gather(before_start(stub), after_commitment(stub), in_session(stub))
    await _enrols_afterwards(deployment, user_id, ticket)


# 5. Signing: bad input ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key_id", "code", "reason"),
    [
        pytest.param("00" * 32, Code.NOT_FOUND, "KEY_NOT_FOUND", id="unknown"),
        pytest.param("AB" * 32, _INVALID_ARG, "MALFORMED_KEY_ID", id="upper-case"),
        pytest.param("ab" * 31, _INVALID_ARG, "MALFORMED_KEY_ID", id="short"),
        pytest.param("", _INVALID_ARG, "MALFORMED_KEY_ID", id="empty"),
        pytest.param("zz" * 32, _INVALID_ARG, "MALFORMED_KEY_ID", id="not-hex"),
        pytest.param(
            "ab" * 32 + "\n",
            _INVALID_ARG,
            "MALFORMED_KEY_ID",
            id="trailing-newline",
        ),
    ],
)
async def test_unknown_or_malformed_key_id(
    deployment: Deployment, key_id: str, code: grpc.StatusCode, reason: str
) -> None:
    async with deployment.public_channel("cosigner") as channel:
        call = _cosigner(channel).Sign()
        await _send(call, pb.SignRequest(open=pb.SignOpen(scheme=SCHEME, key_id=key_id)))
        await _expect_status(call, code, reason)
    async with deployment.channel("cosigner", "admin") as channel:
        stub = _cosigner(channel)
        await _expect_unary(stub.GetKey(pb.GetKeyRequest(key_id=key_id)), code, reason)
        await _expect_unary(stub.UnlockKey(pb.UnlockKeyRequest(key_id=key_id)), code, reason)


async def test_sign_with_unsupported_scheme(deployment: Deployment, keystore: Keystore) -> None:
    async with deployment.public_channel("cosigner") as channel:
        for scheme in (pb.SCHEME_UNSPECIFIED, pb.Scheme.ValueType(99)):
            call = _cosigner(channel).Sign()
            await _send(
                call, pb.SignRequest(open=pb.SignOpen(scheme=scheme, key_id=keystore.key_id))
            )
            await _expect_status(call, Code.INVALID_ARGUMENT, "UNSUPPORTED_SCHEME")


async def test_a_device_can_only_use_its_own_key(
    deployment: Deployment, keystore: Keystore
) -> None:
    other = await _enrol(deployment, OTHER_PIN)
    async with deployment.public_channel("cosigner") as channel:
        stub = _cosigner(channel)
        # The other device, with its own PIN or with mine: refused before any PIN is checked.
        for verifier in (_verifier(other, OTHER_PIN), _verifier(keystore)):
            call = stub.Sign()
            await _prove(call, keystore, verifier, device_key=other.device_key)
            await _expect_status(call, Code.PERMISSION_DENIED, "DEVICE_PROOF_INVALID")
        described = await _get_key(deployment, keystore.key_id)
        assert (described.failed_pin_attempts, described.locked) == (0, False)
        assert _signings(deployment, keystore.key_id) == []
        # My device, my PIN: still fine.
        async with sdk.SigningSession(channel, keystore, PIN) as session:
            _verify(keystore, b"mine", await session.sign(b"mine"))


async def _wrong_pin(
    stub: cosigner_pb2_grpc.CosignerServiceAsyncStub,
    keystore: Keystore,
    verifier: bytes,
    reason: str,
) -> None:
    call = stub.Sign()
    await _prove(call, keystore, verifier)
    await _expect_status(call, Code.PERMISSION_DENIED, reason)


async def test_wrong_pins_lock_the_key_until_an_admin_unlocks_it(
    deployment: Deployment, keystore: Keystore
) -> None:
    wrong = _verifier(keystore, OTHER_PIN)
    async with deployment.public_channel("cosigner") as channel:
        stub = _cosigner(channel)
        for attempt in range(1, MAX_PIN_ATTEMPTS):
            await _wrong_pin(stub, keystore, wrong, "WRONG_PIN")
            described = await _get_key(deployment, keystore.key_id)
            assert (described.failed_pin_attempts, described.locked) == (attempt, False)
        await _wrong_pin(stub, keystore, wrong, "KEY_LOCKED")
        described = await _get_key(deployment, keystore.key_id)
        assert (described.failed_pin_attempts, described.locked) == (MAX_PIN_ATTEMPTS, True)

        # Locked: the right PIN is refused too, before any challenge, and counts nothing.
        call = stub.Sign()
        await _send(call, pb.SignRequest(open=pb.SignOpen(scheme=SCHEME, key_id=keystore.key_id)))
        await _expect_status(call, Code.PERMISSION_DENIED, "KEY_LOCKED")
        with pytest.raises(ClientError) as info:
            async with sdk.SigningSession(channel, keystore, PIN):
                pass
        assert info.value.reason == "KEY_LOCKED"
        described = await _get_key(deployment, keystore.key_id)
        assert (described.failed_pin_attempts, described.locked) == (MAX_PIN_ATTEMPTS, True)

        await _unlock(deployment, keystore.key_id)
        described = await _get_key(deployment, keystore.key_id)
        assert (described.failed_pin_attempts, described.locked) == (0, False)
        async with sdk.SigningSession(channel, keystore, PIN) as session:
            _verify(keystore, b"unlocked", await session.sign(b"unlocked"))
            assert await session.close() == 1


async def test_right_pin_resets_the_failure_count(
    deployment: Deployment, keystore: Keystore
) -> None:
    wrong, right = _verifier(keystore, OTHER_PIN), _verifier(keystore)
    async with deployment.public_channel("cosigner") as channel:
        stub = _cosigner(channel)
        for _ in range(MAX_PIN_ATTEMPTS - 1):
            await _wrong_pin(stub, keystore, wrong, "WRONG_PIN")
        call = stub.Sign()
        await _ready(call, keystore, right)
        assert await _close(call) == 0
        assert (await _get_key(deployment, keystore.key_id)).failed_pin_attempts == 0
        # A fresh run of failures: four more wrong PINs still do not lock.
        for _ in range(MAX_PIN_ATTEMPTS - 1):
            await _wrong_pin(stub, keystore, wrong, "WRONG_PIN")
        described = await _get_key(deployment, keystore.key_id)
        assert (described.failed_pin_attempts, described.locked) == (MAX_PIN_ATTEMPTS - 1, False)


async def test_sign_steps_out_of_order_are_refused(
    deployment: Deployment, keystore: Keystore
) -> None:
    verifier = _verifier(keystore)
    signer = twoparty.PhoneSigner(keystore.key_package)
    commit = pb.SignRequest(commit=wire.sign_commit_to_proto(signer.request(b"early")))
    signer.abort()
    async with deployment.public_channel("cosigner") as channel:
        stub = _cosigner(channel)
        # Anything but open first; a commit where the proof is expected.
        for first in (pb.SignRequest(proof=pb.SignProof()), commit, pb.SignRequest()):
            call = stub.Sign()
            await _send(call, first)
            await _expect_status(call, Code.FAILED_PRECONDITION, "UNEXPECTED_STEP")
        call = stub.Sign()
        await _challenge(call, keystore.key_id)
        await _send(call, commit)
        await _expect_status(call, Code.FAILED_PRECONDITION, "UNEXPECTED_STEP")
        # open again inside an open session
        call = stub.Sign()
        await _ready(call, keystore, verifier)
        await _send(call, pb.SignRequest(open=pb.SignOpen(scheme=SCHEME, key_id=keystore.key_id)))
        await _expect_status(call, Code.FAILED_PRECONDITION, "UNEXPECTED_STEP")
        # a report with no signature in progress
        call = stub.Sign()
        await _ready(call, keystore, verifier)
        await _send(call, pb.SignRequest(report=pb.SignReport(signature=bytes(64))))
        await _expect_status(call, Code.FAILED_PRECONDITION, "UNEXPECTED_MESSAGE")
        # a second commit before the first one's report
        call = stub.Sign()
        await _ready(call, keystore, verifier)
        signer = twoparty.PhoneSigner(keystore.key_package)
        await _commit(call, signer, b"first")
        signer.abort()
        await _send(call, pb.SignRequest(commit=wire.sign_commit_to_proto(signer.request(b"2"))))
        await _expect_status(call, Code.FAILED_PRECONDITION, "UNEXPECTED_MESSAGE")
    # Only the commit that got a share was recorded, and it has no signature.
    rows = _signings(deployment, keystore.key_id)
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
        call = _cosigner(channel).Sign()
        await _ready(call, keystore, _verifier(keystore))
        await _send(call, pb.SignRequest(commit=commit))
        await _expect_status(call, Code.INVALID_ARGUMENT, reason)
    assert _signings(deployment, keystore.key_id) == []


async def test_replayed_commit_is_refused(deployment: Deployment, keystore: Keystore) -> None:
    signer = twoparty.PhoneSigner(keystore.key_package)
    signatures = []
    async with deployment.public_channel("cosigner") as channel:
        # After a completed signature, its commitments again: for the same message, and for
        # another one (in a second session).
        for message, replayed in ((b"once", b"once"), (b"first", b"another message")):
            call = _cosigner(channel).Sign()
            await _ready(call, keystore, _verifier(keystore))
            request, signature = await _sign(call, signer, message)
            signatures.append(signature)
            replay = pb.SignCommit(
                message=replayed,
                hiding_commitment=request.hiding_commitment,
                binding_commitment=request.binding_commitment,
            )
            await _send(call, pb.SignRequest(commit=replay))
            await _expect_status(call, Code.INVALID_ARGUMENT, "REPLAYED_MESSAGE")
    # The replays got no share, so nothing was recorded for them.
    assert [r.signature for r in _signings(deployment, keystore.key_id)] == signatures


async def test_commit_replayed_in_a_later_session_is_refused(
    deployment: Deployment, keystore: Keystore
) -> None:
    signer = twoparty.PhoneSigner(keystore.key_package)
    async with deployment.public_channel("cosigner") as channel:
        call = _cosigner(channel).Sign()
        await _ready(call, keystore, _verifier(keystore))
        request, signature = await _sign(call, signer, b"recorded once")
        assert await _close(call) == 1
        # A new session (new cosigner signer state) gets the old commitments again.
        call = _cosigner(channel).Sign()
        await _ready(call, keystore, _verifier(keystore))
        replay = pb.SignCommit(
            message=b"something else",
            hiding_commitment=request.hiding_commitment,
            binding_commitment=request.binding_commitment,
        )
        await _send(call, pb.SignRequest(commit=replay))
        await _expect_status(call, Code.INVALID_ARGUMENT, "REPLAYED_MESSAGE")
    assert [r.signature for r in _signings(deployment, keystore.key_id)] == [signature]


def _z_plus_one(signature: bytes, earlier: bytes) -> bytes:
    return signature[:32] + _plus_one(signature[32:])


@pytest.mark.parametrize(
    ("forge", "reason"),
    [
        pytest.param(_z_plus_one, "INVALID_SIGNATURE", id="z-altered"),
        pytest.param(lambda s, e: _random_point() + s[32:], "INVALID_SIGNATURE", id="other-r"),
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
        call = _cosigner(channel).Sign()
        await _ready(call, keystore, _verifier(keystore))
        _, earlier = await _sign(call, signer, b"earlier")
        _, share = await _commit(call, signer, b"later")
        honest = signer.receive_response(wire.sign_share_from_proto(share)).signature
        await _send(call, pb.SignRequest(report=pb.SignReport(signature=forge(honest, earlier))))
        await _expect_status(call, Code.INVALID_ARGUMENT, reason)
    rows = _signings(deployment, keystore.key_id)
    assert [(r.message_sha256, r.signature) for r in rows] == [
        (hashlib.sha256(b"earlier").digest(), earlier),
        (hashlib.sha256(b"later").digest(), None),
    ]


async def test_close_with_a_report_missing_is_refused(
    deployment: Deployment, keystore: Keystore
) -> None:
    signer = twoparty.PhoneSigner(keystore.key_package)
    async with deployment.public_channel("cosigner") as channel:
        call = _cosigner(channel).Sign()
        await _ready(call, keystore, _verifier(keystore))
        await _commit(call, signer, b"unreported")
        await _send(call, pb.SignRequest(close=pb.SignClose()))
        await _expect_status(call, Code.FAILED_PRECONDITION, "REPORT_MISSING")
    assert [r.signature for r in _signings(deployment, keystore.key_id)] == [None]


async def test_message_size_limits(deployment: Deployment, keystore: Keystore) -> None:
    largest = secrets.token_bytes(MAX_MESSAGE_BYTES)
    async with deployment.public_channel("cosigner") as channel:
        async with sdk.SigningSession(channel, keystore, PIN) as session:
            _verify(keystore, largest, await session.sign(largest))
            assert await session.close() == 1

        signer = twoparty.PhoneSigner(keystore.key_package)
        call = _cosigner(channel).Sign()
        await _ready(call, keystore, _verifier(keystore))
        await _send(
            call, pb.SignRequest(commit=wire.sign_commit_to_proto(signer.request(largest + b"!")))
        )
        signer.abort()
        await _expect_status(call, Code.INVALID_ARGUMENT, "MESSAGE_TOO_LARGE")

        call = _cosigner(channel).Sign()
        await _ready(call, keystore, _verifier(keystore))
        huge = bytes(TRANSPORT_LIMIT_BYTES + 1)
        await _send(call, pb.SignRequest(commit=wire.sign_commit_to_proto(signer.request(huge))))
        signer.abort()
        await _expect_status(call, Code.RESOURCE_EXHAUSTED, None)

        # The cosigner still serves.
        async with sdk.SigningSession(channel, keystore, PIN) as session:
            _verify(keystore, b"still", await session.sign(b"still"))
    assert len(_signings(deployment, keystore.key_id)) == 2


async def test_abandoned_session_after_a_share_is_recorded(
    deployment: Deployment, keystore: Keystore
) -> None:
    signer = twoparty.PhoneSigner(keystore.key_package)
    async with deployment.public_channel("cosigner") as channel:
        call = _cosigner(channel).Sign()
        await _ready(call, keystore, _verifier(keystore))
        request, share = await _commit(call, signer, b"abandoned")
        signer.abort()
        assert call.cancel()
        rows = _signings(deployment, keystore.key_id)
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
    _verify(keystore, b"next session", signature)
    assert [r.signature for r in _signings(deployment, keystore.key_id)] == [None, signature]


# 6. Access to the internal RPCs -----------------------------------------------------------------


async def test_internal_rpcs_need_the_right_identity(
    deployment: Deployment, keystore: Keystore
) -> None:
    key_id = keystore.key_id
    async with deployment.public_channel("cosigner") as channel:
        stub = _cosigner(channel)
        await _expect_unary(
            stub.GetKey(pb.GetKeyRequest(key_id=key_id)),
            Code.UNAUTHENTICATED,
            "CALLER_NOT_AUTHORISED",
        )
        await _expect_unary(
            stub.UnlockKey(pb.UnlockKeyRequest(key_id=key_id)),
            Code.UNAUTHENTICATED,
            "CALLER_NOT_AUTHORISED",
        )
    for identity in ("gateway", "cosigner"):
        async with deployment.channel("cosigner", identity) as channel:
            await _expect_unary(
                _cosigner(channel).UnlockKey(pb.UnlockKeyRequest(key_id=key_id)),
                Code.PERMISSION_DENIED,
                "CALLER_NOT_AUTHORISED",
            )
    async with deployment.channel("cosigner", "cosigner") as channel:
        await _expect_unary(
            _cosigner(channel).GetKey(pb.GetKeyRequest(key_id=key_id)),
            Code.PERMISSION_DENIED,
            "CALLER_NOT_AUTHORISED",
        )
    async with deployment.channel("cosigner", "gateway") as channel:
        described = await _cosigner(channel).GetKey(pb.GetKeyRequest(key_id=key_id))
    assert described.user_id == keystore.user_id
