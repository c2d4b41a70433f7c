"""The check next to the key: direct calls to the HSM proxy for an organisation-key operation
without a valid co-signed record in the witnessed log are refused (a compromised gateway cannot
use an organisation key on its own)."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import hashlib
import time
from collections.abc import Iterator

import grpc
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, utils

from mobilesign import domains, pkix, records
from mobilesign.rpc.status import reason_of
from mobilesign.testing import Deployment
from mobilesign.v1 import hsm_pb2, hsm_pb2_grpc
from tests.integration.authorisations import Authority

pytestmark = pytest.mark.integration
DIGEST = hashlib.sha256(b"contract").digest()
ECDSA = hsm_pb2.SIGNATURE_MECHANISM_ECDSA_SHA256
SIGN = records.Operation.SIGN_ECDSA_SHA256


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """An HSM proxy alone, called as the gateway would be."""
    deployment = Deployment(tmp_path_factory.mktemp("check"))
    deployment.start("hsm-proxy")
    yield deployment
    deployment.stop_all()


async def _organisation_key(
    stub: hsm_pb2_grpc.HsmServiceAsyncStub, label: str, algorithm: hsm_pb2.KeyAlgorithm.ValueType
) -> hsm_pb2.KeyInfo:
    reply = await stub.GenerateKeyPair(
        hsm_pb2.GenerateKeyPairRequest(
            label=label, purpose=hsm_pb2.KEY_PURPOSE_ORGANISATION, algorithm=algorithm
        )
    )
    return reply.key


def _sign(
    key: hsm_pb2.KeyInfo, authorisation: hsm_pb2.OrganisationKeyAuthorisation | None
) -> hsm_pb2.SignDigestRequest:
    return hsm_pb2.SignDigestRequest(
        key_id=key.key_id, mechanism=ECDSA, digest=DIGEST, authorisation=authorisation
    )


async def _refused(call: object, reason: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED, info.value.details()
    assert reason_of(info.value) == reason


async def test_a_valid_authorisation_is_needed_and_good_once(deployment: Deployment) -> None:
    async with (
        deployment.channel("hsm-proxy", "gateway") as channel,
        deployment.channel("hsm-proxy", "cosigner") as cosigner_channel,
    ):
        stub = hsm_pb2_grpc.HsmServiceStub(channel)
        cosigner = hsm_pb2_grpc.HsmServiceStub(cosigner_channel)
        key = await _organisation_key(stub, "checked", hsm_pb2.KEY_ALGORITHM_EC_P256)
        other = await _organisation_key(stub, "checked-other", hsm_pb2.KEY_ALGORITHM_EC_P256)
        authority = await Authority.create(stub, cosigner)
        record = authority.record(key.key_id, SIGN, DIGEST)

        await _refused(stub.SignDigest(_sign(key, None)), "AUTHORISATION_REQUIRED")
        # A record for another key, operation or digest.
        for changed, reason in (
            (authority.record(other.key_id, SIGN, DIGEST), "RECORD_KEY_MISMATCH"),
            (
                authority.record(key.key_id, records.Operation.SIGN_RSA_PSS_SHA256, DIGEST),
                "RECORD_OPERATION_MISMATCH",
            ),
            (authority.record(key.key_id, SIGN, b"another document"), "RECORD_INPUT_MISMATCH"),
            (
                dataclasses.replace(record, time_ms=int((time.time() - 3600) * 1000)),
                "RECORD_STALE",
            ),
            (dataclasses.replace(record, user_id="mallory"), "RECORD_CERTIFICATE_MISMATCH"),
        ):
            await _refused(stub.SignDigest(_sign(key, await authority.authorise(changed))), reason)
        # The user's signature made by another key.
        forged_user = await authority.authorise(
            record, user_key=ed25519.Ed25519PrivateKey.generate()
        )
        await _refused(stub.SignDigest(_sign(key, forged_user)), "USER_SIGNATURE_INVALID")
        good = await authority.authorise(record)
        # No record in the log, no service: not yet witnessed, not at that index, a tree size
        # never signed, a damaged or oversized inclusion proof.
        unwitnessed = await authority.authorise(
            authority.record(key.key_id, SIGN, DIGEST), witnessed=False
        )
        await _refused(stub.SignDigest(_sign(key, unwitnessed)), "RECORD_NOT_WITNESSED")
        for change, reason in (
            (lambda a: setattr(a, "entry_index", a.entry_index + 1), "RECORD_NOT_IN_LOG"),
            (lambda a: setattr(a, "tree_size", a.tree_size + 1000), "RECORD_NOT_WITNESSED"),
            (lambda a: a.inclusion_proof.pop(), "RECORD_NOT_IN_LOG"),
            (lambda a: a.inclusion_proof.extend([bytes(32)] * 65), "RECORD_MALFORMED"),
        ):
            broken = hsm_pb2.OrganisationKeyAuthorisation()
            broken.CopyFrom(good)
            change(broken)
            await _refused(stub.SignDigest(_sign(key, broken)), reason)
        # Malformed record bytes.
        malformed = hsm_pb2.OrganisationKeyAuthorisation()
        malformed.CopyFrom(good)
        malformed.record = good.record[:-1]
        await _refused(stub.SignDigest(_sign(key, malformed)), "RECORD_MALFORMED")
        # Nothing above used the record: the valid authorisation works, once.
        reply = await stub.SignDigest(_sign(key, good))
        public = serialization.load_der_public_key(key.public_key_spki)
        assert isinstance(public, ec.EllipticCurvePublicKey)
        public.verify(reply.signature, DIGEST, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
        await _refused(stub.SignDigest(_sign(key, good)), "AUTHORISATION_REPLAYED")


async def test_a_certificate_from_outside_the_token_is_refused(deployment: Deployment) -> None:
    async with (
        deployment.channel("hsm-proxy", "gateway") as channel,
        deployment.channel("hsm-proxy", "cosigner") as cosigner_channel,
    ):
        stub = hsm_pb2_grpc.HsmServiceStub(channel)
        cosigner = hsm_pb2_grpc.HsmServiceStub(cosigner_channel)
        key = await _organisation_key(stub, "foreign-ca", hsm_pb2.KEY_ALGORITHM_EC_P256)
        authority = await Authority.create(stub, cosigner)
        # The same user and key, certified by a CA key that is not in the token.
        foreign_ca = ec.generate_private_key(ec.SECP256R1())

        class SoftwareSigner:
            algorithm = pkix.SignatureAlgorithm.ECDSA_SHA256

            async def sign(self, data: bytes) -> bytes:
                return foreign_ca.sign(data, ec.ECDSA(hashes.SHA256()))

        now = datetime.datetime.now(datetime.UTC)
        certificate = await pkix.build_certificate(
            signer=SoftwareSigner(),
            serial=pkix.random_serial(),
            issuer=pkix.name({"common_name": "test CA"}),
            subject=pkix.name({"common_name": authority.user_id}),
            subject_public_key_info=authority.user_key.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
            not_before=now - datetime.timedelta(minutes=1),
            not_after=now + datetime.timedelta(days=1),
            extensions=[
                pkix.basic_constraints(ca=False),
                pkix.key_usage("digital_signature", "non_repudiation"),
            ],
        )
        outsider = dataclasses.replace(authority, user_certificate=certificate)
        authorisation = await outsider.authorise(outsider.record(key.key_id, SIGN, DIGEST))
        await _refused(stub.SignDigest(_sign(key, authorisation)), "USER_CERTIFICATE_UNTRUSTED")


async def test_decrypt_needs_an_authorisation_and_admin_gets_no_shortcut(
    deployment: Deployment,
) -> None:
    async with (
        deployment.channel("hsm-proxy", "admin") as channel,
        deployment.channel("hsm-proxy", "cosigner") as cosigner_channel,
    ):
        stub = hsm_pb2_grpc.HsmServiceStub(channel)
        cosigner = hsm_pb2_grpc.HsmServiceStub(cosigner_channel)
        ec_key = await _organisation_key(stub, "admin-ec", hsm_pb2.KEY_ALGORITHM_EC_P256)
        rsa_key = await _organisation_key(stub, "admin-rsa", hsm_pb2.KEY_ALGORITHM_RSA_2048)
        await _refused(stub.SignDigest(_sign(ec_key, None)), "AUTHORISATION_REQUIRED")
        await _refused(
            stub.Decrypt(
                hsm_pb2.DecryptRequest(
                    key_id=rsa_key.key_id,
                    mechanism=hsm_pb2.DECRYPT_MECHANISM_RSA_OAEP_SHA256,
                    ciphertext=bytes(256),
                )
            ),
            "AUTHORISATION_REQUIRED",
        )
        # An authorisation for a signature does not open a decryption (the administrator cannot
        # have checkpoints signed, so the record is not witnessed: it is refused before that).
        authority = await Authority.create(stub, cosigner)
        authorisation = await authority.authorise(
            authority.record(rsa_key.key_id, records.Operation.SIGN_RSA_PSS_SHA256, bytes(256)),
            witnessed=False,
        )
        await _refused(
            stub.Decrypt(
                hsm_pb2.DecryptRequest(
                    key_id=rsa_key.key_id,
                    mechanism=hsm_pb2.DECRYPT_MECHANISM_RSA_OAEP_SHA256,
                    ciphertext=bytes(256),
                    authorisation=authorisation,
                )
            ),
            "RECORD_OPERATION_MISMATCH",
        )
        # Organisation keys never sign with PKCS#1 v1.5 (no record operation names it).
        rsa_pkcs1 = hsm_pb2.SignDigestRequest(
            key_id=rsa_key.key_id,
            mechanism=hsm_pb2.SIGNATURE_MECHANISM_RSA_PKCS1V15_SHA256,
            digest=DIGEST,
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.SignDigest(rsa_pkcs1)
        assert reason_of(info.value) == "MECHANISM_NOT_ALLOWED"


async def test_a_key_the_cosigner_does_not_vouch_for_is_refused(deployment: Deployment) -> None:
    """A compromised gateway can have the CA certify a key of its own and sign the
    authorisation itself; without the cosigner's attestation the key is still not used."""
    async with (
        deployment.channel("hsm-proxy", "gateway") as channel,
        deployment.channel("hsm-proxy", "cosigner") as cosigner_channel,
    ):
        stub = hsm_pb2_grpc.HsmServiceStub(channel)
        cosigner = hsm_pb2_grpc.HsmServiceStub(cosigner_channel)
        key = await _organisation_key(stub, "attested", hsm_pb2.KEY_ALGORITHM_EC_P256)
        authority = await Authority.create(stub, cosigner)
        someone_else = await Authority.create(stub, cosigner)
        record = authority.record(key.key_id, SIGN, DIGEST)
        for attestation in (
            b"",
            someone_else.attestation,  # the cosigner vouches for another key
            authority.attestation[:-1] + bytes([authority.attestation[-1] ^ 1]),
        ):
            forged = dataclasses.replace(authority, attestation=attestation)
            await _refused(
                stub.SignDigest(_sign(key, await forged.authorise(record))),
                "COSIGNER_ATTESTATION_INVALID",
            )
        # A blob the gateway sealed itself is not the cosigner's: the gateway may not even seal.
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Seal(
                hsm_pb2.SealRequest(
                    plaintext=records.KeyAttestation(
                        record.user_key_id, record.user_id, "0" * 32
                    ).encode(),
                    associated_data=records.KEY_ATTESTATION_AAD,
                )
            )
        assert reason_of(info.value) == "CALLER_NOT_AUTHORISED"
        # With the cosigner's attestation of this very key, the record is honoured.
        await stub.SignDigest(_sign(key, await authority.authorise(record)))


