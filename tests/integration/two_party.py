"""Shared by the two-party tests (enrolment with KeyGen, signing with Sign) against real HSM
proxy, RA, gateway and cosigner processes: administration, the cosigner's database read-only, raw
streams driven with the real ``twoparty`` state machines, and the encodings they corrupt.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from google.protobuf.message import Message

from client import sdk
from client.keystore import Keystore
from mobilesign import deviceauth, twoparty
from mobilesign.rpc import wire
from mobilesign.rpc.status import reason_of
from mobilesign.testing import Deployment
from mobilesign.v1 import cosigner_pb2 as pb
from mobilesign.v1 import cosigner_pb2_grpc, ra_pb2, ra_pb2_grpc

PIN = "271828"
SCHEME = pb.SCHEME_FROST_ED25519_SHA512_V1
Code = grpc.StatusCode
INVALID_ARG = Code.INVALID_ARGUMENT

# Ed25519 encodings (32-byte compressed points, little-endian y, sign of x in the top bit).
ORDER = 2**252 + 27742317777372353535851937790883648493
IDENTITY = bytes.fromhex("01" + "00" * 31)
#: y = 2^255 - 1 >= p: not a canonical field element.
NON_CANONICAL = b"\xff" * 32
#: y = 2: (y^2 - 1) / (d y^2 + 1) is not a square mod p, so no point has this y.
OFF_CURVE = bytes.fromhex("02" + "00" * 31)
#: The small-order (torsion) points: (0, -1) of order 2, (sqrt(-1), 0) of order 4, and one of
#: order 8.
TORSION_2 = bytes.fromhex("ec" + "ff" * 30 + "7f")
TORSION_8 = bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05")
#: B + (0, -1): on the curve but outside the prime-order subgroup.
MIXED_ORDER = bytes.fromhex("95" + "99" * 31)

KeyGenCall = grpc.aio.StreamStreamCall[pb.KeyGenRequest, pb.KeyGenResponse]
SignCall = grpc.aio.StreamStreamCall[pb.SignRequest, pb.SignResponse]
Resp = TypeVar("Resp", bound=Message)


# RA and cosigner admin ------------------------------------------------------------------------


async def new_ticket(deployment: Deployment) -> tuple[str, bytes]:
    """A new user and an enrolment ticket for them, issued by the RA."""
    user_id = f"user-{secrets.token_hex(6)}"
    async with deployment.channel("ra", "admin") as channel:
        admin = ra_pb2_grpc.AdminServiceStub(channel)
        await admin.CreateUser(ra_pb2.CreateUserRequest(user_id=user_id, display_name="T"))
        reply = await admin.IssueEnrolmentTicket(
            ra_pb2.IssueEnrolmentTicketRequest(user_id=user_id)
        )
    return user_id, reply.ticket


async def get_key(deployment: Deployment, key_id: str) -> pb.GetKeyResponse:
    async with deployment.channel("cosigner", "admin") as channel:
        stub = cosigner_pb2_grpc.CosignerServiceStub(channel)
        return await stub.GetKey(pb.GetKeyRequest(key_id=key_id))


# The cosigner's database, read-only --------------------------------------------------------


def cosigner_db_path(deployment: Deployment) -> Path:
    return deployment.state_dir / "cosigner" / "cosigner.db"


@contextlib.contextmanager
def cosigner_db(deployment: Deployment) -> Iterator[sqlite3.Connection]:
    connection = sqlite3.connect(f"file:{cosigner_db_path(deployment)}?mode=ro", uri=True)
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


def signings(deployment: Deployment, key_id: str) -> list[SigningRow]:
    """The signings the cosigner recorded for a key, oldest first."""
    with cosigner_db(deployment) as db:
        rows = db.execute(
            "SELECT message_sha256, commitments, signature, completed_at FROM signings"
            " WHERE key_id = ? ORDER BY signing_id",
            (key_id,),
        ).fetchall()
    return [
        SigningRow(bytes(m), bytes(c), None if s is None else bytes(s), done is not None)
        for m, c, s, done in rows
    ]


def keys_of(deployment: Deployment, user_id: str) -> int:
    with cosigner_db(deployment) as db:
        (count,) = db.execute("SELECT COUNT(*) FROM keys WHERE user_id = ?", (user_id,)).fetchone()
    return int(count)


# Streams ------------------------------------------------------------------------------------


def cosigner_stub(channel: grpc.aio.Channel) -> cosigner_pb2_grpc.CosignerServiceAsyncStub:
    return cosigner_pb2_grpc.CosignerServiceStub(channel)


async def send(call: grpc.aio.StreamStreamCall[Any, Any], message: Message) -> None:
    """Write one step; if the cosigner already ended the stream, the next read says why."""
    with contextlib.suppress(asyncio.InvalidStateError, grpc.aio.AioRpcError):
        await call.write(message)


async def next_step(call: grpc.aio.StreamStreamCall[Any, Resp], step: str) -> Resp:
    """The next response, which must be the ``step`` case of the envelope."""
    response = await call.read()
    assert isinstance(response, Message), "the stream ended"
    assert response.WhichOneof("step") == step, response
    return response  # type: ignore[return-value]


async def expect_status(
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


# Phones -------------------------------------------------------------------------------------


def new_device_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def spki_of(key: Any) -> bytes:
    return bytes(
        key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def verifier_for(keystore: Keystore, pin: str = PIN) -> bytes:
    return deviceauth.pin_verifier(pin, deviceauth.device_key_spki(keystore.device_key))


def verify_signature(keystore: Keystore, message: bytes, signature: bytes) -> None:
    """Plain RFC 8032 verification with ``cryptography`` (raises InvalidSignature)."""
    ed25519.Ed25519PublicKey.from_public_bytes(keystore.group_public_key).verify(signature, message)


async def enrol(deployment: Deployment, pin: str = PIN) -> Keystore:
    """A new user enrolled through the SDK over the cosigner's public listener."""
    _, ticket = await new_ticket(deployment)
    async with deployment.public_channel("cosigner") as channel:
        return await sdk.enrol(channel, ticket, pin)


