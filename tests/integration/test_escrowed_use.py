"""Using organisation keys from phones (S3 to S5) with real processes: the full flow, the
refusals (nothing executed or counted), idempotency, and concurrent uses."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import json
import secrets
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

import client
from mobilesign import deviceauth, records
from mobilesign.rpc.status import reason_of
from mobilesign.testing import Deployment
from mobilesign.testing.deployment import ROOT
from mobilesign.v1 import gateway_pb2, ra_pb2
from tests.integration import escrow

pytestmark = pytest.mark.integration
SIGN = gateway_pb2.OPERATION_SIGN_DIGEST
DECRYPT = gateway_pb2.OPERATION_DECRYPT
DIGEST = hashlib.sha256(b"purchase order 2026-117").digest()


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """All four services."""
    deployment = Deployment(tmp_path_factory.mktemp("escrow"))
    deployment.start_all()
    yield deployment
    deployment.stop_all()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def organisation(deployment: Deployment) -> escrow.Organisation:
    """An organisation with an EC and an RSA key."""
    return await escrow.organisation(deployment)


@pytest_asyncio.fixture
async def phone(
    deployment: Deployment, organisation: escrow.Organisation
) -> AsyncIterator[escrow.Phone]:
    """A fresh enrolled, certified, logged-in phone."""
    phone = await escrow.phone(deployment, organisation, "user")
    yield phone
    await phone.close()


async def _use(
    phone: escrow.Phone,
    organisation: escrow.Organisation,
    grant_id: str,
    operation: gateway_pb2.Operation.ValueType = SIGN,
    data: bytes = DIGEST,
) -> client.Use:
    return await phone.gateway.use_key(
        phone.signing,
        grant_id=grant_id,
        operation=operation,
        data=data,
        purpose="tests",
        trust=organisation.trust,
    )


async def _refused(
    deployment: Deployment,
    phone: escrow.Phone,
    organisation: escrow.Organisation,
    grant_id: str,
    reason: str,
    operation: gateway_pb2.Operation.ValueType = SIGN,
    data: bytes = DIGEST,
) -> None:
    """The use is refused with ``reason``, and nothing was logged or counted."""
    size = await escrow.log_size(deployment)
    before = await escrow.grant_state(deployment, grant_id)
    with pytest.raises(client.ClientError) as info:
        await _use(phone, organisation, grant_id, operation, data)
    assert info.value.reason == reason, info.value
    assert await escrow.log_size(deployment) == size
    if before is not None:
        after = await escrow.grant_state(deployment, grant_id)
        assert after is not None
        assert (after.used_total, after.used_today) == (before.used_total, before.used_today)


async def _cli(command: list[str]) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *command, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await process.communicate()
    return await process.wait(), output.decode()


def _flip(b64: str) -> str:
    value = bytearray(base64.b64decode(b64))
    value[len(value) // 2] ^= 0x01
    return base64.b64encode(bytes(value)).decode()


def _tampered(document: dict[str, object], field: str) -> dict[str, object]:
    """The receipt document with one field changed."""
    changed = dict(document)
    value = document[field]
    if field == "inclusion_proof":
        assert isinstance(value, list)
        changed[field] = [_flip(value[0]), *value[1:]] if value else [_flip("A" * 44)]
    elif field == "checkpoint":
        assert isinstance(value, str)
        lines = value.split("\n")
        lines[2] = _flip(lines[2])  # the root hash
        changed[field] = "\n".join(lines)
    elif field == "entry_index":
        assert isinstance(value, int)
        changed[field] = value + 1
    else:
        assert isinstance(value, str)
        changed[field] = _flip(value)
    return changed


async def test_full_flow_sign_and_decrypt_with_receipts(
    deployment: Deployment,
    organisation: escrow.Organisation,
    phone: escrow.Phone,
    tmp_path: Path,
) -> None:
    sign = await escrow.grant(deployment, phone.user_id, organisation.seal, [SIGN])
    decrypt = await escrow.grant(deployment, phone.user_id, organisation.encryption, [DECRYPT])
    # Sign a digest with the EC organisation key.
    signed = await _use(phone, organisation, sign.grant_id)
    seal_key = x509.load_der_x509_certificate(organisation.seal.certificate).public_key()
    assert isinstance(seal_key, ec.EllipticCurvePublicKey)
    seal_key.verify(signed.result, DIGEST, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
    assert signed.record.user_id == phone.user_id
    assert signed.record.certificate_serial == phone.certificate_serial
    assert signed.record.organisation_key_id == organisation.seal.key_id
    assert signed.record.operation is records.Operation.SIGN_ECDSA_SHA256
    first_checkpoint = signed.receipt.checkpoint
    # Decrypt a message encrypted to the RSA organisation certificate.
    rsa_key = x509.load_der_x509_certificate(organisation.encryption.certificate).public_key()
    assert isinstance(rsa_key, rsa.RSAPublicKey)
    secret = b"tender envelope 7"
    ciphertext = rsa_key.encrypt(
        secret, padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None)
    )
    decrypted = await _use(phone, organisation, decrypt.grant_id, DECRYPT, ciphertext)
    assert decrypted.result == secret
    assert decrypted.record.operation is records.Operation.DECRYPT_RSA_OAEP_SHA256
    # Both receipts verify offline, in this process and with the CLI.
    trust = organisation.trust
    for use in (signed, decrypted):
        verified = client.verify_receipt(
            use.receipt, trust.ca_certificate, trust.log_public_key, trust.log_origin
        )
        assert verified.record == use.record
    receipt_file = tmp_path / "receipt.json"
    receipt_file.write_text(client.receipt_to_json(signed.receipt, trust.log_origin))
    ca_file = tmp_path / "ca.der"
    ca_file.write_bytes(trust.ca_certificate)
    key_file = tmp_path / "log.der"
    key_file.write_bytes(trust.log_public_key)
    command = [
        sys.executable,
        "-m",
        "client",
        "verify-receipt",
        "--receipt",
        str(receipt_file),
        "--ca",
        str(ca_file),
        "--log-key",
        str(key_file),
    ]
    status, output = await _cli(command)
    assert status == 0, output
    assert signed.record.record_id in output
    # Any tampered field makes the verifier say no (exit status 1).
    document = json.loads(receipt_file.read_text())
    for field in (
        "record",
        "user_signature",
        "user_certificate",
        "entry",
        "inclusion_proof",
        "checkpoint",
        "entry_index",
    ):
        receipt_file.write_text(json.dumps(_tampered(document, field)))
        status, output = await _cli(command)
        assert status == 1, (field, output)
    # The log only grew between the first receipt and now.
    async with deployment.public_channel("gateway") as channel:
        gateway = escrow.public(channel)
        latest = (await gateway.GetCheckpoint(gateway_pb2.GetCheckpointRequest())).checkpoint
        old_size = int(first_checkpoint.split(b"\n")[1])
        new_size = int(latest.split(b"\n")[1])
        proof = list(
            (
                await gateway.GetConsistencyProof(
                    gateway_pb2.GetConsistencyProofRequest(old_size=old_size, new_size=new_size)
                )
            ).proof
        )
    client.verify_consistency(
        first_checkpoint, latest, proof, trust.log_public_key, trust.log_origin
    )
    with pytest.raises(client.VerificationFailed):
        client.verify_consistency(
            first_checkpoint,
            latest,
            [*proof[::-1], bytes(32)],
            trust.log_public_key,
            trust.log_origin,
        )
    mine = {g.grant_id: g for g in await phone.gateway.grants()}
    assert (mine[sign.grant_id].used_total, mine[sign.grant_id].used_today) == (1, 1)
    assert (mine[decrypt.grant_id].used_total, mine[decrypt.grant_id].used_today) == (1, 1)


async def test_refusals_execute_and_count_nothing(
    deployment: Deployment, organisation: escrow.Organisation, phone: escrow.Phone
) -> None:
    now = int(time.time())
    other = await escrow.phone(deployment, organisation, "other")
    try:
        others_grant = await escrow.grant(deployment, other.user_id, organisation.seal, [SIGN])
        # No grant at all, or someone else's grant.
        await _refused(deployment, phone, organisation, "00" * 16, "NO_GRANT")
        await _refused(deployment, phone, organisation, others_grant.grant_id, "NO_GRANT")
    finally:
        await other.close()
    expired = await escrow.grant(
        deployment,
        phone.user_id,
        organisation.seal,
        [SIGN],
        not_before_unix=now - 7200,
        not_after_unix=now - 3600,
    )
    await _refused(deployment, phone, organisation, expired.grant_id, "GRANT_EXPIRED")
    future = await escrow.grant(
        deployment,
        phone.user_id,
        organisation.seal,
        [SIGN],
        not_before_unix=now + 3600,
        not_after_unix=now + 7200,
    )
    await _refused(deployment, phone, organisation, future.grant_id, "GRANT_NOT_YET_VALID")
    sign_only = await escrow.grant(deployment, phone.user_id, organisation.encryption, [SIGN])
    ciphertext = bytes(256)
    await _refused(
        deployment,
        phone,
        organisation,
        sign_only.grant_id,
        "OPERATION_NOT_GRANTED",
        DECRYPT,
        ciphertext,
    )
    await _refused(
        deployment, phone, organisation, sign_only.grant_id, "INPUT_INVALID", SIGN, b"short"
    )
    # Quotas: total, then daily.
    total = await escrow.grant(
        deployment, phone.user_id, organisation.seal, [SIGN], quota_total=2, quota_daily=10
    )
    for _ in range(2):
        await _use(phone, organisation, total.grant_id)
    await _refused(deployment, phone, organisation, total.grant_id, "QUOTA_EXCEEDED")
    daily = await escrow.grant(
        deployment, phone.user_id, organisation.seal, [SIGN], quota_total=10, quota_daily=1
    )
    await _use(phone, organisation, daily.grant_id)
    await _refused(deployment, phone, organisation, daily.grant_id, "QUOTA_EXCEEDED")
    state = await escrow.grant_state(deployment, daily.grant_id)
    assert state is not None
    assert (state.used_total, state.used_today) == (1, 1)
    # Revoked before use.
    revoked = await escrow.grant(deployment, phone.user_id, organisation.seal, [SIGN])
    async with deployment.channel("ra") as channel:
        await escrow.admin(channel).RevokeGrant(
            ra_pb2.RevokeGrantRequest(grant_id=revoked.grant_id)
        )
        # Revoking again is harmless (it repeats the push to the HSM proxy); a grant the RA
        # never issued is not found.
        await escrow.admin(channel).RevokeGrant(
            ra_pb2.RevokeGrantRequest(grant_id=revoked.grant_id)
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await escrow.admin(channel).RevokeGrant(
                ra_pb2.RevokeGrantRequest(grant_id=secrets.token_hex(16))
            )
        assert (info.value.code(), reason_of(info.value)) == (
            grpc.StatusCode.NOT_FOUND,
            "GRANT_NOT_FOUND",
        )
    state = await escrow.grant_state(deployment, revoked.grant_id)
    assert state is not None
    assert state.revoked
    assert (state.used_total, state.used_today) == (0, 0)
    await _refused(deployment, phone, organisation, revoked.grant_id, "GRANT_REVOKED")


async def _prepare(
    phone: escrow.Phone, grant_id: str, data: bytes = DIGEST
) -> gateway_pb2.PrepareOperationResponse:
    stub = phone.gateway._stub
    return await stub.PrepareOperation(
        gateway_pb2.PrepareOperationRequest(grant_id=grant_id, operation=SIGN, input=data),
        metadata=phone.gateway._metadata,
    )


async def _execute(
    phone: escrow.Phone,
    prepared: gateway_pb2.PrepareOperationResponse,
    signature: bytes,
    data: bytes = DIGEST,
) -> gateway_pb2.ExecuteOperationResponse:
    stub = phone.gateway._stub
    return await stub.ExecuteOperation(
        gateway_pb2.ExecuteOperationRequest(
            record_id=prepared.record_id,
            record=prepared.record,
            user_signature=signature,
            input=data,
        ),
        metadata=phone.gateway._metadata,
    )


def _presenting(
    prepared: gateway_pb2.PrepareOperationResponse, *, record_id: str = "", record: bytes = b""
) -> gateway_pb2.PrepareOperationResponse:
    """What a phone sends back instead of what the gateway prepared."""
    return gateway_pb2.PrepareOperationResponse(
        record_id=record_id or prepared.record_id, record=record
    )


async def _used(deployment: Deployment, grant_id: str) -> int:
    state = await escrow.grant_state(deployment, grant_id)
    assert state is not None
    return state.used_total


async def _expect(call: object, code: grpc.StatusCode, reason: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    assert info.value.code() == code, info.value.details()
    assert reason_of(info.value) == reason


async def test_execute_refusals_and_idempotency(
    deployment: Deployment, organisation: escrow.Organisation, phone: escrow.Phone
) -> None:
    grant = await escrow.grant(deployment, phone.user_id, organisation.seal, [SIGN])
    prepared = await _prepare(phone, grant.grant_id)
    size = await escrow.log_size(deployment)
    # A signature that is not the user's, other input, unknown or malformed record ids.
    await _expect(
        _execute(phone, prepared, bytes(64)),
        grpc.StatusCode.PERMISSION_DENIED,
        "USER_SIGNATURE_INVALID",
    )
    signature = await phone.signing.sign(prepared.record)
    await _expect(
        _execute(phone, prepared, signature, hashlib.sha256(b"other").digest()),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INPUT_MISMATCH",
    )
    await _expect(
        _execute(
            phone, _presenting(prepared, record_id="ab" * 16, record=prepared.record), signature
        ),
        grpc.StatusCode.NOT_FOUND,
        "RECORD_NOT_FOUND",
    )
    await _expect(
        _execute(phone, _presenting(prepared, record_id="not-a-record"), signature),
        grpc.StatusCode.INVALID_ARGUMENT,
        "MALFORMED_RECORD_ID",
    )
    # The gateway stored nothing at prepare: it knows its records by their nonce. Without the
    # record, with a record the gateway did not make (the user's own purpose, co-signed), or
    # with bytes that are no record, there is nothing to execute.
    forged = records.decode_record(prepared.record)
    forged = dataclasses.replace(forged, purpose="what the phone would like")
    forged_signature = await phone.signing.sign(forged.encode())
    for presented, user_signature in (
        (b"", signature),
        (forged.encode(), forged_signature),
        (b"MSR1 not a record", signature),
    ):
        await _expect(
            _execute(phone, _presenting(prepared, record=presented), user_signature),
            grpc.StatusCode.NOT_FOUND,
            "RECORD_NOT_FOUND",
        )
    # Another user cannot execute (or see) my record.
    other = await escrow.phone(deployment, organisation, "intruder")
    try:
        await _expect(
            _execute(other, prepared, signature),
            grpc.StatusCode.NOT_FOUND,
            "RECORD_NOT_FOUND",
        )
    finally:
        await other.close()
    assert await escrow.log_size(deployment) == size
    assert await _used(deployment, grant.grant_id) == 0
    # Revoked between prepare and execute.
    async with deployment.channel("ra") as channel:
        await escrow.admin(channel).RevokeGrant(ra_pb2.RevokeGrantRequest(grant_id=grant.grant_id))
    await _expect(
        _execute(phone, prepared, signature),
        grpc.StatusCode.PERMISSION_DENIED,
        "GRANT_REVOKED",
    )
    assert await escrow.log_size(deployment) == size
    # Idempotency: the same signing record executed twice gives the same result, once.
    grant = await escrow.grant(deployment, phone.user_id, organisation.seal, [SIGN])
    prepared = await _prepare(phone, grant.grant_id)
    signature = await phone.signing.sign(prepared.record)
    first = await _execute(phone, prepared, signature)
    size = await escrow.log_size(deployment)
    # Logged: the id alone names it now.
    again = await _execute(phone, _presenting(prepared), signature)
    assert again.result == first.result
    assert again.receipt.entry_index == first.receipt.entry_index
    assert await escrow.log_size(deployment) == size
    assert await _used(deployment, grant.grant_id) == 1
    # A decryption is not kept: executing it again is refused.
    decrypt = await escrow.grant(deployment, phone.user_id, organisation.encryption, [DECRYPT])
    rsa_key = x509.load_der_x509_certificate(organisation.encryption.certificate).public_key()
    assert isinstance(rsa_key, rsa.RSAPublicKey)
    ciphertext = rsa_key.encrypt(
        b"once", padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None)
    )
    stub = phone.gateway._stub
    prepared = await stub.PrepareOperation(
        gateway_pb2.PrepareOperationRequest(
            grant_id=decrypt.grant_id, operation=DECRYPT, input=ciphertext
        ),
        metadata=phone.gateway._metadata,
    )
    signature = await phone.signing.sign(prepared.record)
    assert (await _execute(phone, prepared, signature, ciphertext)).result == b"once"
    await _expect(
        _execute(phone, prepared, signature, ciphertext),
        grpc.StatusCode.FAILED_PRECONDITION,
        "RECORD_ALREADY_EXECUTED",
    )


async def test_sessions_need_the_device_and_a_valid_certificate(
    deployment: Deployment, organisation: escrow.Organisation, phone: escrow.Phone
) -> None:
    grant = await escrow.grant(deployment, phone.user_id, organisation.seal, [SIGN])
    async with deployment.public_channel("gateway") as channel:
        gateway = escrow.public(channel)
        request = gateway_pb2.PrepareOperationRequest(
            grant_id=grant.grant_id, operation=SIGN, input=DIGEST
        )
        cases: list[tuple[tuple[tuple[str, str], ...], str]] = [
            ((), "SESSION_REQUIRED"),
            ((("authorization", "x"),), "SESSION_REQUIRED"),
            ((("authorization", "Bearer nonsense"),), "SESSION_EXPIRED"),
        ]
        for metadata, reason in cases:
            await _expect(
                gateway.PrepareOperation(request, metadata=metadata),
                grpc.StatusCode.UNAUTHENTICATED,
                reason,
            )
        # A challenge answered by another device key (which does not use it up: a stranger
        # cannot spoil a login), then by the right one, then used twice.
        key_id = phone.keystore.key_id
        challenge = (
            await gateway.StartSession(gateway_pb2.StartSessionRequest(key_id=key_id))
        ).challenge
        intruder = ec.generate_private_key(ec.SECP256R1())
        transcript = deviceauth.gateway_session_transcript(bytes.fromhex(key_id), challenge)
        await _expect(
            gateway.FinishSession(
                gateway_pb2.FinishSessionRequest(
                    key_id=key_id,
                    challenge=challenge,
                    device_signature=deviceauth.sign(intruder, transcript),
                )
            ),
            grpc.StatusCode.UNAUTHENTICATED,
            "DEVICE_PROOF_INVALID",
        )
        answer = gateway_pb2.FinishSessionRequest(
            key_id=key_id,
            challenge=challenge,
            device_signature=deviceauth.sign(phone.keystore.device_key, transcript),
        )
        assert (await gateway.FinishSession(answer)).session_token
        await _expect(
            gateway.FinishSession(answer), grpc.StatusCode.UNAUTHENTICATED, "CHALLENGE_INVALID"
        )
        await _expect(
            gateway.StartSession(gateway_pb2.StartSessionRequest(key_id="zz")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "MALFORMED_KEY_ID",
        )
    # Revoking the user's certificate ends the existing session and refuses a new one.
    await _use(phone, organisation, grant.grant_id)
    async with deployment.channel("ra") as channel:
        await escrow.admin(channel).RevokeCertificate(
            ra_pb2.RevokeCertificateRequest(
                serial=phone.certificate_serial,
                reason=gateway_pb2.REVOCATION_REASON_KEY_COMPROMISE,
            )
        )
    size = await escrow.log_size(deployment)
    await _refused(deployment, phone, organisation, grant.grant_id, "CERTIFICATE_REVOKED")
    with pytest.raises(client.ClientError) as info:
        await phone.gateway.login()
    assert info.value.reason == "CERTIFICATE_REVOKED"
    # The phone itself no longer trusts its certificate either.
    with pytest.raises(client.ClientError) as info:
        await client.fetch_personal_certificate(
            phone.channels[1], phone.keystore, organisation.trust.ca_certificate
        )
    assert info.value.reason == "CERTIFICATE_REVOKED"
    assert await escrow.log_size(deployment) == size


async def test_fifty_concurrent_uses_log_one_record_each(
    deployment: Deployment, organisation: escrow.Organisation
) -> None:
    phones = [await escrow.phone(deployment, organisation, f"crowd{i}") for i in range(5)]
    try:
        grants = [
            await escrow.grant(deployment, p.user_id, organisation.seal, [SIGN]) for p in phones
        ]
        size = await escrow.log_size(deployment)

        async def uses(index: int) -> list[client.Use]:
            # One phone signs in turn (one signing session); phones run concurrently.
            return [
                await _use(
                    phones[index],
                    organisation,
                    grants[index].grant_id,
                    data=hashlib.sha256(f"{index}-{n}".encode()).digest(),
                )
                for n in range(10)
            ]

        done = [
            use for batch in await asyncio.gather(*(uses(i) for i in range(5))) for use in batch
        ]
        assert len(done) == 50
        async with deployment.public_channel("gateway") as channel:
            gateway = escrow.public(channel)
            entries = [
                records.decode_entry(
                    (await gateway.GetLogEntry(gateway_pb2.GetLogEntryRequest(entry_index=i))).entry
                )
                for i in range(size, size + 100)
            ]
        record_ids = [
            records.decode_record(e.record).record_id
            for e in entries
            if isinstance(e, records.RecordEntry)
        ]
        outcomes = [e for e in entries if isinstance(e, records.OutcomeEntry)]
        assert sorted(record_ids) == sorted(use.record.record_id for use in done)
        assert len(set(record_ids)) == 50
        assert sorted(o.record_id for o in outcomes) == sorted(record_ids)
        assert all(o.succeeded for o in outcomes)
        assert await escrow.log_size(deployment) == size + 100
        for grant in grants:
            state = await escrow.grant_state(deployment, grant.grant_id)
            assert state is not None
            assert (state.used_total, state.used_today) == (10, 10)
    finally:
        for p in phones:
            await p.close()
