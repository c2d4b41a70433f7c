"""Who may open a signing session: key ids, schemes, the device key, the PIN (failures counted,
the key locked until an administrator unlocks it), and the identities the cosigner's internal RPCs
require.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import grpc
import pytest

from client import sdk
from client.errors import ClientError
from client.keystore import Keystore
from mobilesign.rpc.status import error_info, reason_of
from mobilesign.testing import Deployment
from mobilesign.v1 import cosigner_pb2 as pb
from mobilesign.v1 import cosigner_pb2_grpc
from tests.integration.two_party import (
    INVALID_ARG,
    PIN,
    SCHEME,
    Code,
    close_session,
    cosigner_stub,
    enrol,
    expect_status,
    get_key,
    prove,
    send,
    signings,
    until_ready,
    verifier_for,
    verify_signature,
)

pytestmark = pytest.mark.integration
OTHER_PIN = "314159"
MAX_PIN_ATTEMPTS = 5  # the cosigner's default


@pytest.fixture
def deployment(two_party_deployment: Deployment) -> Deployment:
    """The shared HSM proxy, RA, gateway and cosigner (step timeout 3 s)."""
    return two_party_deployment


async def _unlock(deployment: Deployment, key_id: str) -> None:
    async with deployment.channel("cosigner", "admin") as channel:
        stub = cosigner_pb2_grpc.CosignerServiceStub(channel)
        await stub.UnlockKey(pb.UnlockKeyRequest(key_id=key_id))


async def _expect_unary(call: Any, code: grpc.StatusCode, reason: str) -> None:
    try:
        response = await call
    except grpc.aio.AioRpcError as exc:
        error = exc
    else:
        pytest.fail(f"expected {code.name} {reason}, got {response!r}")
    assert (error.code(), reason_of(error)) == (code, reason), error.details()


@pytest.mark.parametrize(
    ("key_id", "code", "reason"),
    [
        pytest.param("00" * 32, Code.NOT_FOUND, "KEY_NOT_FOUND", id="unknown"),
        pytest.param("AB" * 32, INVALID_ARG, "MALFORMED_KEY_ID", id="upper-case"),
        pytest.param("ab" * 31, INVALID_ARG, "MALFORMED_KEY_ID", id="short"),
        pytest.param("", INVALID_ARG, "MALFORMED_KEY_ID", id="empty"),
        pytest.param("zz" * 32, INVALID_ARG, "MALFORMED_KEY_ID", id="not-hex"),
        pytest.param(
            "ab" * 32 + "\n",
            INVALID_ARG,
            "MALFORMED_KEY_ID",
            id="trailing-newline",
        ),
    ],
)
async def test_unknown_or_malformed_key_id(
    deployment: Deployment, key_id: str, code: grpc.StatusCode, reason: str
) -> None:
    async with deployment.public_channel("cosigner") as channel:
        call = cosigner_stub(channel).Sign()
        await send(call, pb.SignRequest(open=pb.SignOpen(scheme=SCHEME, key_id=key_id)))
        await expect_status(call, code, reason)
    async with deployment.channel("cosigner", "admin") as channel:
        stub = cosigner_stub(channel)
        await _expect_unary(stub.GetKey(pb.GetKeyRequest(key_id=key_id)), code, reason)
        await _expect_unary(stub.UnlockKey(pb.UnlockKeyRequest(key_id=key_id)), code, reason)


async def test_sign_with_unsupported_scheme(deployment: Deployment, keystore: Keystore) -> None:
    async with deployment.public_channel("cosigner") as channel:
        for scheme in (pb.SCHEME_UNSPECIFIED, pb.Scheme.ValueType(99)):
            call = cosigner_stub(channel).Sign()
            await send(
                call, pb.SignRequest(open=pb.SignOpen(scheme=scheme, key_id=keystore.key_id))
            )
            await expect_status(call, Code.INVALID_ARGUMENT, "UNSUPPORTED_SCHEME")


async def test_a_device_can_only_use_its_own_key(
    deployment: Deployment, keystore: Keystore
) -> None:
    other = await enrol(deployment, OTHER_PIN)
    async with deployment.public_channel("cosigner") as channel:
        stub = cosigner_stub(channel)
        # The other device, with its own PIN or with mine: refused before any PIN is checked.
        for verifier in (verifier_for(other, OTHER_PIN), verifier_for(keystore)):
            call = stub.Sign()
            await prove(call, keystore, verifier, device_key=other.device_key)
            await expect_status(call, Code.PERMISSION_DENIED, "DEVICE_PROOF_INVALID")
        described = await get_key(deployment, keystore.key_id)
        assert (described.failed_pin_attempts, described.locked) == (0, False)
        assert signings(deployment, keystore.key_id) == []
        # My device, my PIN: still fine.
        async with sdk.SigningSession(channel, keystore, PIN) as session:
            verify_signature(keystore, b"mine", await session.sign(b"mine"))


async def _wrong_pin(
    stub: cosigner_pb2_grpc.CosignerServiceAsyncStub,
    keystore: Keystore,
    verifier: bytes,
    reason: str,
) -> None:
    call = stub.Sign()
    await prove(call, keystore, verifier)
    await expect_status(call, Code.PERMISSION_DENIED, reason)


async def test_wrong_pins_lock_the_key_until_an_admin_unlocks_it(
    deployment: Deployment, keystore: Keystore
) -> None:
    wrong = verifier_for(keystore, OTHER_PIN)
    async with deployment.public_channel("cosigner") as channel:
        stub = cosigner_stub(channel)
        for attempt in range(1, MAX_PIN_ATTEMPTS):
            await _wrong_pin(stub, keystore, wrong, "WRONG_PIN")
            described = await get_key(deployment, keystore.key_id)
            assert (described.failed_pin_attempts, described.locked) == (attempt, False)
        await _wrong_pin(stub, keystore, wrong, "KEY_LOCKED")
        described = await get_key(deployment, keystore.key_id)
        assert (described.failed_pin_attempts, described.locked) == (MAX_PIN_ATTEMPTS, True)

        # Locked: the right PIN is refused too, before any challenge, and counts nothing.
        call = stub.Sign()
        await send(call, pb.SignRequest(open=pb.SignOpen(scheme=SCHEME, key_id=keystore.key_id)))
        await expect_status(call, Code.PERMISSION_DENIED, "KEY_LOCKED")
        with pytest.raises(ClientError) as info:
            async with sdk.SigningSession(channel, keystore, PIN):
                pass
        assert info.value.reason == "KEY_LOCKED"
        described = await get_key(deployment, keystore.key_id)
        assert (described.failed_pin_attempts, described.locked) == (MAX_PIN_ATTEMPTS, True)

        await _unlock(deployment, keystore.key_id)
        described = await get_key(deployment, keystore.key_id)
        assert (described.failed_pin_attempts, described.locked) == (0, False)
        async with sdk.SigningSession(channel, keystore, PIN) as session:
            verify_signature(keystore, b"unlocked", await session.sign(b"unlocked"))
            assert await session.close() == 1


async def test_right_pin_resets_the_failure_count(
    deployment: Deployment, keystore: Keystore
) -> None:
    wrong, right = verifier_for(keystore, OTHER_PIN), verifier_for(keystore)
    async with deployment.public_channel("cosigner") as channel:
        stub = cosigner_stub(channel)
        for _ in range(MAX_PIN_ATTEMPTS - 1):
            await _wrong_pin(stub, keystore, wrong, "WRONG_PIN")
        call = stub.Sign()
        await until_ready(call, keystore, right)
        assert await close_session(call) == 0
        assert (await get_key(deployment, keystore.key_id)).failed_pin_attempts == 0
        # A fresh run of failures: four more wrong PINs still do not lock.
        for _ in range(MAX_PIN_ATTEMPTS - 1):
            await _wrong_pin(stub, keystore, wrong, "WRONG_PIN")
        described = await get_key(deployment, keystore.key_id)
        assert (described.failed_pin_attempts, described.locked) == (MAX_PIN_ATTEMPTS - 1, False)


async def test_internal_rpcs_need_the_right_identity(
    deployment: Deployment, keystore: Keystore
) -> None:
    key_id = keystore.key_id
    async with deployment.public_channel("cosigner") as channel:
        stub = cosigner_stub(channel)
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
                cosigner_stub(channel).UnlockKey(pb.UnlockKeyRequest(key_id=key_id)),
                Code.PERMISSION_DENIED,
                "CALLER_NOT_AUTHORISED",
            )
    async with deployment.channel("cosigner", "cosigner") as channel:
        await _expect_unary(
            cosigner_stub(channel).GetKey(pb.GetKeyRequest(key_id=key_id)),
            Code.PERMISSION_DENIED,
            "CALLER_NOT_AUTHORISED",
        )
    async with deployment.channel("cosigner", "gateway") as channel:
        described = await cosigner_stub(channel).GetKey(pb.GetKeyRequest(key_id=key_id))
    assert described.user_id == keystore.user_id


async def _attempt(
    stub: cosigner_pb2_grpc.CosignerServiceAsyncStub, keystore: Keystore, verifier: bytes
) -> grpc.aio.AioRpcError | None:
    """One session's PIN proof; the refusal, or None when the session opened."""
    call = stub.Sign()
    try:
        await prove(call, keystore, verifier)
        response = await call.read()
    except grpc.aio.AioRpcError as exc:
        return exc
    call.cancel()
    assert isinstance(response, pb.SignResponse)
    assert response.WhichOneof("step") == "ready"
    return None


