"""KeyGen (two-party DKG) with bad input: every malformed, invalid or out-of-order start, secret
share and confirm is refused by gRPC code and stable reason, and changes nothing (the ticket still
enrols exactly one key afterwards).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import reduce
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from mobilesign import deviceauth, twoparty
from mobilesign.testing import Deployment
from mobilesign.v1 import cosigner_pb2 as pb
from tests.integration.two_party import (
    IDENTITY,
    INVALID_ARG,
    MIXED_ORDER,
    NON_CANONICAL,
    OFF_CURVE,
    ORDER,
    TORSION_2,
    TORSION_8,
    Code,
    KeyGenCall,
    cosigner_stub,
    enrols_afterwards,
    expect_status,
    keygen_start,
    new_device_key,
    new_ticket,
    next_step,
    plus_one,
    random_point,
    scalar_bytes,
    send,
    spki_of,
    until_secret_share,
)

pytestmark = pytest.mark.integration
BASE_POINT = bytes.fromhex("58" + "66" * 31)
#: (0, 1) again, with the sign bit of x = 0 set: a non-canonical encoding of the identity.
IDENTITY_SIGN_BIT = bytes.fromhex("01" + "00" * 30 + "80")
TORSION_4 = bytes(32)


@pytest.fixture
def deployment(two_party_deployment: Deployment) -> Deployment:
    """The shared HSM proxy, RA, gateway and cosigner (step timeout 3 s)."""
    return two_party_deployment


async def _until_confirm(
    call: KeyGenCall, ticket: bytes, machine: twoparty.PhoneKeyGen, device_key: Any
) -> twoparty.KeyPackage:
    """Honest start and share exchange; returns the phone's key package (confirm not sent)."""
    own = await until_secret_share(call, ticket, machine, device_key)
    await send(
        call,
        pb.KeyGenRequest(secret_share=pb.KeyGenSecretShare(secret_share=own.secret_share)),
    )
    reply = (await next_step(call, "secret_share")).secret_share
    _, package = machine.receive_round2(
        twoparty.DkgRound2(reply.secret_share, reply.group_public_key)
    )
    return package


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
            commitments.append(random_point())

    return mutate


def _bump_mu(start: pb.KeyGenStart) -> None:
    start.commitment.proof_mu = plus_one(start.commitment.proof_mu)


def _other_phone_proof(start: pb.KeyGenStart) -> None:
    """A valid proof, for another phone's constant term."""
    other = twoparty.PhoneKeyGen().start()
    start.commitment.proof_r, start.commitment.proof_mu = other.proof_r, other.proof_mu


_P384 = spki_of(ec.generate_private_key(ec.SECP384R1()))
_SECP256K1 = spki_of(ec.generate_private_key(ec.SECP256K1()))
#: A P-256-shaped SPKI naming an EC curve OID (1.3.132.0.99) that nobody implements.
_UNKNOWN_CURVE = _SECP256K1.replace(
    bytes.fromhex("06052b8104000a"), bytes.fromhex("06052b81040063")
)


