"""Organisation keys and their certificates (S1): the fields for every algorithm, listing, and
refused requests and callers that change nothing (CA records, keys, token, CRL).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID, SignatureAlgorithmOID

from mobilesign.ca.authority import ORGANISATION_POLICY_OID
from mobilesign.rpc import channels
from mobilesign.testing import Deployment
from mobilesign.v1 import gateway_pb2, hsm_pb2, ra_pb2
from tests.certificate_checks import key_usage, spki_of
from tests.integration.certificates import (
    ALGORITHMS,
    ORG_ID,
    ORG_NAME,
    PERSONAL_USAGE,
    Algorithm,
    Code,
    Pki,
    admin_stub,
    certificate_status,
    check_end_entity,
    crl_number,
    expect_refusal,
    fetch_crl,
    hsm_stub,
    issued_count,
    key_status,
    registration_stub,
    serial_hex,
)

pytestmark = pytest.mark.integration
SIGNING_USAGE = PERSONAL_USAGE
RSA_USAGE = key_usage(digital_signature=True, content_commitment=True, key_encipherment=True)


@pytest.fixture
def deployment(certificates_deployment: Deployment) -> Deployment:
    """The shared HSM proxy, RA/CA, gateway and cosigner."""
    return certificates_deployment


def _organisation_subject(label: str, name: str = ORG_NAME) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, name),
            x509.NameAttribute(NameOID.COMMON_NAME, label),
        ]
    )


@pytest.mark.parametrize("algorithm", list(ALGORITHMS), ids=["ec-p256", "rsa-2048", "rsa-3072"])
async def test_organisation_certificate_fields(pki: Pki, algorithm: Algorithm) -> None:
    label, hsm_algorithm = ALGORITHMS[algorithm]
    created = pki.organisation_keys[algorithm]
    root = x509.load_der_x509_certificate(pki.root_der)
    certificate = x509.load_der_x509_certificate(created.key.certificate)
    is_rsa = algorithm != gateway_pb2.ORGANISATION_KEY_ALGORITHM_EC_P256

    assert created.key.organisation_id == ORG_ID
    assert created.key.label == label
    assert created.key.algorithm == algorithm
    assert created.key.certificate_serial == serial_hex(certificate)
    assert created.hsm.key_id == created.key.key_id
    assert created.hsm.label == label
    assert created.hsm.purpose == hsm_pb2.KEY_PURPOSE_ORGANISATION
    assert created.hsm.algorithm == hsm_algorithm
    check_end_entity(
        certificate,
        root,
        subject=_organisation_subject(label),
        spki=created.hsm.public_key_spki,
        usage=RSA_USAGE if is_rsa else SIGNING_USAGE,
        policy=ORGANISATION_POLICY_OID,
    )
    public = certificate.public_key()
    if is_rsa:
        assert isinstance(public, rsa.RSAPublicKey)
        assert public.key_size == (2048 if "2048" in label else 3072)
        assert public.public_numbers().e == 65537
    else:
        assert isinstance(public, ec.EllipticCurvePublicKey)
        assert isinstance(public.curve, ec.SECP256R1)

    # The CSR the HSM signed: for the same key and subject, signature made by that key.
    csr = x509.load_der_x509_csr(created.csr)
    assert csr.is_signature_valid
    assert csr.subject == certificate.subject
    assert spki_of(csr.public_key()) == created.hsm.public_key_spki
    assert csr.signature_algorithm_oid == (
        SignatureAlgorithmOID.RSA_WITH_SHA256 if is_rsa else SignatureAlgorithmOID.ECDSA_WITH_SHA256
    )


async def test_list_organisation_keys_returns_them_with_certificates(
    deployment: Deployment, pki: Pki
) -> None:
    async with deployment.channel("ra", "admin") as channel:
        listed = await admin_stub(channel).ListOrganisationKeys(
            ra_pb2.ListOrganisationKeysRequest(organisation_id=ORG_ID)
        )
    expected = sorted((k.key for k in pki.organisation_keys.values()), key=lambda k: k.label)
    assert list(listed.keys) == expected
    for key in listed.keys:
        certificate = x509.load_der_x509_certificate(key.certificate)
        assert serial_hex(certificate) == key.certificate_serial
        assert certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == key.label


async def _organisation_state(deployment: Deployment) -> tuple[Any, ...]:
    """What a refused request must not change: the CA's records, the organisation's keys and
    certificates, and the organisation keys in the token."""
    async with deployment.channel("ra", "admin") as channel:
        listed = await admin_stub(channel).ListOrganisationKeys(
            ra_pb2.ListOrganisationKeysRequest(organisation_id=ORG_ID)
        )
    async with deployment.channel("hsm-proxy", "admin") as channel:
        token = await hsm_stub(channel).ListKeys(
            hsm_pb2.ListKeysRequest(purpose=hsm_pb2.KEY_PURPOSE_ORGANISATION)
        )
    crl = x509.load_der_x509_crl(await fetch_crl(deployment))
    return (
        issued_count(deployment),
        listed.SerializeToString(deterministic=True),
        sorted(k.key_id for k in token.keys),
        crl_number(crl),
    )


def _key_request(
    label: str,
    organisation_id: str = ORG_ID,
    algorithm: int = gateway_pb2.ORGANISATION_KEY_ALGORITHM_EC_P256,
) -> ra_pb2.CreateOrganisationKeyRequest:
    return ra_pb2.CreateOrganisationKeyRequest(
        organisation_id=organisation_id,
        label=label,
        algorithm=gateway_pb2.OrganisationKeyAlgorithm.ValueType(algorithm),
    )


async def test_bad_organisation_key_requests_are_refused_and_issue_nothing(
    deployment: Deployment, pki: Pki
) -> None:
    before = await _organisation_state(deployment)
    existing = pki.organisation_keys[gateway_pb2.ORGANISATION_KEY_ALGORITHM_EC_P256].key.label
    async with deployment.channel("ra", "admin") as channel:
        admin = admin_stub(channel)
        await expect_refusal(
            admin.CreateOrganisationKey(_key_request("nobody-seal", "no-such-organisation")),
            Code.NOT_FOUND,
            "ORGANISATION_NOT_FOUND",
        )
        await expect_refusal(
            admin.ListOrganisationKeys(
                ra_pb2.ListOrganisationKeysRequest(organisation_id="no-such-organisation")
            ),
            Code.NOT_FOUND,
            "ORGANISATION_NOT_FOUND",
        )
        for algorithm in ALGORITHMS:
            await expect_refusal(
                admin.CreateOrganisationKey(_key_request(existing, algorithm=algorithm)),
                Code.ALREADY_EXISTS,
                "LABEL_IN_USE",
            )
        # Labels are unique among all organisations' keys, not per organisation.
        await admin.CreateOrganisation(
            ra_pb2.CreateOrganisationRequest(organisation_id="initech", name="Initech")
        )
        await expect_refusal(
            admin.CreateOrganisationKey(_key_request(existing, "initech")),
            Code.ALREADY_EXISTS,
            "LABEL_IN_USE",
        )
        await expect_refusal(
            admin.CreateOrganisationKey(
                _key_request(
                    "no-algorithm", algorithm=gateway_pb2.ORGANISATION_KEY_ALGORITHM_UNSPECIFIED
                )
            ),
            Code.INVALID_ARGUMENT,
            "ALGORITHM_REQUIRED",
        )
        await expect_refusal(
            admin.CreateOrganisationKey(_key_request("no-algorithm", algorithm=99)),
            Code.INVALID_ARGUMENT,
            "ALGORITHM_REQUIRED",
        )
        for label in ("", "has space", "colon:label", "x" * 65, "ünïcode"):
            await expect_refusal(
                admin.CreateOrganisationKey(_key_request(label)),
                Code.INVALID_ARGUMENT,
                "MALFORMED_LABEL",
            )
        await expect_refusal(
            admin.CreateOrganisation(
                ra_pb2.CreateOrganisationRequest(organisation_id=ORG_ID, name="Again")
            ),
            Code.ALREADY_EXISTS,
            "ORGANISATION_EXISTS",
        )
        initech = await admin.ListOrganisationKeys(
            ra_pb2.ListOrganisationKeysRequest(organisation_id="initech")
        )
    assert list(initech.keys) == []
    assert await _organisation_state(deployment) == before


async def test_callers_that_are_not_administrators_are_refused(
    deployment: Deployment, pki: Pki
) -> None:
    serial = serial_hex(x509.load_der_x509_certificate(pki.alice.certificate))
    before = await _organisation_state(deployment)

    async def refused(channel: grpc.aio.Channel, code: grpc.StatusCode) -> None:
        admin = admin_stub(channel)
        calls: list[Awaitable[object]] = [
            admin.CreateOrganisationKey(_key_request("intruder-seal")),
            admin.CreateOrganisation(
                ra_pb2.CreateOrganisationRequest(organisation_id="intruder", name="X")
            ),
            admin.ListOrganisationKeys(ra_pb2.ListOrganisationKeysRequest(organisation_id=ORG_ID)),
            admin.RevokeCertificate(
                ra_pb2.RevokeCertificateRequest(
                    serial=serial, reason=gateway_pb2.REVOCATION_REASON_KEY_COMPROMISE
                )
            ),
            admin.CreateUser(ra_pb2.CreateUserRequest(user_id="intruder")),
            admin.IssueEnrolmentTicket(
                ra_pb2.IssueEnrolmentTicketRequest(user_id=pki.alice.keystore.user_id)
            ),
        ]
        for call in calls:
            await expect_refusal(call, code, "CALLER_NOT_AUTHORISED")

    # Internal identities other than the administrator.
    for identity in ("gateway", "cosigner", "hsm-proxy"):
        async with deployment.channel("ra", identity) as channel:
            await refused(channel, Code.PERMISSION_DENIED)
    # The RA has no public listener: its internal one does not even complete a handshake without
    # a client certificate.
    ca_pem = deployment.credential("admin").read()[2]
    async with channels.server_tls(deployment.address("ra"), ca_pem) as channel:
        for call in (
            admin_stub(channel).CreateOrganisationKey(_key_request("intruder-seal"), timeout=5),
            registration_stub(channel).GetKeyStatus(
                ra_pb2.GetKeyStatusRequest(key_id=pki.alice.keystore.key_id), timeout=5
            ),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call
            assert info.value.code() == Code.UNAVAILABLE
    # The gateway no longer serves the RA's services, on either listener, to anyone.
    async with (
        deployment.public_channel("gateway") as public,
        deployment.channel("gateway", "admin") as internal,
    ):
        for channel in (public, internal):
            for call in (
                admin_stub(channel).CreateOrganisationKey(_key_request("intruder-seal")),
                registration_stub(channel).GetKeyStatus(
                    ra_pb2.GetKeyStatusRequest(key_id=pki.alice.keystore.key_id)
                ),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await call
                assert info.value.code() == Code.UNIMPLEMENTED
    # The cosigner may ask for a key's status, which is what it needs.
    assert not (await key_status(deployment, pki.alice.keystore.key_id)).revoked

    assert await _organisation_state(deployment) == before
    status = await certificate_status(deployment, serial)
    assert status.status == gateway_pb2.CERTIFICATE_STATUS_GOOD