async def test_a_flood_of_sessions_checks_at_most_the_allowed_pin_proofs(
    deployment: Deployment, keystore: Keystore
) -> None:
    """A stolen phone opens 300 sessions at once, each with another wrong PIN: the attempts are
    counted before the proofs are checked, one proof per key at a time, so at most
    MAX_PIN_ATTEMPTS proofs are checked and every other session meets the lock."""
    wrong = verifier_for(keystore, OTHER_PIN)
    async with deployment.public_channel("cosigner") as channel:
        stub = cosigner_stub(channel)
        results = await asyncio.gather(*(_attempt(stub, keystore, wrong) for _ in range(300)))
    assert all(r is not None for r in results)
    reasons = Counter(reason_of(r) for r in results if r is not None)
    assert reasons == {"WRONG_PIN": MAX_PIN_ATTEMPTS - 1, "KEY_LOCKED": 300 - MAX_PIN_ATTEMPTS + 1}
    left = sorted(
        error_info(r).metadata["attempts_left"]
        for r in results
        if r is not None and reason_of(r) == "WRONG_PIN"
    )
    assert left == [str(n) for n in range(1, MAX_PIN_ATTEMPTS)]
    described = await get_key(deployment, keystore.key_id)
    assert (described.failed_pin_attempts, described.locked) == (MAX_PIN_ATTEMPTS, True)
    log = deployment.services["cosigner"].log.read_text()
    assert log.count(f'"msg": "wrong PIN", "key_id": "{keystore.key_id}"') == MAX_PIN_ATTEMPTS