async def test_an_attestation_that_names_another_user_is_refused(deployment: Deployment) -> None:
    """The gateway's CA can certify the cosigner's key of bob as "alice"; the cosigner's
    attestation says whose key it is, and the record's user must be that one."""
    async with (
        deployment.channel("hsm-proxy", "gateway") as channel,
        deployment.channel("hsm-proxy", "cosigner") as cosigner_channel,
    ):
        stub = hsm_pb2_grpc.HsmServiceStub(channel)
        cosigner = hsm_pb2_grpc.HsmServiceStub(cosigner_channel)
        key = await _organisation_key(stub, "whose", hsm_pb2.KEY_ALGORITHM_EC_P256)
        misattributed = await Authority.create(stub, cosigner, user_id="alice", attested_user="bob")
        record = misattributed.record(key.key_id, SIGN, DIGEST)
        await _refused(
            stub.SignDigest(_sign(key, await misattributed.authorise(record))),
            "ATTESTATION_USER_MISMATCH",
        )
        # An attestation in the old form (the key alone, no user, no ticket) is not one either.
        bare = await cosigner.Seal(
            hsm_pb2.SealRequest(
                plaintext=domains.ENROLLED_KEY + bytes.fromhex(record.user_key_id),
                associated_data=records.KEY_ATTESTATION_AAD,
            )
        )
        unbound = dataclasses.replace(misattributed, attestation=bare.sealed)
        await _refused(
            stub.SignDigest(_sign(key, await unbound.authorise(record))),
            "COSIGNER_ATTESTATION_INVALID",
        )