@pytest.mark.parametrize(
    ("mutate", "code", "reason"),
    [
        pytest.param(_set("scheme", 0), INVALID_ARG, "UNSUPPORTED_SCHEME", id="scheme-unset"),
        pytest.param(_set("scheme", 99), INVALID_ARG, "UNSUPPORTED_SCHEME", id="scheme-99"),
        pytest.param(
            _set("device_public_key", b""), INVALID_ARG, "DEVICE_KEY_INVALID", id="device-empty"
        ),
        pytest.param(
            _set("device_public_key", b"\x30\x03abc"),
            INVALID_ARG,
            "DEVICE_KEY_INVALID",
            id="device-garbage",
        ),
        pytest.param(
            _set("device_public_key", spki_of(rsa.generate_private_key(65537, 2048))),
            INVALID_ARG,
            "DEVICE_KEY_INVALID",
            id="device-rsa",
        ),
        pytest.param(
            _set("device_public_key", spki_of(ed25519.Ed25519PrivateKey.generate())),
            INVALID_ARG,
            "DEVICE_KEY_INVALID",
            id="device-ed25519",
        ),
        pytest.param(
            _set("device_public_key", _P384), INVALID_ARG, "DEVICE_KEY_INVALID", id="device-p384"
        ),
        pytest.param(
            _set("device_public_key", _SECP256K1),
            INVALID_ARG,
            "DEVICE_KEY_INVALID",
            id="device-secp256k1",
        ),
        pytest.param(
            _set("device_public_key", _UNKNOWN_CURVE),
            INVALID_ARG,
            "DEVICE_KEY_INVALID",
            id="device-unknown-curve",
        ),
        pytest.param(
            _set("pin_verifier", b""), INVALID_ARG, "PIN_VERIFIER_INVALID", id="verifier-empty"
        ),
        pytest.param(
            _set("pin_verifier", bytes(31)), INVALID_ARG, "PIN_VERIFIER_INVALID", id="verifier-31"
        ),
        pytest.param(
            _set("pin_verifier", bytes(33)), INVALID_ARG, "PIN_VERIFIER_INVALID", id="verifier-33"
        ),
        pytest.param(
            _coefficient(0, NON_CANONICAL), INVALID_ARG, "INVALID_ELEMENT", id="c0-non-canonical"
        ),
        pytest.param(_coefficient(0, OFF_CURVE), INVALID_ARG, "INVALID_ELEMENT", id="c0-off-curve"),
        pytest.param(_coefficient(0, IDENTITY), INVALID_ARG, "IDENTITY_ELEMENT", id="c0-identity"),
        pytest.param(_coefficient(1, IDENTITY), INVALID_ARG, "IDENTITY_ELEMENT", id="c1-identity"),
        pytest.param(
            _coefficient(0, IDENTITY_SIGN_BIT),
            INVALID_ARG,
            "INVALID_ELEMENT",
            id="c0-identity-non-canonical",
        ),
        pytest.param(_coefficient(0, TORSION_2), INVALID_ARG, "INVALID_ELEMENT", id="c0-order-2"),
        pytest.param(_coefficient(1, TORSION_4), INVALID_ARG, "INVALID_ELEMENT", id="c1-order-4"),
        pytest.param(_coefficient(0, TORSION_8), INVALID_ARG, "INVALID_ELEMENT", id="c0-order-8"),
        pytest.param(
            _coefficient(0, MIXED_ORDER), INVALID_ARG, "INVALID_ELEMENT", id="c0-mixed-order"
        ),
        pytest.param(_coefficient(1, bytes(31)), INVALID_ARG, "MALFORMED_MESSAGE", id="c1-short"),
        pytest.param(_coefficients(1), INVALID_ARG, "MALFORMED_MESSAGE", id="one-coefficient"),
        pytest.param(_coefficients(3), INVALID_ARG, "MALFORMED_MESSAGE", id="three-coefficients"),
        pytest.param(
            _set("commitment.identifier", 2), INVALID_ARG, "MALFORMED_MESSAGE", id="identifier-2"
        ),
        pytest.param(
            _set("commitment.proof_r", IDENTITY), INVALID_ARG, "IDENTITY_ELEMENT", id="r-identity"
        ),
        pytest.param(
            _set("commitment.proof_r", TORSION_8), INVALID_ARG, "INVALID_ELEMENT", id="r-order-8"
        ),
        pytest.param(
            _set("commitment.proof_mu", scalar_bytes(ORDER)),
            INVALID_ARG,
            "NON_CANONICAL_SCALAR",
            id="mu-order",
        ),
        pytest.param(
            _set("commitment.proof_mu", b"\xff" * 32),
            INVALID_ARG,
            "NON_CANONICAL_SCALAR",
            id="mu-max",
        ),
        pytest.param(
            _set("commitment.proof_mu", bytes(31)), INVALID_ARG, "MALFORMED_MESSAGE", id="mu-short"
        ),
        pytest.param(
            _set("commitment.proof_r", BASE_POINT), INVALID_ARG, "INVALID_PROOF", id="r-wrong"
        ),
        pytest.param(_bump_mu, INVALID_ARG, "INVALID_PROOF", id="mu-wrong"),
        pytest.param(_other_phone_proof, INVALID_ARG, "INVALID_PROOF", id="proof-of-another"),
    ],
)
async def test_bad_start_is_refused_and_changes_nothing(
    deployment: Deployment, mutate: Mutation, code: grpc.StatusCode, reason: str
) -> None:
    user_id, ticket = await new_ticket(deployment)
    start = keygen_start(ticket, twoparty.PhoneKeyGen(), new_device_key())
    mutate(start)
    async with deployment.public_channel("cosigner") as channel:
        call = cosigner_stub(channel).KeyGen()
        await send(call, pb.KeyGenRequest(start=start))
        await expect_status(call, code, reason)
    await enrols_afterwards(deployment, user_id, ticket)