async def test_once_locked_the_right_and_wrong_pins_get_identical_answers(
    deployment: Deployment, keystore: Keystore
) -> None:
    wrong, right = verifier_for(keystore, OTHER_PIN), verifier_for(keystore)
    async with deployment.public_channel("cosigner") as channel:
        stub = cosigner_stub(channel)
        for _ in range(MAX_PIN_ATTEMPTS):
            await _attempt(stub, keystore, wrong)
        refusals = []
        for verifier in (right, wrong, right):
            refusal = await _attempt(stub, keystore, verifier)
            assert refusal is not None
            refusals.append(refusal)
    answers = {(r.code(), r.details(), tuple(r.trailing_metadata() or ())) for r in refusals}
    assert len(answers) == 1
    assert reason_of(refusals[0]) == "KEY_LOCKED"
    assert error_info(refusals[0]).metadata["attempts_left"] == "0"


async def test_the_failure_count_survives_a_restart(
    deployment: Deployment, keystore: Keystore
) -> None:
    wrong = verifier_for(keystore, OTHER_PIN)
    async with deployment.public_channel("cosigner") as channel:
        stub = cosigner_stub(channel)
        for _ in range(2):
            await _wrong_pin(stub, keystore, wrong, "WRONG_PIN")
    deployment.stop("cosigner")
    deployment.start("cosigner")
    assert (await get_key(deployment, keystore.key_id)).failed_pin_attempts == 2
    async with deployment.public_channel("cosigner") as channel:
        stub = cosigner_stub(channel)
        for _ in range(MAX_PIN_ATTEMPTS - 3):
            await _wrong_pin(stub, keystore, wrong, "WRONG_PIN")
        await _wrong_pin(stub, keystore, wrong, "KEY_LOCKED")