async def test_a_record_refused_for_a_full_queue_can_be_presented_again(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The token never acted on it, so the record is not used up: a retry succeeds."""
    deployment = Deployment(
        tmp_path_factory.mktemp("busy"),
        extra_env={"MOBILESIGN_HSM_PROXY_WORKERS": "1", "MOBILESIGN_HSM_PROXY_QUEUE_SIZE": "0"},
    )
    deployment.start("hsm-proxy")
    try:
        async with (
            deployment.channel("hsm-proxy", "gateway") as channel,
            deployment.channel("hsm-proxy", "cosigner") as cosigner_channel,
        ):
            stub = hsm_pb2_grpc.HsmServiceStub(channel)
            key = await _organisation_key(stub, "busy", hsm_pb2.KEY_ALGORITHM_RSA_3072)
            authority = await Authority.create(stub, hsm_pb2_grpc.HsmServiceStub(cosigner_channel))
            pss = records.Operation.SIGN_RSA_PSS_SHA256
            requests = [
                hsm_pb2.SignDigestRequest(
                    key_id=key.key_id,
                    mechanism=hsm_pb2.SIGNATURE_MECHANISM_RSA_PSS_SHA256,
                    digest=DIGEST,
                    authorisation=await authority.authorise(
                        authority.record(key.key_id, pss, DIGEST)
                    ),
                )
                for _ in range(12)
            ]
            results = await asyncio.gather(
                *(stub.SignDigest(r) for r in requests), return_exceptions=True
            )
            busy = [
                request
                for request, result in zip(requests, results, strict=True)
                if isinstance(result, grpc.aio.AioRpcError)
            ]
            assert busy
            for result in results:
                if isinstance(result, grpc.aio.AioRpcError):
                    assert reason_of(result) == "HSM_QUEUE_FULL"
            for request in busy:
                await stub.SignDigest(request)  # the retry is honoured
                await _refused(stub.SignDigest(request), "AUTHORISATION_REPLAYED")
    finally:
        deployment.stop_all()
