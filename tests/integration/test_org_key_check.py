"""The check next to the key: direct calls to the HSM proxy for an organisation-key operation
without a valid co-signed record in the witnessed log, under a grant the RA signed, unrevoked and
within its quotas, are refused (a compromised gateway cannot use an organisation key on its own),
and each service may use only the keys of its own power."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import hashlib
import secrets
import time
from collections.abc import AsyncIterator
from typing import TypeAlias

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, utils

from mobilesign import domains, grants, pkix, records
from mobilesign.rpc.status import error_info, reason_of
from mobilesign.testing import Deployment
from mobilesign.v1 import gateway_pb2, hsm_pb2, hsm_pb2_grpc
from tests.integration.authorisations import Authority, SoftwareSigner

pytestmark = pytest.mark.integration
DIGEST = hashlib.sha256(b"contract").digest()
ECDSA = hsm_pb2.SIGNATURE_MECHANISM_ECDSA_SHA256
SIGN = records.Operation.SIGN_ECDSA_SHA256
Stub: TypeAlias = "hsm_pb2_grpc.HsmServiceAsyncStub"  # a name the stubs alone define


@dataclasses.dataclass
class Callers:
    """Stubs with each service's credentials, to the one HSM proxy."""

    ra: Stub
    gateway: Stub
    cosigner: Stub
    admin: Stub


@contextlib.asynccontextmanager
async def _callers(deployment: Deployment) -> AsyncIterator[Callers]:
    async with (
        deployment.channel("hsm-proxy", "ra") as ra,
        deployment.channel("hsm-proxy", "gateway") as gateway,
        deployment.channel("hsm-proxy", "cosigner") as cosigner,
        deployment.channel("hsm-proxy", "admin") as admin,
    ):
        yield Callers(*(hsm_pb2_grpc.HsmServiceStub(c) for c in (ra, gateway, cosigner, admin)))


async def _authority(callers: Callers, **options: str) -> Authority:
    return await Authority.create(callers.ra, callers.gateway, callers.cosigner, **options)


async def _key(
    ra: Stub,
    label: str,
    algorithm: hsm_pb2.KeyAlgorithm.ValueType = hsm_pb2.KEY_ALGORITHM_EC_P256,
    purpose: hsm_pb2.KeyPurpose.ValueType = hsm_pb2.KEY_PURPOSE_ORGANISATION,
) -> hsm_pb2.KeyInfo:
    reply = await ra.GenerateKeyPair(
        hsm_pb2.GenerateKeyPairRequest(label=label, purpose=purpose, algorithm=algorithm)
    )
    return reply.key


def _sign(
    key: hsm_pb2.KeyInfo, authorisation: hsm_pb2.OrganisationKeyAuthorisation | None
) -> hsm_pb2.SignDigestRequest:
    return hsm_pb2.SignDigestRequest(
        key_id=key.key_id, mechanism=ECDSA, digest=DIGEST, authorisation=authorisation
    )


async def _refused(
    call: object, reason: str, code: grpc.StatusCode = grpc.StatusCode.PERMISSION_DENIED
) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    assert info.value.code() == code, info.value.details()
    assert reason_of(info.value) == reason
    return info.value


def _verify(key: hsm_pb2.KeyInfo, signature: bytes, digest: bytes = DIGEST) -> None:
    public = serialization.load_der_public_key(key.public_key_spki)
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(signature, digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))


async def _usage(stub: Stub, grant_id: str) -> tuple[int, int]:
    reply = await stub.GetGrantUsage(hsm_pb2.GetGrantUsageRequest(grant_ids=[grant_id]))
    (usage,) = reply.usage
    assert usage.grant_id == grant_id
    return usage.used_total, usage.used_today