@pytest.mark.parametrize(
    ("corrupt", "reason"),
    [
        pytest.param(plus_one, "INVALID_SHARE", id="wrong-value"),
        pytest.param(lambda s: scalar_bytes(0), "INVALID_SHARE", id="zero"),
        pytest.param(lambda s: scalar_bytes(ORDER), "NON_CANONICAL_SCALAR", id="non-canonical"),
        pytest.param(lambda s: s[:31], "MALFORMED_MESSAGE", id="short"),
    ],
)
async def test_bad_secret_share_is_refused(
    deployment: Deployment, corrupt: Callable[[bytes], bytes], reason: str
) -> None:
    user_id, ticket = await new_ticket(deployment)
    machine = twoparty.PhoneKeyGen()
    async with deployment.public_channel("cosigner") as channel:
        call = cosigner_stub(channel).KeyGen()
        own = await until_secret_share(call, ticket, machine, new_device_key())
        share = pb.KeyGenSecretShare(secret_share=corrupt(own.secret_share))
        await send(call, pb.KeyGenRequest(secret_share=share))
        await expect_status(call, Code.INVALID_ARGUMENT, reason)
    await enrols_afterwards(deployment, user_id, ticket)


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
            _confirm_group_key(BASE_POINT), INVALID_ARG, "GROUP_KEY_MISMATCH", id="other-key"
        ),
        pytest.param(
            _confirm_group_key(IDENTITY), INVALID_ARG, "IDENTITY_ELEMENT", id="identity-key"
        ),
        pytest.param(
            _confirm_group_key(TORSION_8), INVALID_ARG, "INVALID_ELEMENT", id="torsion-key"
        ),
        pytest.param(
            _confirm_signed(
                lambda t, g, d: deviceauth.sign(new_device_key(), _transcript(t, g, d))
            ),
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
    user_id, ticket = await new_ticket(deployment)
    device_key = new_device_key()
    async with deployment.public_channel("cosigner") as channel:
        call = cosigner_stub(channel).KeyGen()
        package = await _until_confirm(call, ticket, twoparty.PhoneKeyGen(), device_key)
        message = confirm(ticket, package.group_public_key, device_key)
        await send(call, pb.KeyGenRequest(confirm=message))
        await expect_status(call, code, reason)
    await enrols_afterwards(deployment, user_id, ticket)


async def test_keygen_steps_out_of_order_are_refused(deployment: Deployment) -> None:
    user_id, ticket = await new_ticket(deployment)
    device_key = new_device_key()
    async with deployment.public_channel("cosigner") as channel:
        stub = cosigner_stub(channel)
        firsts = [
            pb.KeyGenRequest(confirm=pb.KeyGenConfirm(group_public_key=BASE_POINT)),
            pb.KeyGenRequest(secret_share=pb.KeyGenSecretShare(secret_share=scalar_bytes(1))),
            pb.KeyGenRequest(),
        ]
        for first in firsts:
            call = stub.KeyGen()
            await send(call, first)
            await expect_status(call, Code.FAILED_PRECONDITION, "UNEXPECTED_STEP")

        # start twice
        call = stub.KeyGen()
        await until_secret_share(call, ticket, twoparty.PhoneKeyGen(), device_key)
        await send(
            call, pb.KeyGenRequest(start=keygen_start(ticket, twoparty.PhoneKeyGen(), device_key))
        )
        await expect_status(call, Code.FAILED_PRECONDITION, "UNEXPECTED_STEP")

        # confirm instead of the secret share
        call = stub.KeyGen()
        await until_secret_share(call, ticket, twoparty.PhoneKeyGen(), device_key)
        await send(call, pb.KeyGenRequest(confirm=pb.KeyGenConfirm(group_public_key=BASE_POINT)))
        await expect_status(call, Code.FAILED_PRECONDITION, "UNEXPECTED_STEP")

        # the secret share again instead of the confirm
        call = stub.KeyGen()
        machine = twoparty.PhoneKeyGen()
        await _until_confirm(call, ticket, machine, device_key)
        await send(
            call, pb.KeyGenRequest(secret_share=pb.KeyGenSecretShare(secret_share=scalar_bytes(1)))
        )
        await expect_status(call, Code.FAILED_PRECONDITION, "UNEXPECTED_STEP")
    await enrols_afterwards(deployment, user_id, ticket)


async def test_abandoned_enrolment_leaves_the_ticket_usable(deployment: Deployment) -> None:
    user_id, ticket = await new_ticket(deployment)
    device_key = new_device_key()
    async with deployment.public_channel("cosigner") as channel:
        stub = cosigner_stub(channel)
        # Cancelled after the cosigner's commitment, and after the cosigner's secret share.
        call = stub.KeyGen()
        await until_secret_share(call, ticket, twoparty.PhoneKeyGen(), device_key)
        assert call.cancel()
        call = stub.KeyGen()
        await _until_confirm(call, ticket, twoparty.PhoneKeyGen(), device_key)
        assert call.cancel()
        # Half-closed by the phone where the confirm was expected.
        call = stub.KeyGen()
        await _until_confirm(call, ticket, twoparty.PhoneKeyGen(), device_key)
        await call.done_writing()
        await expect_status(call, Code.ABORTED, "STREAM_ENDED")
    await enrols_afterwards(deployment, user_id, ticket)