def keygen_start(
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


async def until_secret_share(
    call: KeyGenCall, ticket: bytes, machine: twoparty.PhoneKeyGen, device_key: Any
) -> twoparty.DkgRound2:
    """Honest start; returns the phone's share for the cosigner (not yet sent)."""
    await send(call, pb.KeyGenRequest(start=keygen_start(ticket, machine, device_key)))
    reply = await next_step(call, "commitment")
    return machine.receive_round1(wire.commitment_from_proto(reply.commitment))


async def enrols_afterwards(deployment: Deployment, user_id: str, ticket: bytes) -> None:
    """Nothing was stored for the user, and the ticket still enrols exactly one key."""
    assert keys_of(deployment, user_id) == 0
    async with deployment.public_channel("cosigner") as channel:
        keystore = await sdk.enrol(channel, ticket, PIN)
    assert keystore.user_id == user_id
    assert keys_of(deployment, user_id) == 1


async def open_challenge(call: SignCall, key_id: str) -> bytes:
    await send(call, pb.SignRequest(open=pb.SignOpen(scheme=SCHEME, key_id=key_id)))
    return (await next_step(call, "challenge")).challenge.challenge


def session_proof(
    keystore: Keystore, challenge: bytes, verifier: bytes, device_key: ec.EllipticCurvePrivateKey
) -> pb.SignRequest:
    transcript = deviceauth.session_transcript(bytes.fromhex(keystore.key_id), challenge)
    return pb.SignRequest(
        proof=pb.SignProof(
            device_signature=deviceauth.sign(device_key, transcript),
            pin_proof=deviceauth.pin_proof(verifier, transcript),
        )
    )


async def prove(
    call: SignCall,
    keystore: Keystore,
    verifier: bytes,
    device_key: ec.EllipticCurvePrivateKey | None = None,
) -> None:
    """Open a session on ``keystore``'s key and answer the challenge (response not read)."""
    challenge = await open_challenge(call, keystore.key_id)
    await send(
        call, session_proof(keystore, challenge, verifier, device_key or keystore.device_key)
    )


async def until_ready(call: SignCall, keystore: Keystore, verifier: bytes) -> None:
    await prove(call, keystore, verifier)
    await next_step(call, "ready")


async def close_session(call: SignCall) -> int:
    await send(call, pb.SignRequest(close=pb.SignClose()))
    closed = (await next_step(call, "closed")).closed
    await call.done_writing()
    return closed.signatures_recorded


# Scalars and points -------------------------------------------------------------------------


def scalar_bytes(value: int) -> bytes:
    return value.to_bytes(32, "little")


def plus_one(scalar: bytes) -> bytes:
    return scalar_bytes((int.from_bytes(scalar, "little") + 1) % ORDER)


def random_point() -> bytes:
    """A valid prime-order point nobody knows the discrete log of in this test."""
    return twoparty.PhoneKeyGen().start().commitment[0]