async def test_a_valid_authorisation_is_needed_and_good_once(hsm_deployment: Deployment) -> None:
    async with _callers(hsm_deployment) as callers:
        stub = callers.gateway
        key = await _key(callers.ra, "checked")
        other = await _key(callers.ra, "checked-other")
        authority = await _authority(callers)
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
        _verify(key, reply.signature)
        await _refused(stub.SignDigest(_sign(key, good)), "AUTHORISATION_REPLAYED")
        assert await _usage(callers.ra, record.grant_id) == (1, 1)


async def test_the_grant_is_checked_next_to_the_key(hsm_deployment: Deployment) -> None:
    """Only a grant signed by the RA's grant key in this token, for this user, key and
    operation, now, opens an organisation key; none of the refusals uses the record up."""
    async with _callers(hsm_deployment) as callers:
        stub = callers.gateway
        key = await _key(callers.ra, "granted")
        other = await _key(callers.ra, "granted-other")
        authority = await _authority(callers)
        record = authority.record(key.key_id, SIGN, DIGEST)
        statement = authority.statement(record)
        now = int(time.time())
        good = await authority.authorise(record)

        async def refused_with(signed_grant: bytes, reason: str) -> None:
            presented = hsm_pb2.OrganisationKeyAuthorisation()
            presented.CopyFrom(good)
            presented.signed_grant = signed_grant
            await _refused(stub.SignDigest(_sign(key, presented)), reason)

        await refused_with(b"", "GRANT_REQUIRED")
        await refused_with(good.signed_grant[:-1], "GRANT_MALFORMED")
        await refused_with(
            secrets.token_bytes(grants.MAX_SIGNED_GRANT_BYTES + 1), "GRANT_MALFORMED"
        )
        # Signed by a key outside the token, and by the CA key in the token (a key of the RA,
        # but not its grant key).
        for forger in (SoftwareSigner(), authority.ca):
            await refused_with(await authority.sign_grant(statement, forger), "GRANT_FORGED")
        # The grant's signature on another statement.
        envelope = grants.assemble(
            grants.encode(dataclasses.replace(statement, quota_total=999)),
            gateway_pb2.SignedGrant.FromString(good.signed_grant).signature,
        )
        await refused_with(envelope, "GRANT_FORGED")
        # Signed by the RA, but not for this use.
        for changes, reason in (
            ({"grant_id": secrets.token_hex(16)}, "GRANT_MISMATCH"),
            ({"user_id": "someone-else"}, "GRANT_USER_MISMATCH"),
            ({"key_id": other.key_id}, "GRANT_KEY_MISMATCH"),
            ({"operations": ("decrypt",)}, "OPERATION_NOT_GRANTED"),
            ({"not_before": now + 600, "not_after": now + 3600}, "GRANT_NOT_YET_VALID"),
            ({"not_before": now - 3600, "not_after": now - 600}, "GRANT_EXPIRED"),
        ):
            changed = dataclasses.replace(statement, **changes)
            await refused_with(await authority.sign_grant(changed), reason)
        assert await _usage(callers.ra, record.grant_id) == (0, 0)
        reply = await stub.SignDigest(_sign(key, good))
        _verify(key, reply.signature)
        assert await _usage(callers.ra, record.grant_id) == (1, 1)


async def test_quotas_are_counted_by_the_proxy(hsm_deployment: Deployment) -> None:
    """The proxy counts each grant's uses itself: beyond its total or its daily quota a record
    is refused (and not used up), whatever the gateway claims."""
    async with _callers(hsm_deployment) as callers:
        key = await _key(callers.ra, "quota")
        authority = await _authority(callers)
        for quota_total, quota_daily, which in ((2, 5, "total"), (5, 2, "daily")):
            grant_id = secrets.token_hex(16)
            first = authority.record(key.key_id, SIGN, DIGEST, grant_id=grant_id)
            signed = await authority.sign_grant(
                authority.statement(first, quota_total=quota_total, quota_daily=quota_daily)
            )
            uses = [
                await authority.authorise(
                    authority.record(key.key_id, SIGN, DIGEST, grant_id=grant_id),
                    signed_grant=signed,
                )
                for _ in range(4)
            ]
            # Concurrent uses cannot squeeze in more than the quota.
            results = await asyncio.gather(
                *(callers.gateway.SignDigest(_sign(key, use)) for use in uses),
                return_exceptions=True,
            )
            signed_ok = [r for r in results if isinstance(r, hsm_pb2.SignDigestResponse)]
            assert len(signed_ok) == 2
            for reply in signed_ok:
                _verify(key, reply.signature)
            refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
            assert len(refused) == 2
            for error in refused:
                assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert reason_of(error) == "QUOTA_EXCEEDED"
                assert dict(error_info(error).metadata) == {"quota": which}
            assert await _usage(callers.ra, grant_id) == (2, 2)
            assert await _usage(callers.admin, grant_id) == (2, 2)
        # Bad questions about usage.
        for grant_ids, reason in (
            ([secrets.token_hex(16) for _ in range(1001)], "TOO_MANY_GRANT_IDS"),
            (["not-a-grant"], "MALFORMED_GRANT_ID"),
        ):
            await _refused(
                callers.ra.GetGrantUsage(hsm_pb2.GetGrantUsageRequest(grant_ids=grant_ids)),
                reason,
                grpc.StatusCode.INVALID_ARGUMENT,
            )
        never_used = [secrets.token_hex(16) for _ in range(1000)]
        usage = await callers.ra.GetGrantUsage(hsm_pb2.GetGrantUsageRequest(grant_ids=never_used))
        assert [u.grant_id for u in usage.usage] == never_used
        assert {(u.used_total, u.used_today) for u in usage.usage} == {(0, 0)}


async def test_revocations_the_ra_records_are_enforced(hsm_deployment: Deployment) -> None:
    """A revoked grant, user certificate or organisation key opens nothing from the moment
    RecordRevocation answered, and a refused record is not used up."""
    async with _callers(hsm_deployment) as callers:
        stub, ra = callers.gateway, callers.ra
        key = await _key(ra, "revocations")
        authority = await _authority(callers)

        # The grant.
        record = authority.record(key.key_id, SIGN, DIGEST)
        authorisation = await authority.authorise(record)
        for _ in range(2):  # idempotent
            await ra.RecordRevocation(hsm_pb2.RecordRevocationRequest(grant_id=record.grant_id))
        await _refused(stub.SignDigest(_sign(key, authorisation)), "GRANT_REVOKED")
        assert await _usage(ra, record.grant_id) == (0, 0)
        # Another grant still works for the same user and key.
        await stub.SignDigest(
            _sign(key, await authority.authorise(authority.record(key.key_id, SIGN, DIGEST)))
        )

        # The user's certificate, named with a leading zero (the same serial).
        revoked_user = await _authority(callers)
        record = revoked_user.record(key.key_id, SIGN, DIGEST)
        authorisation = await revoked_user.authorise(record)
        serial = revoked_user.certificate_serial
        await ra.RecordRevocation(
            hsm_pb2.RecordRevocationRequest(
                certificate_serial=serial if len(serial) == 40 else "0" + serial
            )
        )
        await _refused(stub.SignDigest(_sign(key, authorisation)), "USER_CERTIFICATE_REVOKED")

        # The organisation key's certificate.
        record = authority.record(key.key_id, SIGN, DIGEST)
        authorisation = await authority.authorise(record)
        await ra.RecordRevocation(hsm_pb2.RecordRevocationRequest(organisation_key_id=key.key_id))
        await _refused(
            stub.SignDigest(_sign(key, authorisation)), "ORGANISATION_CERTIFICATE_REVOKED"
        )
        assert await _usage(ra, record.grant_id) == (0, 0)

        # Bad revocations.
        for request, reason in (
            (hsm_pb2.RecordRevocationRequest(), "REVOCATION_SUBJECT_REQUIRED"),
            (hsm_pb2.RecordRevocationRequest(grant_id="AB" * 16), "MALFORMED_GRANT_ID"),
            (hsm_pb2.RecordRevocationRequest(certificate_serial="0x1f"), "MALFORMED_SERIAL"),
            (hsm_pb2.RecordRevocationRequest(organisation_key_id="1f"), "MALFORMED_KEY_ID"),
        ):
            await _refused(ra.RecordRevocation(request), reason, grpc.StatusCode.INVALID_ARGUMENT)


async def test_each_key_signs_only_for_its_own_service(hsm_deployment: Deployment) -> None:
    """The RA's CA, ticket and grant keys sign for the RA alone; organisation keys only for the
    gateway with a complete authorisation, even the RA holding a valid one cannot use them."""
    async with _callers(hsm_deployment) as callers:
        ra_keys = [
            await _key(callers.ra, "powers", purpose=purpose)
            for purpose in (
                hsm_pb2.KEY_PURPOSE_CA,
                hsm_pb2.KEY_PURPOSE_TICKET,
                hsm_pb2.KEY_PURPOSE_GRANT,
            )
        ]
        for key in ra_keys:
            await _refused(callers.gateway.SignDigest(_sign(key, None)), "KEY_RESERVED_FOR_RA")
            _verify(key, (await callers.ra.SignDigest(_sign(key, None))).signature)
        organisation_key = await _key(callers.ra, "powers")
        rsa_key = await _key(callers.ra, "powers-rsa", hsm_pb2.KEY_ALGORITHM_RSA_2048)
        authority = await _authority(callers)
        authorisation = await authority.authorise(
            authority.record(organisation_key.key_id, SIGN, DIGEST)
        )
        await _refused(
            callers.ra.SignDigest(_sign(organisation_key, authorisation)),
            "KEY_RESERVED_FOR_GATEWAY",
        )
        decrypt = hsm_pb2.DecryptRequest(
            key_id=rsa_key.key_id,
            mechanism=hsm_pb2.DECRYPT_MECHANISM_RSA_OAEP_SHA256,
            ciphertext=bytes(256),
        )
        await _refused(callers.ra.Decrypt(decrypt), "CALLER_NOT_AUTHORISED")
        # The RA's attempt did not use the authorisation up: the gateway's use is honoured.
        reply = await callers.gateway.SignDigest(_sign(organisation_key, authorisation))
        _verify(organisation_key, reply.signature)
        # Neither the gateway nor an administrator makes keys.
        for stub in (callers.gateway, callers.admin):
            await _refused(
                stub.GenerateKeyPair(
                    hsm_pb2.GenerateKeyPairRequest(
                        label="mine",
                        purpose=hsm_pb2.KEY_PURPOSE_GRANT,
                        algorithm=hsm_pb2.KEY_ALGORITHM_EC_P256,
                    )
                ),
                "CALLER_NOT_AUTHORISED",
            )


async def test_an_organisation_key_signs_one_certificate_request(
    hsm_deployment: Deployment,
) -> None:
    """The RA can ask again (after a crash, say) and gets the very same request; it cannot have
    the key sign a second one for another subject, and only organisation keys sign one."""
    async with _callers(hsm_deployment) as callers:
        key = await _key(callers.ra, "certified")
        subject = pkix.name({"common_name": "Example Ltd seal"})
        request = hsm_pb2.CreateCertificateRequestRequest(key_id=key.key_id, subject=subject)
        await _refused(callers.gateway.CreateCertificateRequest(request), "CALLER_NOT_AUTHORISED")
        first, again = await asyncio.gather(
            callers.ra.CreateCertificateRequest(request),
            callers.ra.CreateCertificateRequest(request),
        )
        assert first.csr == again.csr
        assert (await callers.ra.CreateCertificateRequest(request)).csr == first.csr
        csr = x509.load_der_x509_csr(first.csr)
        assert csr.is_signature_valid
        assert csr.subject.public_bytes() == subject
        assert (
            csr.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            == key.public_key_spki
        )
        other = hsm_pb2.CreateCertificateRequestRequest(
            key_id=key.key_id, subject=pkix.name({"common_name": "Someone else"})
        )
        await _refused(
            callers.ra.CreateCertificateRequest(other),
            "CSR_ALREADY_MADE",
            grpc.StatusCode.FAILED_PRECONDITION,
        )
        ca_key = await _key(callers.ra, "certified", purpose=hsm_pb2.KEY_PURPOSE_CA)
        await _refused(
            callers.ra.CreateCertificateRequest(
                hsm_pb2.CreateCertificateRequestRequest(key_id=ca_key.key_id, subject=subject)
            ),
            "CSR_ORGANISATION_KEYS_ONLY",
            grpc.StatusCode.FAILED_PRECONDITION,
        )


async def test_a_certificate_from_outside_the_token_is_refused(hsm_deployment: Deployment) -> None:
    async with _callers(hsm_deployment) as callers:
        key = await _key(callers.ra, "foreign-ca")
        authority = await _authority(callers)
        # The same user and key, certified by a CA key that is not in the token.
        foreign_ca = ec.generate_private_key(ec.SECP256R1())

        class ForeignSigner:
            algorithm = pkix.SignatureAlgorithm.ECDSA_SHA256

            async def sign(self, data: bytes) -> bytes:
                return foreign_ca.sign(data, ec.ECDSA(hashes.SHA256()))

        now = datetime.datetime.now(datetime.UTC)
        certificate = await pkix.build_certificate(
            signer=ForeignSigner(),
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
        await _refused(
            callers.gateway.SignDigest(_sign(key, authorisation)), "USER_CERTIFICATE_UNTRUSTED"
        )


async def test_decrypt_needs_an_authorisation_and_admin_gets_no_shortcut(
    hsm_deployment: Deployment,
) -> None:
    async with _callers(hsm_deployment) as callers:
        ec_key = await _key(callers.ra, "admin-ec")
        rsa_key = await _key(callers.ra, "admin-rsa", hsm_pb2.KEY_ALGORITHM_RSA_2048)
        authority = await _authority(callers)
        # An administrator may neither sign nor decrypt, even with a valid authorisation.
        signing = await authority.authorise(authority.record(ec_key.key_id, SIGN, DIGEST))
        await _refused(callers.admin.SignDigest(_sign(ec_key, signing)), "CALLER_NOT_AUTHORISED")
        decrypt = hsm_pb2.DecryptRequest(
            key_id=rsa_key.key_id,
            mechanism=hsm_pb2.DECRYPT_MECHANISM_RSA_OAEP_SHA256,
            ciphertext=bytes(256),
        )
        await _refused(callers.admin.Decrypt(decrypt), "CALLER_NOT_AUTHORISED")
        # The gateway needs an authorisation for either.
        await _refused(callers.gateway.SignDigest(_sign(ec_key, None)), "AUTHORISATION_REQUIRED")
        await _refused(callers.gateway.Decrypt(decrypt), "AUTHORISATION_REQUIRED")
        # An authorisation for a signature does not open a decryption (refused before the log
        # is even looked at).
        authorisation = await authority.authorise(
            authority.record(rsa_key.key_id, records.Operation.SIGN_RSA_PSS_SHA256, bytes(256)),
            witnessed=False,
        )
        with_authorisation = hsm_pb2.DecryptRequest()
        with_authorisation.CopyFrom(decrypt)
        with_authorisation.authorisation.CopyFrom(authorisation)
        await _refused(callers.gateway.Decrypt(with_authorisation), "RECORD_OPERATION_MISMATCH")
        # Organisation keys never sign with PKCS#1 v1.5 (no record operation names it).
        rsa_pkcs1 = hsm_pb2.SignDigestRequest(
            key_id=rsa_key.key_id,
            mechanism=hsm_pb2.SIGNATURE_MECHANISM_RSA_PKCS1V15_SHA256,
            digest=DIGEST,
        )
        await _refused(
            callers.gateway.SignDigest(rsa_pkcs1),
            "MECHANISM_NOT_ALLOWED",
            grpc.StatusCode.FAILED_PRECONDITION,
        )
        # The signing authorisation the administrator could not use is still good.
        _verify(ec_key, (await callers.gateway.SignDigest(_sign(ec_key, signing))).signature)


async def test_a_key_the_cosigner_does_not_vouch_for_is_refused(hsm_deployment: Deployment) -> None:
    """A compromised gateway can present a certificate for a key of its own and sign the
    authorisation itself; without the cosigner's attestation the key is still not used."""
    async with _callers(hsm_deployment) as callers:
        stub = callers.gateway
        key = await _key(callers.ra, "attested")
        authority = await _authority(callers)
        someone_else = await _authority(callers)
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
        await _refused(
            stub.Seal(
                hsm_pb2.SealRequest(
                    plaintext=records.KeyAttestation(
                        record.user_key_id, record.user_id, "0" * 32
                    ).encode(),
                    associated_data=records.KEY_ATTESTATION_AAD,
                )
            ),
            "CALLER_NOT_AUTHORISED",
        )
        # With the cosigner's attestation of this very key, the record is honoured.
        await stub.SignDigest(_sign(key, await authority.authorise(record)))


async def test_an_attestation_that_names_another_user_is_refused(
    hsm_deployment: Deployment,
) -> None:
    """The RA's CA can certify the cosigner's key of bob as "alice"; the cosigner's attestation
    says whose key it is, and the record's user must be that one."""
    async with _callers(hsm_deployment) as callers:
        stub = callers.gateway
        key = await _key(callers.ra, "whose")
        misattributed = await _authority(callers, user_id="alice", attested_user="bob")
        record = misattributed.record(key.key_id, SIGN, DIGEST)
        await _refused(
            stub.SignDigest(_sign(key, await misattributed.authorise(record))),
            "ATTESTATION_USER_MISMATCH",
        )
        # An attestation in the old form (the key alone, no user, no ticket) is not one either.
        bare = await callers.cosigner.Seal(
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
    """The token never acted on it, so the record is not used up nor its use counted: a retry
    succeeds, within the grant's quota."""
    deployment = Deployment(
        tmp_path_factory.mktemp("busy"),
        extra_env={"MOBILESIGN_HSM_PROXY_WORKERS": "1", "MOBILESIGN_HSM_PROXY_QUEUE_SIZE": "0"},
    )
    deployment.start("hsm-proxy")
    try:
        async with _callers(deployment) as callers:
            key = await _key(callers.ra, "busy", hsm_pb2.KEY_ALGORITHM_RSA_3072)
            authority = await _authority(callers)
            pss = records.Operation.SIGN_RSA_PSS_SHA256
            grant_id = secrets.token_hex(16)
            first = authority.record(key.key_id, pss, DIGEST, grant_id=grant_id)
            # As many uses as requests: every busy refusal must be un-counted for all to sign.
            signed_grant = await authority.sign_grant(
                authority.statement(first, quota_total=12, quota_daily=12)
            )
            requests = [
                hsm_pb2.SignDigestRequest(
                    key_id=key.key_id,
                    mechanism=hsm_pb2.SIGNATURE_MECHANISM_RSA_PSS_SHA256,
                    digest=DIGEST,
                    authorisation=await authority.authorise(
                        authority.record(key.key_id, pss, DIGEST, grant_id=grant_id),
                        signed_grant=signed_grant,
                    ),
                )
                for _ in range(12)
            ]
            results = await asyncio.gather(
                *(callers.gateway.SignDigest(r) for r in requests), return_exceptions=True
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
            assert await _usage(callers.ra, grant_id) == (12 - len(busy), 12 - len(busy))
            for request in busy:
                await callers.gateway.SignDigest(request)  # the retry is honoured
                await _refused(callers.gateway.SignDigest(request), "AUTHORISATION_REPLAYED")
            assert await _usage(callers.ra, grant_id) == (12, 12)
    finally:
        deployment.stop_all()
