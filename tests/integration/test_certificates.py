"""The RA/CA (flows S1 and S2) against real HSM proxy, gateway and cosigner processes.

Every certificate, request and CRL the gateway hands out is parsed with ``cryptography`` and
checked field by field, then validated again by ``cryptography``'s X.509 verifier and by the
``openssl`` command. Each refused request is checked by gRPC code and stable reason, and by what
it must not have done: no new row in the CA's database, no certificate for the key, a ticket that
still yields its one certificate afterwards. The CA and organisation private keys are inspected
in the SoftHSM2 token itself, from this process, with python-pkcs11.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import itertools
import os
import secrets
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import grpc
import pkcs11
import pytest
from asn1crypto import crl as asn1_crl
from asn1crypto import csr as asn1_csr
from asn1crypto import keys as asn1_keys
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtensionOID, NameOID, SignatureAlgorithmOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    Policy,
    PolicyBuilder,
    Store,
    VerificationError,
)
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11 import exceptions as p11e

from client import sdk
from client.certificates import (
    build_personal_csr,
    fetch_personal_certificate,
    joint_public_key_spki,
    request_personal_certificate,
    verify_personal_certificate,
)
from client.errors import ClientError
from client.keystore import Keystore
from hsm_proxy.config import HsmProxyConfig
from mobilesign import pkix, tickets
from mobilesign.ca.authority import ORGANISATION_POLICY_OID, PERSONAL_POLICY_OID
from mobilesign.rpc import channels
from mobilesign.rpc.status import reason_of
from mobilesign.testing import Deployment
from mobilesign.v1 import gateway_pb2, gateway_pb2_grpc, hsm_pb2, hsm_pb2_grpc

pytestmark = pytest.mark.integration

Code = grpc.StatusCode
Algorithm: TypeAlias = gateway_pb2.OrganisationKeyAlgorithm.ValueType
PIN = "135790"
ORG_ID = "acme"
ORG_NAME = "ACME Trading, Société Anonyme"
#: The gateway's built-in CA settings (server/config.py, ca/authority.py).
CA_KEY_LABEL = "mobilesign-root-ca"
CA_SUBJECT = x509.Name(
    [
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mobilesign"),
        x509.NameAttribute(NameOID.COMMON_NAME, "mobilesign Root CA"),
    ]
)
CRL_URL = "http://pki.mobilesign.invalid/crl/root.crl"
CA_DAYS = 3650
END_ENTITY_DAYS = 365
CRL_DAYS = 7
#: How far the CA backdates notBefore (clock skew allowance), with slack for a slow run.
BACKDATE_SLACK = datetime.timedelta(minutes=10)
TOKEN_LABEL = "mobilesign"
TICKET_KEY_LABEL = "gateway-tickets"
MAX_CSR_BYTES = 4096

ALGORITHMS = {
    gateway_pb2.ORGANISATION_KEY_ALGORITHM_EC_P256: ("acme-ec-p256", hsm_pb2.KEY_ALGORITHM_EC_P256),
    gateway_pb2.ORGANISATION_KEY_ALGORITHM_RSA_2048: (
        "acme-rsa-2048",
        hsm_pb2.KEY_ALGORITHM_RSA_2048,
    ),
    gateway_pb2.ORGANISATION_KEY_ALGORITHM_RSA_3072: (
        "acme-rsa-3072",
        hsm_pb2.KEY_ALGORITHM_RSA_3072,
    ),
}
REASONS = {
    gateway_pb2.REVOCATION_REASON_KEY_COMPROMISE: x509.ReasonFlags.key_compromise,
    gateway_pb2.REVOCATION_REASON_CA_COMPROMISE: x509.ReasonFlags.ca_compromise,
    gateway_pb2.REVOCATION_REASON_AFFILIATION_CHANGED: x509.ReasonFlags.affiliation_changed,
    gateway_pb2.REVOCATION_REASON_SUPERSEDED: x509.ReasonFlags.superseded,
    gateway_pb2.REVOCATION_REASON_CESSATION_OF_OPERATION: x509.ReasonFlags.cessation_of_operation,
    gateway_pb2.REVOCATION_REASON_PRIVILEGE_WITHDRAWN: x509.ReasonFlags.privilege_withdrawn,
}
END_ENTITY_EXTENSIONS = {
    ExtensionOID.BASIC_CONSTRAINTS,
    ExtensionOID.KEY_USAGE,
    ExtensionOID.CERTIFICATE_POLICIES,
    ExtensionOID.SUBJECT_KEY_IDENTIFIER,
    ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
    ExtensionOID.CRL_DISTRIBUTION_POINTS,
}


def _usage(**allowed: bool) -> x509.KeyUsage:
    flags = dict.fromkeys(
        (
            "digital_signature",
            "content_commitment",
            "key_encipherment",
            "data_encipherment",
            "key_agreement",
            "key_cert_sign",
            "crl_sign",
            "encipher_only",
            "decipher_only",
        ),
        False,
    )
    flags.update(allowed)
    return x509.KeyUsage(**flags)


PERSONAL_USAGE = _usage(digital_signature=True, content_commitment=True)
SIGNING_USAGE = PERSONAL_USAGE
RSA_USAGE = _usage(digital_signature=True, content_commitment=True, key_encipherment=True)
CA_USAGE = _usage(key_cert_sign=True, crl_sign=True)


# Deployment and the certificates issued once for the module ----------------------------------


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """HSM proxy, gateway (RA/CA) and cosigner processes sharing one state directory."""
    deployment = Deployment(tmp_path_factory.mktemp("certificates"))
    try:
        deployment.start_all()
        yield deployment
    finally:
        deployment.stop_all()


@dataclass(frozen=True)
class Personal:
    """An enrolled phone key with its personal certificate."""

    keystore: Keystore
    ticket: bytes
    certificate: bytes
    ca_certificate: bytes
    csr: bytes


@dataclass(frozen=True)
class OrganisationKey:
    """An organisation key as CreateOrganisationKey returned it, and its HSM record."""

    key: gateway_pb2.OrganisationKey
    csr: bytes
    hsm: hsm_pb2.KeyInfo


@dataclass(frozen=True)
class Pki:
    """What the module's tests inspect: the root, two users, one key per algorithm, a CRL."""

    root_der: bytes
    alice: Personal
    bob: Personal
    organisation_keys: dict[Algorithm, OrganisationKey]
    crl: bytes


def _admin(channel: grpc.aio.Channel) -> gateway_pb2_grpc.AdminServiceAsyncStub:
    return gateway_pb2_grpc.AdminServiceStub(channel)


def _public(channel: grpc.aio.Channel) -> gateway_pb2_grpc.GatewayServiceAsyncStub:
    return gateway_pb2_grpc.GatewayServiceStub(channel)


def _hsm(channel: grpc.aio.Channel) -> hsm_pb2_grpc.HsmServiceAsyncStub:
    return hsm_pb2_grpc.HsmServiceStub(channel)


async def _new_user(deployment: Deployment, prefix: str) -> tuple[str, bytes]:
    """A new user and an enrolment ticket for them."""
    user_id = f"{prefix}-{secrets.token_hex(4)}"
    async with deployment.channel("gateway", "admin") as channel:
        admin = _admin(channel)
        await admin.CreateUser(gateway_pb2.CreateUserRequest(user_id=user_id, display_name="T"))
        reply = await admin.IssueEnrolmentTicket(
            gateway_pb2.IssueEnrolmentTicketRequest(user_id=user_id, ttl_seconds=600)
        )
    return user_id, reply.ticket


async def _enrol(deployment: Deployment, prefix: str) -> tuple[Keystore, bytes]:
    """A new user whose phone enrolled a joint key (no certificate yet), and the ticket."""
    _, ticket = await _new_user(deployment, prefix)
    async with deployment.public_channel("cosigner") as channel:
        keystore = await sdk.enrol(channel, ticket, PIN)
    return keystore, ticket


@contextlib.asynccontextmanager
async def _session(deployment: Deployment, keystore: Keystore) -> AsyncIterator[sdk.SigningSession]:
    """An open signing session with the cosigner (device and PIN proven)."""
    async with (
        deployment.public_channel("cosigner") as channel,
        sdk.SigningSession(channel, keystore, PIN) as session,
    ):
        yield session


async def _certify(deployment: Deployment, keystore: Keystore, ticket: bytes) -> Personal:
    """The SDK's honest request for a personal certificate (verified by the SDK)."""
    async with (
        _session(deployment, keystore) as session,
        deployment.public_channel("gateway") as gateway,
    ):
        certificates, csr = await request_personal_certificate(gateway, session, keystore, ticket)
    return Personal(keystore, ticket, certificates.certificate, certificates.ca_certificate, csr)


async def _personal(deployment: Deployment, prefix: str) -> Personal:
    keystore, ticket = await _enrol(deployment, prefix)
    return await _certify(deployment, keystore, ticket)


async def _hsm_key(deployment: Deployment, key_id: str) -> hsm_pb2.KeyInfo:
    async with deployment.channel("hsm-proxy", "admin") as channel:
        reply = await _hsm(channel).GetPublicKey(hsm_pb2.GetPublicKeyRequest(key_id=key_id))
    return reply.key


async def _create_key(
    deployment: Deployment, organisation_id: str, label: str, algorithm: int
) -> OrganisationKey:
    async with deployment.channel("gateway", "admin") as channel:
        reply = await _admin(channel).CreateOrganisationKey(
            gateway_pb2.CreateOrganisationKeyRequest(
                organisation_id=organisation_id,
                label=label,
                algorithm=gateway_pb2.OrganisationKeyAlgorithm.ValueType(algorithm),
            ),
            timeout=60,
        )
    return OrganisationKey(reply.key, reply.csr, await _hsm_key(deployment, reply.key.key_id))


async def _create_organisation(deployment: Deployment, organisation_id: str, name: str) -> None:
    async with deployment.channel("gateway", "admin") as channel:
        await _admin(channel).CreateOrganisation(
            gateway_pb2.CreateOrganisationRequest(organisation_id=organisation_id, name=name)
        )


async def _root(deployment: Deployment) -> bytes:
    async with deployment.public_channel("gateway") as channel:
        reply = await _public(channel).GetCaCertificate(gateway_pb2.GetCaCertificateRequest())
    return reply.certificate


async def _crl(deployment: Deployment) -> bytes:
    async with deployment.public_channel("gateway") as channel:
        return (await _public(channel).GetCrl(gateway_pb2.GetCrlRequest())).crl


async def _setup(deployment: Deployment) -> Pki:
    await _create_organisation(deployment, ORG_ID, ORG_NAME)
    organisation_keys = {
        algorithm: await _create_key(deployment, ORG_ID, label, algorithm)
        for algorithm, (label, _) in ALGORITHMS.items()
    }
    alice = await _personal(deployment, "alice")
    bob = await _personal(deployment, "bob.smith@acme.example")
    return Pki(await _root(deployment), alice, bob, organisation_keys, await _crl(deployment))


@pytest.fixture(scope="module")
def pki(deployment: Deployment) -> Pki:
    """An organisation with one key per algorithm and two certified users, issued once."""
    return asyncio.run(_setup(deployment))


# Checks shared by the tests -------------------------------------------------------------------


async def _expect(
    call: Awaitable[object], code: grpc.StatusCode, reason: str, *alternatives: str
) -> None:
    """The call fails with ``code`` and the stable ``reason`` (or one of ``alternatives``)."""
    try:
        response = await call
    except grpc.aio.AioRpcError as exc:
        error = exc
    else:
        pytest.fail(f"expected {code.name} {reason}, got {response!r}")
    assert error.code() == code, (error.code(), reason_of(error), error.details())
    assert reason_of(error) in (reason, *alternatives), (reason_of(error), error.details())


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _spki(key: Any) -> bytes:
    return bytes(
        key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def _ca_public_key(root: x509.Certificate) -> ec.EllipticCurvePublicKey:
    public = root.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    return public


def _serial_octets(serial: int) -> int:
    """Length of the DER INTEGER contents (two's complement, so a sign bit is needed)."""
    return serial.bit_length() // 8 + 1


def _check_serial(serial: int) -> None:
    assert serial > 0
    assert _serial_octets(serial) <= 20
    # At least 64 bits of CSPRNG output (CA/B Forum); the CA uses 159 with the top bit set.
    assert serial.bit_length() >= 64


def _check_validity(certificate: x509.Certificate, days: int) -> None:
    now = _now()
    not_before = certificate.not_valid_before_utc
    not_after = certificate.not_valid_after_utc
    assert not_before <= now < not_after
    assert now - not_before < BACKDATE_SLACK + datetime.timedelta(minutes=5)
    lifetime = not_after - not_before
    assert (
        datetime.timedelta(days=days) <= lifetime <= datetime.timedelta(days=days) + BACKDATE_SLACK
    )


def _extension(certificate: x509.Certificate, kind: type[Any]) -> x509.Extension[Any]:
    return certificate.extensions.get_extension_for_class(kind)


def _check_end_entity(
    certificate: x509.Certificate,
    root: x509.Certificate,
    *,
    subject: x509.Name,
    spki: bytes,
    usage: x509.KeyUsage,
    policy: str,
) -> None:
    """Everything a certificate issued by the root must say, field by field."""
    assert certificate.version is x509.Version.v3
    _check_serial(certificate.serial_number)
    _check_validity(certificate, END_ENTITY_DAYS)
    assert certificate.subject == subject
    assert certificate.issuer == root.subject == CA_SUBJECT
    assert _spki(certificate.public_key()) == spki
    assert certificate.signature_algorithm_oid == SignatureAlgorithmOID.ECDSA_WITH_SHA256
    certificate.verify_directly_issued_by(root)

    assert {e.oid for e in certificate.extensions} == END_ENTITY_EXTENSIONS
    constraints = _extension(certificate, x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value == x509.BasicConstraints(ca=False, path_length=None)
    key_usage = _extension(certificate, x509.KeyUsage)
    assert key_usage.critical
    assert key_usage.value == usage
    policies = _extension(certificate, x509.CertificatePolicies)
    assert not policies.critical
    assert [(p.policy_identifier.dotted_string, p.policy_qualifiers) for p in policies.value] == [
        (policy, None)
    ]
    ski = _extension(certificate, x509.SubjectKeyIdentifier)
    assert not ski.critical
    assert ski.value == x509.SubjectKeyIdentifier.from_public_key(certificate.public_key())
    aki = _extension(certificate, x509.AuthorityKeyIdentifier)
    assert not aki.critical
    root_ski = _extension(root, x509.SubjectKeyIdentifier).value
    assert aki.value == x509.AuthorityKeyIdentifier(root_ski.digest, None, None)
    distribution = _extension(certificate, x509.CRLDistributionPoints)
    assert not distribution.critical
    assert list(distribution.value) == [
        x509.DistributionPoint([x509.UniformResourceIdentifier(CRL_URL)], None, None, None)
    ]


def _personal_subject(user_id: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, user_id)])


def _organisation_subject(label: str, name: str = ORG_NAME) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, name),
            x509.NameAttribute(NameOID.COMMON_NAME, label),
        ]
    )


def _crl_number(crl: x509.CertificateRevocationList) -> int:
    return int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)


def _ca_db(deployment: Deployment) -> Path:
    return deployment.state_dir / "gateway" / "ca.db"


def _issued(deployment: Deployment) -> int:
    """Certificates in the CA's database (read-only, beside the running gateway)."""
    connection = sqlite3.connect(f"file:{_ca_db(deployment)}?mode=ro", uri=True)
    try:
        (count,) = connection.execute("SELECT COUNT(*) FROM certificates").fetchone()
    finally:
        connection.close()
    return int(count)


async def _no_certificate(deployment: Deployment, key_id: str) -> None:
    """Nothing was issued for ``key_id``: no personal certificate, not revoked, no serial."""
    async with deployment.public_channel("gateway") as channel:
        await _expect(
            _public(channel).GetPersonalCertificate(
                gateway_pb2.GetPersonalCertificateRequest(key_id=key_id)
            ),
            Code.NOT_FOUND,
            "CERTIFICATE_NOT_FOUND",
        )
    async with deployment.channel("gateway", "admin") as channel:
        status = await _admin(channel).GetKeyStatus(gateway_pb2.GetKeyStatusRequest(key_id=key_id))
    assert status == gateway_pb2.GetKeyStatusResponse(revoked=False, certificate_serial="")


async def _status(deployment: Deployment, serial: str) -> gateway_pb2.GetCertificateStatusResponse:
    async with deployment.public_channel("gateway") as channel:
        return await _public(channel).GetCertificateStatus(
            gateway_pb2.GetCertificateStatusRequest(serial=serial)
        )


async def _key_status(deployment: Deployment, key_id: str) -> gateway_pb2.GetKeyStatusResponse:
    async with deployment.channel("gateway", "cosigner") as channel:
        return await _admin(channel).GetKeyStatus(gateway_pb2.GetKeyStatusRequest(key_id=key_id))


async def _revoke(deployment: Deployment, serial: str, reason: int) -> None:
    async with deployment.channel("gateway", "admin") as channel:
        await _admin(channel).RevokeCertificate(
            gateway_pb2.RevokeCertificateRequest(
                serial=serial, reason=gateway_pb2.RevocationReason.ValueType(reason)
            )
        )


def _hex(certificate: x509.Certificate) -> str:
    return format(certificate.serial_number, "x")


def _pem(der: bytes) -> bytes:
    return x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)


def _crl_pem(der: bytes) -> bytes:
    return x509.load_der_x509_crl(der).public_bytes(serialization.Encoding.PEM)


def _openssl(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", *map(str, args)], capture_output=True, text=True, check=False, timeout=30
    )


def _write(directory: Path, name: str, data: bytes) -> Path:
    path = directory / name
    path.write_bytes(data)
    return path


class _JointSigner:
    """A pkix signer whose signature is the phone's and the cosigner's together."""

    def __init__(self, session: sdk.SigningSession) -> None:
        self._session = session

    @property
    def algorithm(self) -> pkix.SignatureAlgorithm:
        return pkix.SignatureAlgorithm.ED25519

    async def sign(self, data: bytes) -> bytes:
        return await self._session.sign(data)


class _SoftwareSigner:
    """A pkix signer with a key in this process (Ed25519 or EC P-256)."""

    def __init__(self, key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey) -> None:
        self._key = key

    @property
    def algorithm(self) -> pkix.SignatureAlgorithm:
        if isinstance(self._key, ed25519.Ed25519PrivateKey):
            return pkix.SignatureAlgorithm.ED25519
        return pkix.SignatureAlgorithm.ECDSA_SHA256

    async def sign(self, data: bytes) -> bytes:
        if isinstance(self._key, ed25519.Ed25519PrivateKey):
            return self._key.sign(data)
        return self._key.sign(data, ec.ECDSA(hashes.SHA256()))


# S1: the CA certificate -----------------------------------------------------------------------


async def test_ca_certificate_is_a_self_signed_root_for_the_hsm_key(
    deployment: Deployment, pki: Pki
) -> None:
    root = x509.load_der_x509_certificate(pki.root_der)
    assert root.version is x509.Version.v3
    _check_serial(root.serial_number)
    assert root.subject == root.issuer == CA_SUBJECT
    now = _now()
    assert root.not_valid_before_utc <= now < root.not_valid_after_utc
    lifetime = root.not_valid_after_utc - root.not_valid_before_utc
    assert (
        datetime.timedelta(days=CA_DAYS)
        <= lifetime
        <= datetime.timedelta(days=CA_DAYS) + BACKDATE_SLACK
    )
    assert root.signature_algorithm_oid == SignatureAlgorithmOID.ECDSA_WITH_SHA256
    root.verify_directly_issued_by(root)

    assert {e.oid for e in root.extensions} == {
        ExtensionOID.BASIC_CONSTRAINTS,
        ExtensionOID.KEY_USAGE,
        ExtensionOID.SUBJECT_KEY_IDENTIFIER,
    }
    constraints = _extension(root, x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca
    key_usage = _extension(root, x509.KeyUsage)
    assert key_usage.critical
    assert key_usage.value == CA_USAGE
    ski = _extension(root, x509.SubjectKeyIdentifier)
    assert not ski.critical
    assert ski.value == x509.SubjectKeyIdentifier.from_public_key(_ca_public_key(root))

    # The certified key is the CA key in the token: EC P-256, purpose CA.
    async with deployment.channel("hsm-proxy", "admin") as channel:
        listed = await _hsm(channel).ListKeys(
            hsm_pb2.ListKeysRequest(purpose=hsm_pb2.KEY_PURPOSE_CA)
        )
    (ca_key,) = [key for key in listed.keys if key.label == CA_KEY_LABEL]
    assert ca_key.algorithm == hsm_pb2.KEY_ALGORITHM_EC_P256
    assert _spki(root.public_key()) == ca_key.public_key_spki
    assert isinstance(_ca_public_key(root).curve, ec.SECP256R1)

    # Every answer carries the same root; the gateway publishes it in its state directory too.
    assert pki.alice.ca_certificate == pki.bob.ca_certificate == pki.root_der
    assert (deployment.state_dir / "gateway" / "ca.der").read_bytes() == pki.root_der
    assert await _root(deployment) == pki.root_der


# S2: the personal certificate and its request -------------------------------------------------


async def test_personal_certificate_fields(pki: Pki) -> None:
    root = x509.load_der_x509_certificate(pki.root_der)
    for person in (pki.alice, pki.bob):
        certificate = x509.load_der_x509_certificate(person.certificate)
        _check_end_entity(
            certificate,
            root,
            subject=_personal_subject(person.keystore.user_id),
            spki=joint_public_key_spki(person.keystore),
            usage=PERSONAL_USAGE,
            policy=PERSONAL_POLICY_OID,
        )
        public = certificate.public_key()
        assert isinstance(public, ed25519.Ed25519PublicKey)
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        assert raw == person.keystore.group_public_key
        assert raw.hex() == person.keystore.key_id


async def test_personal_csr_is_jointly_signed_for_the_joint_key(pki: Pki, tmp_path: Path) -> None:
    for person in (pki.alice, pki.bob):
        csr = x509.load_der_x509_csr(person.csr)
        assert csr.is_signature_valid
        assert csr.subject == _personal_subject(person.keystore.user_id)
        assert csr.signature_algorithm_oid == SignatureAlgorithmOID.ED25519
        assert len(csr.attributes) == 0
        assert len(csr.extensions) == 0
        joint = ed25519.Ed25519PublicKey.from_public_bytes(person.keystore.group_public_key)
        assert _spki(csr.public_key()) == _spki(joint)
        # The proof of possession is a plain RFC 8032 signature by the joint key.
        joint.verify(csr.signature, csr.tbs_certrequest_bytes)
        request = _write(tmp_path, "request.pem", csr.public_bytes(serialization.Encoding.PEM))
        result = _openssl("req", "-verify", "-noout", "-in", request)
        assert result.returncode == 0, result.stderr
        assert "verify OK" in result.stdout + result.stderr


# S1: organisation certificates ----------------------------------------------------------------


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
    assert created.key.certificate_serial == _hex(certificate)
    assert created.hsm.key_id == created.key.key_id
    assert created.hsm.label == label
    assert created.hsm.purpose == hsm_pb2.KEY_PURPOSE_ORGANISATION
    assert created.hsm.algorithm == hsm_algorithm
    _check_end_entity(
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
    assert _spki(csr.public_key()) == created.hsm.public_key_spki
    assert csr.signature_algorithm_oid == (
        SignatureAlgorithmOID.RSA_WITH_SHA256 if is_rsa else SignatureAlgorithmOID.ECDSA_WITH_SHA256
    )


async def test_list_organisation_keys_returns_them_with_certificates(
    deployment: Deployment, pki: Pki
) -> None:
    async with deployment.channel("gateway", "admin") as channel:
        listed = await _admin(channel).ListOrganisationKeys(
            gateway_pb2.ListOrganisationKeysRequest(organisation_id=ORG_ID)
        )
    expected = sorted((k.key for k in pki.organisation_keys.values()), key=lambda k: k.label)
    assert list(listed.keys) == expected
    for key in listed.keys:
        certificate = x509.load_der_x509_certificate(key.certificate)
        assert _hex(certificate) == key.certificate_serial
        assert certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == key.label


# The chain, with two independent verifiers ----------------------------------------------------


def _require_not_ca(policy: Policy, certificate: x509.Certificate, value: Any) -> None:
    assert isinstance(value, x509.BasicConstraints)
    if value.ca:
        raise ValueError("an end-entity certificate must not be a CA")


def _require_signing(policy: Policy, certificate: x509.Certificate, value: Any) -> None:
    assert isinstance(value, x509.KeyUsage)
    if not (value.digital_signature and value.content_commitment) or value.key_cert_sign:
        raise ValueError("not a signing certificate")


def _verifier(root: x509.Certificate, now: datetime.datetime | None = None) -> Any:
    """cryptography's path validation: the web-PKI CA profile, and for the end entity what
    this CA promises (critical CA:false, critical signing key usage, AKI, CRL location)."""
    ee_policy = (
        ExtensionPolicy.permit_all()
        .require_present(x509.BasicConstraints, Criticality.CRITICAL, _require_not_ca)
        .require_present(x509.KeyUsage, Criticality.CRITICAL, _require_signing)
        .require_present(x509.AuthorityKeyIdentifier, Criticality.NON_CRITICAL, None)
        .require_present(x509.SubjectKeyIdentifier, Criticality.NON_CRITICAL, None)
        .require_present(x509.CRLDistributionPoints, Criticality.NON_CRITICAL, None)
        .require_present(x509.CertificatePolicies, Criticality.NON_CRITICAL, None)
    )
    return (
        PolicyBuilder()
        .store(Store([root]))
        .time(now or _now())
        .extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=ee_policy)
        .build_client_verifier()
    )


async def test_chain_validates_with_cryptography(pki: Pki) -> None:
    root = x509.load_der_x509_certificate(pki.root_der)
    leaves = [pki.alice.certificate, pki.bob.certificate] + [
        k.key.certificate for k in pki.organisation_keys.values()
    ]
    for der in leaves:
        leaf = x509.load_der_x509_certificate(der)
        verified = _verifier(root).verify(leaf, [])
        assert verified.chain == [leaf, root]
        # Outside the validity period the same chain is refused.
        with pytest.raises(VerificationError):
            _verifier(root, leaf.not_valid_after_utc + datetime.timedelta(days=1)).verify(leaf, [])
        with pytest.raises(VerificationError):
            _verifier(root, leaf.not_valid_before_utc - datetime.timedelta(days=1)).verify(leaf, [])


async def test_chain_and_crl_validate_with_openssl(pki: Pki, tmp_path: Path) -> None:
    ca = _write(tmp_path, "ca.pem", _pem(pki.root_der))
    crl = _write(tmp_path, "crl.pem", _crl_pem(pki.crl))
    leaves = [
        _write(tmp_path, "alice.pem", _pem(pki.alice.certificate)),
        _write(tmp_path, "bob.pem", _pem(pki.bob.certificate)),
    ] + [
        _write(tmp_path, f"org-{algorithm}.pem", _pem(k.key.certificate))
        for algorithm, k in pki.organisation_keys.items()
    ]
    for extra in ([], ["-crl_check", "-CRLfile", str(crl)]):
        result = _openssl("verify", "-x509_strict", "-CAfile", ca, *extra, *leaves)
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.count(": OK") == len(leaves)
    result = _openssl("crl", "-noout", "-CAfile", ca, "-in", crl)
    assert result.returncode == 0, result.stderr
    assert "verify OK" in result.stdout + result.stderr
    # And the root alone, as a self-signed trust anchor under the strict checks.
    result = _openssl("verify", "-x509_strict", "-CAfile", ca, ca)
    assert result.returncode == 0, result.stdout + result.stderr


async def test_crl_fields_and_signature(deployment: Deployment, pki: Pki) -> None:
    root = x509.load_der_x509_certificate(pki.root_der)
    der = await _crl(deployment)
    crl = x509.load_der_x509_crl(der)
    assert asn1_crl.CertificateList.load(der)["tbs_cert_list"]["version"].native == "v2"
    assert crl.issuer == root.subject
    assert crl.signature_algorithm_oid == SignatureAlgorithmOID.ECDSA_WITH_SHA256
    assert crl.is_signature_valid(_ca_public_key(root))
    this_update = crl.last_update_utc
    next_update = crl.next_update_utc
    assert next_update is not None
    assert this_update <= _now() < next_update
    assert next_update - this_update == datetime.timedelta(days=CRL_DAYS)
    assert {e.oid for e in crl.extensions} == {
        ExtensionOID.CRL_NUMBER,
        ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
    }
    assert _crl_number(crl) >= 1
    aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    assert not aki.critical
    root_ski = _extension(root, x509.SubjectKeyIdentifier).value
    assert aki.value.key_identifier == root_ski.digest
    # A CRL that was not reissued is served as it is; its number does not move.
    assert await _crl(deployment) == der
    # No certificate of the module's users or organisation is listed.
    for person in (pki.alice, pki.bob):
        serial = x509.load_der_x509_certificate(person.certificate).serial_number
        assert crl.get_revoked_certificate_by_serial_number(serial) is None


async def test_serial_numbers_are_unique_positive_and_random(deployment: Deployment) -> None:
    count = 24
    await _create_organisation(deployment, "serials", "Serial Numbers Ltd")
    keys = [
        await _create_key(
            deployment, "serials", f"serial-{i:02d}", gateway_pb2.ORGANISATION_KEY_ALGORITHM_EC_P256
        )
        for i in range(count)
    ]
    certificates = [x509.load_der_x509_certificate(k.key.certificate) for k in keys]
    serials = [c.serial_number for c in certificates]
    for certificate, key in zip(certificates, keys, strict=True):
        _check_serial(certificate.serial_number)
        assert key.key.certificate_serial == _hex(certificate)
    assert len(set(serials)) == count
    # Not a counter: consecutive serials are far apart, in both directions.
    gaps = [b - a for a, b in itertools.pairwise(serials)]
    assert all(abs(gap) > 2**64 for gap in gaps)
    assert any(gap > 0 for gap in gaps)
    assert any(gap < 0 for gap in gaps)
    # High entropy: consecutive serials differ in many bit positions (about half of 158 random
    # bits; 30 is more than six standard deviations below), and nearly every position varies.
    low = (1 << 158) - 1
    assert all(bin((a ^ b) & low).count("1") >= 30 for a, b in itertools.pairwise(serials))
    varying = 0
    for a in serials[1:]:
        varying |= (a ^ serials[0]) & low
    assert bin(varying).count("1") >= 150
    # Serials are what identify a certificate: each is GOOD at the CA.
    for key in keys:
        status = await _status(deployment, key.key.certificate_serial)
        assert status.status == gateway_pb2.CERTIFICATE_STATUS_GOOD


# Refused personal requests issue nothing ------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    """A phone with an enrolled key (no certificate yet), its ticket, and an open session."""

    deployment: Deployment
    keystore: Keystore
    ticket: bytes
    session: sdk.SigningSession

    @property
    def user_id(self) -> str:
        return self.keystore.user_id


async def _joint_csr(attempt: Attempt, subject: bytes | None = None) -> bytes:
    return await pkix.build_csr(
        signer=_JointSigner(attempt.session),
        subject=subject or pkix.name({"common_name": attempt.user_id}),
        subject_public_key_info=joint_public_key_spki(attempt.keystore),
    )


async def _flipped_signature(attempt: Attempt) -> tuple[bytes, bytes]:
    csr = bytearray(await _joint_csr(attempt))
    csr[-1] ^= 0x01  # the last octet of the signature BIT STRING
    return attempt.ticket, bytes(csr)


async def _joint_key_signed_by_another(attempt: Attempt) -> tuple[bytes, bytes]:
    """Names the joint key but is signed by another key: no proof of possession."""
    csr = await pkix.build_csr(
        signer=_SoftwareSigner(ed25519.Ed25519PrivateKey.generate()),
        subject=pkix.name({"common_name": attempt.user_id}),
        subject_public_key_info=joint_public_key_spki(attempt.keystore),
    )
    return attempt.ticket, csr


async def _software_key(attempt: Attempt) -> tuple[bytes, bytes]:
    """A valid CSR for a key the cosigner holds no share of."""
    key = ed25519.Ed25519PrivateKey.generate()
    csr = await pkix.build_csr(
        signer=_SoftwareSigner(key),
        subject=pkix.name({"common_name": attempt.user_id}),
        subject_public_key_info=_spki(key.public_key()),
    )
    return attempt.ticket, csr


async def _ec_key(attempt: Attempt) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = await pkix.build_csr(
        signer=_SoftwareSigner(key),
        subject=pkix.name({"common_name": attempt.user_id}),
        subject_public_key_info=_spki(key.public_key()),
    )
    return attempt.ticket, csr


async def _other_subject(attempt: Attempt) -> tuple[bytes, bytes]:
    return attempt.ticket, await _joint_csr(attempt, pkix.name({"common_name": "mallory"}))


async def _extra_subject_attribute(attempt: Attempt) -> tuple[bytes, bytes]:
    subject = pkix.name({"common_name": attempt.user_id, "organization_name": ORG_NAME})
    return attempt.ticket, await _joint_csr(attempt, subject)


async def _other_users_ticket_own_subject(attempt: Attempt) -> tuple[bytes, bytes]:
    _, ticket = await _new_user(attempt.deployment, "other")
    return ticket, await _joint_csr(attempt)


async def _other_users_ticket_their_subject(attempt: Attempt) -> tuple[bytes, bytes]:
    """The joint key, renamed to the ticket's (other) user: the cosigner enrolled it for
    someone else, with another ticket."""
    other, ticket = await _new_user(attempt.deployment, "other")
    return ticket, await _joint_csr(attempt, pkix.name({"common_name": other}))


async def _forged_ticket(attempt: Attempt) -> tuple[bytes, bytes]:
    ticket = bytearray(attempt.ticket)
    ticket[-1] ^= 0x01  # inside the ticket's ECDSA signature
    return bytes(ticket), await _joint_csr(attempt)


async def _garbage_ticket(attempt: Attempt) -> tuple[bytes, bytes]:
    return b"\xff\x00 not a ticket", await _joint_csr(attempt)


async def _garbage(attempt: Attempt) -> tuple[bytes, bytes]:
    return attempt.ticket, b"\x30\x82\x01\x00" + os.urandom(64)


async def _empty(attempt: Attempt) -> tuple[bytes, bytes]:
    return attempt.ticket, b""


async def _oversized(attempt: Attempt) -> tuple[bytes, bytes]:
    return attempt.ticket, await _joint_csr(attempt) + b"\x00" * MAX_CSR_BYTES


async def _truncated(attempt: Attempt) -> tuple[bytes, bytes]:
    return attempt.ticket, (await _joint_csr(attempt))[:-10]


async def _trailing_octets(attempt: Attempt) -> tuple[bytes, bytes]:
    return attempt.ticket, await _joint_csr(attempt) + b"\x00\x00"


async def _certificate_instead(attempt: Attempt) -> tuple[bytes, bytes]:
    return attempt.ticket, await _root(attempt.deployment)


async def _jointly_signed_info(attempt: Attempt, version: int, spki: bytes) -> bytes:
    """A PKCS#10 request laid out by hand (asn1crypto), signed by phone and cosigner."""
    info = asn1_csr.CertificationRequestInfo(
        {
            "version": version,
            "subject": asn1_x509.Name.load(pkix.name({"common_name": attempt.user_id})),
            "subject_pk_info": asn1_keys.PublicKeyInfo.load(spki),
            "attributes": [],
        }
    )
    signature = await attempt.session.sign(info.dump())
    return bytes(
        asn1_csr.CertificationRequest(
            {
                "certification_request_info": info,
                "signature_algorithm": {"algorithm": "ed25519"},
                "signature": signature,
            }
        ).dump()
    )


async def _csr_version_2(attempt: Attempt) -> tuple[bytes, bytes]:
    """PKCS#10 knows only version 1 (0); this one says 2 (1), otherwise honest."""
    spki = joint_public_key_spki(attempt.keystore)
    return attempt.ticket, await _jointly_signed_info(attempt, 1, spki)


#: A SubjectPublicKeyInfo with an algorithm nobody implements (OID 1.2.3.4.5), 32-octet key.
UNKNOWN_SPKI = bytes.fromhex("302b300606042a030405032100") + bytes(range(32))


async def _unknown_key_algorithm(attempt: Attempt) -> tuple[bytes, bytes]:
    return attempt.ticket, await _jointly_signed_info(attempt, 0, UNKNOWN_SPKI)


BadRequest = Callable[[Attempt], Awaitable[tuple[bytes, bytes]]]
BAD_REQUESTS = [
    pytest.param(
        _flipped_signature,
        Code.INVALID_ARGUMENT,
        ("CSR_SIGNATURE_INVALID",),
        id="signature-flipped",
    ),
    pytest.param(
        _joint_key_signed_by_another,
        Code.INVALID_ARGUMENT,
        ("CSR_SIGNATURE_INVALID",),
        id="joint-key-signed-by-another-key",
    ),
    pytest.param(
        _software_key, Code.PERMISSION_DENIED, ("KEY_NOT_ENROLLED",), id="key-not-enrolled"
    ),
    pytest.param(_ec_key, Code.INVALID_ARGUMENT, ("CSR_KEY_UNSUPPORTED",), id="not-ed25519"),
    pytest.param(
        _other_subject, Code.PERMISSION_DENIED, ("SUBJECT_MISMATCH",), id="subject-other-user"
    ),
    pytest.param(
        _extra_subject_attribute,
        Code.PERMISSION_DENIED,
        ("SUBJECT_MISMATCH",),
        id="subject-extra-attribute",
    ),
    pytest.param(
        _other_users_ticket_own_subject,
        Code.PERMISSION_DENIED,
        ("SUBJECT_MISMATCH",),
        id="other-users-ticket",
    ),
    pytest.param(
        _other_users_ticket_their_subject,
        Code.PERMISSION_DENIED,
        ("KEY_NOT_ENROLLED",),
        id="other-users-ticket-and-subject",
    ),
    pytest.param(_forged_ticket, Code.PERMISSION_DENIED, ("TICKET_FORGED",), id="ticket-forged"),
    pytest.param(
        _garbage_ticket, Code.INVALID_ARGUMENT, ("TICKET_MALFORMED",), id="ticket-malformed"
    ),
    pytest.param(_garbage, Code.INVALID_ARGUMENT, ("CSR_MALFORMED",), id="der-garbage"),
    pytest.param(_empty, Code.INVALID_ARGUMENT, ("CSR_MALFORMED",), id="der-empty"),
    pytest.param(_oversized, Code.INVALID_ARGUMENT, ("CSR_MALFORMED",), id="der-oversized"),
    pytest.param(_truncated, Code.INVALID_ARGUMENT, ("CSR_MALFORMED",), id="der-truncated"),
    pytest.param(
        _trailing_octets, Code.INVALID_ARGUMENT, ("CSR_MALFORMED",), id="der-trailing-octets"
    ),
    pytest.param(
        _certificate_instead, Code.INVALID_ARGUMENT, ("CSR_MALFORMED",), id="certificate-not-csr"
    ),
    pytest.param(
        _csr_version_2,
        Code.INVALID_ARGUMENT,
        ("CSR_MALFORMED",),
        id="csr-version-2",
    ),
    pytest.param(
        _unknown_key_algorithm,
        Code.INVALID_ARGUMENT,
        ("CSR_KEY_UNSUPPORTED", "CSR_MALFORMED"),
        id="unknown-key-algorithm",
    ),
]


@pytest.mark.parametrize(("build", "code", "reasons"), BAD_REQUESTS)
async def test_bad_personal_request_is_refused_and_issues_nothing(
    deployment: Deployment, build: BadRequest, code: grpc.StatusCode, reasons: tuple[str, ...]
) -> None:
    keystore, ticket = await _enrol(deployment, "refused")
    issued = _issued(deployment)
    async with _session(deployment, keystore) as session:
        attempt = Attempt(deployment, keystore, ticket, session)
        bad_ticket, bad_csr = await build(attempt)
        async with deployment.public_channel("gateway") as channel:
            await _expect(
                _public(channel).RequestPersonalCertificate(
                    gateway_pb2.RequestPersonalCertificateRequest(ticket=bad_ticket, csr=bad_csr)
                ),
                code,
                *reasons,
            )
    assert _issued(deployment) == issued
    await _no_certificate(deployment, keystore.key_id)
    # Nothing was consumed either: the ticket still yields its one certificate.
    personal = await _certify(deployment, keystore, ticket)
    assert _issued(deployment) == issued + 1
    certificate = x509.load_der_x509_certificate(personal.certificate)
    assert certificate.subject == _personal_subject(keystore.user_id)


async def _ticket_signed_in_hsm(deployment: Deployment, user_id: str) -> bytes:
    """A well-formed ticket signed by the gateway's ticket key through the HSM proxy, which the
    gateway itself never issued (nor recorded), for ``user_id``."""
    now = int(time.time())
    claims = tickets.encode(tickets.Claims(secrets.token_hex(16), user_id, now, now + 600))
    async with deployment.channel("hsm-proxy", "admin") as channel:
        hsm = _hsm(channel)
        listed = await hsm.ListKeys(hsm_pb2.ListKeysRequest(purpose=hsm_pb2.KEY_PURPOSE_SERVICE))
        (key,) = [k for k in listed.keys if k.label == TICKET_KEY_LABEL]
        signed = await hsm.SignDigest(
            hsm_pb2.SignDigestRequest(
                key_id=key.key_id,
                mechanism=hsm_pb2.SIGNATURE_MECHANISM_ECDSA_SHA256,
                digest=tickets.signing_digest(claims),
            )
        )
    return tickets.assemble(claims, signed.signature)


async def test_ticket_the_gateway_never_issued_yields_no_certificate(
    deployment: Deployment, pki: Pki
) -> None:
    # (``pki`` made the gateway create its ticket key in the token.)
    user_id = f"ghost-{secrets.token_hex(4)}"  # never registered with the gateway
    ticket = await _ticket_signed_in_hsm(deployment, user_id)
    async with deployment.public_channel("cosigner") as channel:
        keystore = await sdk.enrol(channel, ticket, PIN)
    issued = _issued(deployment)
    refusals = []
    async with (
        _session(deployment, keystore) as session,
        deployment.public_channel("gateway") as channel,
    ):
        for _ in range(2):
            csr = await build_personal_csr(session, keystore)
            try:
                await _public(channel).RequestPersonalCertificate(
                    gateway_pb2.RequestPersonalCertificateRequest(ticket=ticket, csr=csr)
                )
            except grpc.aio.AioRpcError as exc:
                refusals.append(exc.code())
    # The gateway has no record of this ticket: it issues nothing for it.
    assert refusals == [Code.PERMISSION_DENIED, Code.PERMISSION_DENIED]
    assert _issued(deployment) == issued


async def test_used_ticket_yields_no_second_certificate(deployment: Deployment) -> None:
    keystore, ticket = await _enrol(deployment, "once")
    first = await _certify(deployment, keystore, ticket)
    serial = _hex(x509.load_der_x509_certificate(first.certificate))
    issued = _issued(deployment)
    async with (
        _session(deployment, keystore) as session,
        deployment.public_channel("gateway") as channel,
    ):
        fresh_csr = await build_personal_csr(session, keystore)
        for csr in (first.csr, fresh_csr):
            await _expect(
                _public(channel).RequestPersonalCertificate(
                    gateway_pb2.RequestPersonalCertificateRequest(ticket=ticket, csr=csr)
                ),
                Code.PERMISSION_DENIED,
                "TICKET_USED",
            )
        current = await _public(channel).GetPersonalCertificate(
            gateway_pb2.GetPersonalCertificateRequest(key_id=keystore.key_id)
        )
    assert _issued(deployment) == issued
    assert current.certificate == first.certificate
    assert await _key_status(deployment, keystore.key_id) == gateway_pb2.GetKeyStatusResponse(
        revoked=False, certificate_serial=serial
    )


async def test_concurrent_requests_with_one_ticket_issue_one_certificate(
    deployment: Deployment,
) -> None:
    keystore, ticket = await _enrol(deployment, "race")
    async with _session(deployment, keystore) as session:
        csrs = [await build_personal_csr(session, keystore) for _ in range(6)]
    issued = _issued(deployment)
    async with deployment.public_channel("gateway") as channel:
        stub = _public(channel)
        results = await asyncio.gather(
            *(
                stub.RequestPersonalCertificate(
                    gateway_pb2.RequestPersonalCertificateRequest(ticket=ticket, csr=csr)
                )
                for csr in csrs
            ),
            return_exceptions=True,
        )
    granted = [r for r in results if isinstance(r, gateway_pb2.RequestPersonalCertificateResponse)]
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(granted) == 1
    assert len(refused) == len(csrs) - 1
    assert {(e.code(), reason_of(e)) for e in refused} == {(Code.PERMISSION_DENIED, "TICKET_USED")}
    assert _issued(deployment) == issued + 1


async def test_csr_extension_requests_are_ignored(deployment: Deployment, pki: Pki) -> None:
    """A jointly signed CSR asking to be a CA gets the personal profile, nothing more."""
    keystore, ticket = await _enrol(deployment, "greedy")
    spki = joint_public_key_spki(keystore)
    info = asn1_csr.CertificationRequestInfo(
        {
            "version": "v1",
            "subject": asn1_x509.Name.load(pkix.name({"common_name": keystore.user_id})),
            "subject_pk_info": asn1_keys.PublicKeyInfo.load(spki),
            "attributes": [
                {
                    "type": "extension_request",
                    "values": [
                        [
                            {
                                "extn_id": "basic_constraints",
                                "critical": True,
                                "extn_value": {"ca": True},
                            },
                            {
                                "extn_id": "key_usage",
                                "critical": True,
                                "extn_value": {"key_cert_sign", "crl_sign"},
                            },
                            {
                                "extn_id": "subject_alt_name",
                                "critical": False,
                                "extn_value": [
                                    asn1_x509.GeneralName(name="dns_name", value="evil.example")
                                ],
                            },
                        ]
                    ],
                }
            ],
        }
    )
    async with _session(deployment, keystore) as session:
        signature = await session.sign(info.dump())
    csr_der = asn1_csr.CertificationRequest(
        {
            "certification_request_info": info,
            "signature_algorithm": {"algorithm": "ed25519"},
            "signature": signature,
        }
    ).dump()
    requested = x509.load_der_x509_csr(csr_der)
    assert requested.is_signature_valid
    assert requested.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    async with deployment.public_channel("gateway") as channel:
        reply = await _public(channel).RequestPersonalCertificate(
            gateway_pb2.RequestPersonalCertificateRequest(ticket=ticket, csr=csr_der)
        )
    _check_end_entity(
        x509.load_der_x509_certificate(reply.certificate),
        x509.load_der_x509_certificate(pki.root_der),
        subject=_personal_subject(keystore.user_id),
        spki=spki,
        usage=PERSONAL_USAGE,
        policy=PERSONAL_POLICY_OID,
    )


# Refused organisation requests and callers ----------------------------------------------------


async def _organisation_state(deployment: Deployment) -> tuple[Any, ...]:
    """What a refused request must not change: the CA's records, the organisation's keys and
    certificates, and the organisation keys in the token."""
    async with deployment.channel("gateway", "admin") as channel:
        listed = await _admin(channel).ListOrganisationKeys(
            gateway_pb2.ListOrganisationKeysRequest(organisation_id=ORG_ID)
        )
    async with deployment.channel("hsm-proxy", "admin") as channel:
        token = await _hsm(channel).ListKeys(
            hsm_pb2.ListKeysRequest(purpose=hsm_pb2.KEY_PURPOSE_ORGANISATION)
        )
    crl = x509.load_der_x509_crl(await _crl(deployment))
    return (
        _issued(deployment),
        listed.SerializeToString(deterministic=True),
        sorted(k.key_id for k in token.keys),
        _crl_number(crl),
    )


def _key_request(
    label: str,
    organisation_id: str = ORG_ID,
    algorithm: int = gateway_pb2.ORGANISATION_KEY_ALGORITHM_EC_P256,
) -> gateway_pb2.CreateOrganisationKeyRequest:
    return gateway_pb2.CreateOrganisationKeyRequest(
        organisation_id=organisation_id,
        label=label,
        algorithm=gateway_pb2.OrganisationKeyAlgorithm.ValueType(algorithm),
    )


async def test_bad_organisation_key_requests_are_refused_and_issue_nothing(
    deployment: Deployment, pki: Pki
) -> None:
    before = await _organisation_state(deployment)
    existing = pki.organisation_keys[gateway_pb2.ORGANISATION_KEY_ALGORITHM_EC_P256].key.label
    async with deployment.channel("gateway", "admin") as channel:
        admin = _admin(channel)
        await _expect(
            admin.CreateOrganisationKey(_key_request("nobody-seal", "no-such-organisation")),
            Code.NOT_FOUND,
            "ORGANISATION_NOT_FOUND",
        )
        await _expect(
            admin.ListOrganisationKeys(
                gateway_pb2.ListOrganisationKeysRequest(organisation_id="no-such-organisation")
            ),
            Code.NOT_FOUND,
            "ORGANISATION_NOT_FOUND",
        )
        for algorithm in ALGORITHMS:
            await _expect(
                admin.CreateOrganisationKey(_key_request(existing, algorithm=algorithm)),
                Code.ALREADY_EXISTS,
                "LABEL_IN_USE",
            )
        # Labels are unique among all organisations' keys, not per organisation.
        await admin.CreateOrganisation(
            gateway_pb2.CreateOrganisationRequest(organisation_id="initech", name="Initech")
        )
        await _expect(
            admin.CreateOrganisationKey(_key_request(existing, "initech")),
            Code.ALREADY_EXISTS,
            "LABEL_IN_USE",
        )
        await _expect(
            admin.CreateOrganisationKey(
                _key_request(
                    "no-algorithm", algorithm=gateway_pb2.ORGANISATION_KEY_ALGORITHM_UNSPECIFIED
                )
            ),
            Code.INVALID_ARGUMENT,
            "ALGORITHM_REQUIRED",
        )
        await _expect(
            admin.CreateOrganisationKey(_key_request("no-algorithm", algorithm=99)),
            Code.INVALID_ARGUMENT,
            "ALGORITHM_REQUIRED",
        )
        for label in ("", "has space", "colon:label", "x" * 65, "ünïcode"):
            await _expect(
                admin.CreateOrganisationKey(_key_request(label)),
                Code.INVALID_ARGUMENT,
                "MALFORMED_LABEL",
            )
        await _expect(
            admin.CreateOrganisation(
                gateway_pb2.CreateOrganisationRequest(organisation_id=ORG_ID, name="Again")
            ),
            Code.ALREADY_EXISTS,
            "ORGANISATION_EXISTS",
        )
        initech = await admin.ListOrganisationKeys(
            gateway_pb2.ListOrganisationKeysRequest(organisation_id="initech")
        )
    assert list(initech.keys) == []
    assert await _organisation_state(deployment) == before


async def test_callers_that_are_not_administrators_are_refused(
    deployment: Deployment, pki: Pki
) -> None:
    serial = _hex(x509.load_der_x509_certificate(pki.alice.certificate))
    before = await _organisation_state(deployment)

    async def refused(channel: grpc.aio.Channel, code: grpc.StatusCode) -> None:
        admin = _admin(channel)
        calls: list[Awaitable[object]] = [
            admin.CreateOrganisationKey(_key_request("intruder-seal")),
            admin.CreateOrganisation(
                gateway_pb2.CreateOrganisationRequest(organisation_id="intruder", name="X")
            ),
            admin.ListOrganisationKeys(
                gateway_pb2.ListOrganisationKeysRequest(organisation_id=ORG_ID)
            ),
            admin.RevokeCertificate(
                gateway_pb2.RevokeCertificateRequest(
                    serial=serial, reason=gateway_pb2.REVOCATION_REASON_KEY_COMPROMISE
                )
            ),
            admin.CreateUser(gateway_pb2.CreateUserRequest(user_id="intruder")),
            admin.IssueEnrolmentTicket(
                gateway_pb2.IssueEnrolmentTicketRequest(user_id=pki.alice.keystore.user_id)
            ),
        ]
        for call in calls:
            await _expect(call, code, "CALLER_NOT_AUTHORISED")

    # Internal identities other than the administrator.
    for identity in ("gateway", "cosigner"):
        async with deployment.channel("gateway", identity) as channel:
            await refused(channel, Code.PERMISSION_DENIED)
    # No client certificate at all: the public listener serves the same services.
    async with deployment.public_channel("gateway") as channel:
        await refused(channel, Code.UNAUTHENTICATED)
        await _expect(
            _admin(channel).GetKeyStatus(
                gateway_pb2.GetKeyStatusRequest(key_id=pki.alice.keystore.key_id)
            ),
            Code.UNAUTHENTICATED,
            "CALLER_NOT_AUTHORISED",
        )
    # The internal listener does not even complete a handshake without a client certificate
    # (the same server-authenticated channel to the public listener works: see above).
    ca_pem = deployment.credential("admin").read()[2]
    async with channels.server_tls(deployment.address("gateway"), ca_pem) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _admin(channel).CreateOrganisationKey(_key_request("intruder-seal"), timeout=5)
        assert info.value.code() == Code.UNAVAILABLE
    # The cosigner may ask for a key's status, which is what it needs.
    assert not (await _key_status(deployment, pki.alice.keystore.key_id)).revoked

    assert await _organisation_state(deployment) == before
    status = await _status(deployment, serial)
    assert status.status == gateway_pb2.CERTIFICATE_STATUS_GOOD


# Revocation -----------------------------------------------------------------------------------


async def test_bad_revocation_requests_are_refused_and_change_nothing(
    deployment: Deployment, pki: Pki
) -> None:
    serial = _hex(x509.load_der_x509_certificate(pki.bob.certificate))
    crl_before = await _crl(deployment)
    issued = _issued(deployment)
    key_compromise = gateway_pb2.REVOCATION_REASON_KEY_COMPROMISE
    async with deployment.channel("gateway", "admin") as channel:
        admin = _admin(channel)

        def revoke(serial: str, reason: int = key_compromise) -> Awaitable[object]:
            return admin.RevokeCertificate(
                gateway_pb2.RevokeCertificateRequest(
                    serial=serial, reason=gateway_pb2.RevocationReason.ValueType(reason)
                )
            )

        unknown = "7" + secrets.token_hex(19)
        await _expect(revoke(unknown), Code.NOT_FOUND, "CERTIFICATE_NOT_FOUND")
        for malformed in ("", serial.upper(), "0" + serial, "0x" + serial, serial + "g", "-1"):
            await _expect(revoke(malformed), Code.INVALID_ARGUMENT, "MALFORMED_SERIAL")
        # No reason, or one the API does not offer (certificateHold 6, removeFromCRL 8, AA 10).
        for reason in (gateway_pb2.REVOCATION_REASON_UNSPECIFIED, 6, 8, 10):
            await _expect(revoke(serial, reason), Code.INVALID_ARGUMENT, "REASON_REQUIRED")
    async with deployment.public_channel("gateway") as channel:
        await _expect(
            _public(channel).GetCertificateStatus(
                gateway_pb2.GetCertificateStatusRequest(serial=serial.upper())
            ),
            Code.INVALID_ARGUMENT,
            "MALFORMED_SERIAL",
        )
    assert (await _status(deployment, unknown)) == gateway_pb2.GetCertificateStatusResponse(
        status=gateway_pb2.CERTIFICATE_STATUS_UNKNOWN
    )
    assert (await _status(deployment, serial)) == gateway_pb2.GetCertificateStatusResponse(
        status=gateway_pb2.CERTIFICATE_STATUS_GOOD
    )
    assert not (await _key_status(deployment, pki.bob.keystore.key_id)).revoked
    assert await _crl(deployment) == crl_before
    assert _issued(deployment) == issued


def _openssl_verify_with_crl(
    tmp_path: Path, root_der: bytes, crl_der: bytes, certificate: bytes
) -> subprocess.CompletedProcess[str]:
    ca = _write(tmp_path, "ca.pem", _pem(root_der))
    crl = _write(tmp_path, "crl.pem", _crl_pem(crl_der))
    leaf = _write(tmp_path, "leaf.pem", _pem(certificate))
    return _openssl("verify", "-crl_check", "-CRLfile", crl, "-CAfile", ca, leaf)


async def test_revoked_personal_certificate(
    deployment: Deployment, pki: Pki, tmp_path: Path
) -> None:
    root = x509.load_der_x509_certificate(pki.root_der)
    carol = await _personal(deployment, "carol")
    certificate = x509.load_der_x509_certificate(carol.certificate)
    serial = _hex(certificate)
    key_id = carol.keystore.key_id

    # Before: good everywhere, and the cosigner signs.
    assert (await _status(deployment, serial)) == gateway_pb2.GetCertificateStatusResponse(
        status=gateway_pb2.CERTIFICATE_STATUS_GOOD
    )
    assert await _key_status(deployment, key_id) == gateway_pb2.GetKeyStatusResponse(
        revoked=False, certificate_serial=serial
    )
    async with _session(deployment, carol.keystore) as session:
        await session.sign(b"before revocation")
    crl_before = x509.load_der_x509_crl(await _crl(deployment))
    assert crl_before.get_revoked_certificate_by_serial_number(certificate.serial_number) is None

    started = int(time.time())
    await _revoke(deployment, serial, gateway_pb2.REVOCATION_REASON_KEY_COMPROMISE)
    ended = int(time.time())

    status = await _status(deployment, serial)
    assert status.status == gateway_pb2.CERTIFICATE_STATUS_REVOKED
    assert status.reason == gateway_pb2.REVOCATION_REASON_KEY_COMPROMISE
    assert started <= status.revoked_at_unix <= ended
    assert await _key_status(deployment, key_id) == gateway_pb2.GetKeyStatusResponse(
        revoked=True, certificate_serial=serial
    )

    crl_der = await _crl(deployment)
    crl = x509.load_der_x509_crl(crl_der)
    assert crl.is_signature_valid(_ca_public_key(root))
    assert _crl_number(crl) > _crl_number(crl_before)
    entry = crl.get_revoked_certificate_by_serial_number(certificate.serial_number)
    assert entry is not None
    assert started <= entry.revocation_date_utc.timestamp() <= ended
    reason = entry.extensions.get_extension_for_class(x509.CRLReason)
    assert not reason.critical
    assert reason.value.reason is x509.ReasonFlags.key_compromise
    # Everything revoked before is still listed.
    assert {r.serial_number for r in crl_before} <= {r.serial_number for r in crl}

    result = _openssl_verify_with_crl(tmp_path, pki.root_der, crl_der, carol.certificate)
    assert result.returncode != 0
    assert "certificate revoked" in result.stdout + result.stderr
    still_good = _openssl_verify_with_crl(tmp_path, pki.root_der, crl_der, pki.alice.certificate)
    assert still_good.returncode == 0, still_good.stdout + still_good.stderr

    # The cosigner refuses to open a signing session for the revoked key.
    async with deployment.public_channel("cosigner") as channel:
        session = sdk.SigningSession(channel, carol.keystore, PIN)
        with pytest.raises(ClientError) as info:
            await session.open()
        session.abort()
    assert info.value.reason == "CERTIFICATE_REVOKED"

    # Revoking again is refused, keeps the first reason, and reissues nothing.
    async with deployment.channel("gateway", "admin") as channel:
        await _expect(
            _admin(channel).RevokeCertificate(
                gateway_pb2.RevokeCertificateRequest(
                    serial=serial, reason=gateway_pb2.REVOCATION_REASON_SUPERSEDED
                )
            ),
            Code.FAILED_PRECONDITION,
            "ALREADY_REVOKED",
        )
    assert await _crl(deployment) == crl_der
    assert (
        await _status(deployment, serial)
    ).reason == gateway_pb2.REVOCATION_REASON_KEY_COMPROMISE


async def test_revoked_organisation_certificates_with_every_reason(
    deployment: Deployment, pki: Pki, tmp_path: Path
) -> None:
    root = x509.load_der_x509_certificate(pki.root_der)
    await _create_organisation(deployment, "globex", "Globex Corporation")
    keys = {
        reason: await _create_key(
            deployment,
            "globex",
            f"globex-{i}",
            gateway_pb2.ORGANISATION_KEY_ALGORITHM_RSA_2048
            if i == 0
            else gateway_pb2.ORGANISATION_KEY_ALGORITHM_EC_P256,
        )
        for i, reason in enumerate(REASONS)
    }
    numbers = [_crl_number(x509.load_der_x509_crl(await _crl(deployment)))]
    for reason, key in keys.items():
        await _revoke(deployment, key.key.certificate_serial, reason)
        numbers.append(_crl_number(x509.load_der_x509_crl(await _crl(deployment))))
    # One new CRL per revocation, numbered in order.
    assert numbers == sorted(set(numbers))
    assert len(numbers) == len(keys) + 1

    crl_der = await _crl(deployment)
    crl = x509.load_der_x509_crl(crl_der)
    assert crl.is_signature_valid(_ca_public_key(root))
    for reason, key in keys.items():
        certificate = x509.load_der_x509_certificate(key.key.certificate)
        entry = crl.get_revoked_certificate_by_serial_number(certificate.serial_number)
        assert entry is not None
        assert (
            entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
            is (REASONS[reason])
        )
        status = await _status(deployment, key.key.certificate_serial)
        assert (status.status, status.reason) == (gateway_pb2.CERTIFICATE_STATUS_REVOKED, reason)
        assert (await _key_status(deployment, key.key.key_id)).revoked
        result = _openssl_verify_with_crl(tmp_path, pki.root_der, crl_der, key.key.certificate)
        assert "certificate revoked" in result.stdout + result.stderr, result.stdout
    # The organisation still lists its keys, each with its (now revoked) certificate.
    async with deployment.channel("gateway", "admin") as channel:
        listed = await _admin(channel).ListOrganisationKeys(
            gateway_pb2.ListOrganisationKeysRequest(organisation_id="globex")
        )
    assert sorted(k.certificate for k in listed.keys) == sorted(
        k.key.certificate for k in keys.values()
    )
    # An organisation key is not a personal key: the phone-facing RPC does not serve it.
    async with deployment.public_channel("gateway") as channel:
        await _expect(
            _public(channel).GetPersonalCertificate(
                gateway_pb2.GetPersonalCertificateRequest(
                    key_id=next(iter(keys.values())).key.key_id
                )
            ),
            Code.NOT_FOUND,
            "CERTIFICATE_NOT_FOUND",
        )


# The CA and organisation keys stay in the token ------------------------------------------------


@contextlib.contextmanager
def _token(deployment: Deployment, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A read-only user session on the deployment's SoftHSM2 token, from this process."""
    hsm_dir = deployment.state_dir / "hsm"
    module = HsmProxyConfig().module_path()
    # SoftHSM2 reads its configuration when the module is initialised: unload any earlier copy.
    pkcs11.unload(module)
    monkeypatch.setenv("SOFTHSM2_CONF", str(hsm_dir / "softhsm2.conf"))
    lib = pkcs11.lib(module)
    try:
        token = lib.get_token(token_label=TOKEN_LABEL)
        pin = (hsm_dir / "user.pin").read_text().strip()
        with token.open(user_pin=pin) as session:
            yield session
    finally:
        pkcs11.unload(module)


def _check_private_key_stays_in_token(session: Any, token_label: str, key_id: str) -> Any:
    private = session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=token_label)
    assert bytes(private[Attribute.ID]).hex() == key_id
    assert private[Attribute.TOKEN] is True
    assert private[Attribute.PRIVATE] is True
    assert private[Attribute.SENSITIVE] is True
    assert private[Attribute.EXTRACTABLE] is False
    assert private[Attribute.ALWAYS_SENSITIVE] is True
    assert private[Attribute.NEVER_EXTRACTABLE] is True
    secret_parts = (
        [Attribute.VALUE]
        if private.key_type == KeyType.EC
        else [
            Attribute.PRIVATE_EXPONENT,
            Attribute.PRIME_1,
            Attribute.PRIME_2,
            Attribute.EXPONENT_1,
            Attribute.EXPONENT_2,
            Attribute.COEFFICIENT,
        ]
    )
    for part in secret_parts:
        with pytest.raises(p11e.AttributeSensitive):
            private[part]
    if private.key_type == KeyType.RSA:
        # An RSA private key has no CKA_VALUE at all.
        with pytest.raises((p11e.AttributeSensitive, p11e.AttributeTypeInvalid)):
            private[Attribute.VALUE]
    return private


def test_ca_and_organisation_private_keys_never_leave_the_token(
    deployment: Deployment, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = x509.load_der_x509_certificate(pki.root_der)
    with _token(deployment, monkeypatch) as session:
        ca_public = session.get_key(object_class=ObjectClass.PUBLIC_KEY, label=f"ca:{CA_KEY_LABEL}")
        ca_key_id = bytes(ca_public[Attribute.ID]).hex()
        assert pkcs11.util.ec.encode_ec_public_key(ca_public) == _spki(root.public_key())
        keys = [(f"ca:{CA_KEY_LABEL}", ca_key_id)] + [
            (f"organisation:{k.key.label}", k.key.key_id) for k in pki.organisation_keys.values()
        ]
        # A session key that could wrap (export) another key, if the token allowed it.
        wrapping = session.generate_key(
            KeyType.AES, 256, store=False, capabilities=pkcs11.MechanismFlag.WRAP
        )
        for token_label, key_id in keys:
            private = _check_private_key_stays_in_token(session, token_label, key_id)
            with pytest.raises((p11e.KeyUnextractable, p11e.KeyNotWrappable)):
                wrapping.wrap_key(private, mechanism=Mechanism.AES_KEY_WRAP_PAD)
            # Exactly one private object carries the label: no copy was ever made.
            found = list(
                session.get_objects(
                    {Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.LABEL: token_label}
                )
            )
            assert len(found) == 1
        # No secret-key or data object holds key material next to them.
        assert list(session.get_objects({Attribute.CLASS: ObjectClass.DATA})) == []


# The client SDK refuses certificates it must not trust ----------------------------------------


def _self_made_ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A CA that copies the real root's name but holds its own key."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(CA_SUBJECT)
        .issuer_name(CA_SUBJECT)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(CA_USAGE, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, certificate


def _forged_leaf(
    ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate, keystore: Keystore
) -> x509.Certificate:
    """The personal profile, for the right key and user, issued by ``ca``."""
    now = _now()
    public = ed25519.Ed25519PublicKey.from_public_bytes(keystore.group_public_key)
    return (
        x509.CertificateBuilder()
        .subject_name(_personal_subject(keystore.user_id))
        .issuer_name(ca.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=END_ENTITY_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(PERSONAL_USAGE, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )


def _der(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.DER)


def _sdk_refuses(
    keystore: Keystore,
    certificate: bytes,
    ca_certificate: bytes,
    reason: str,
    trust_anchor: bytes | None = None,
    now: datetime.datetime | None = None,
) -> None:
    with pytest.raises(ClientError) as info:
        verify_personal_certificate(keystore, certificate, ca_certificate, trust_anchor, now)
    assert info.value.reason == reason, info.value.message


async def test_sdk_refuses_certificates_it_must_not_trust(deployment: Deployment, pki: Pki) -> None:
    alice = pki.alice
    root = pki.root_der
    fake_key, fake_ca = _self_made_ca()
    forged = _der(_forged_leaf(fake_key, fake_ca, alice.keystore))

    # The genuine certificate is accepted, pinned or not.
    leaf = verify_personal_certificate(alice.keystore, alice.certificate, root, root)
    assert leaf.serial_number == x509.load_der_x509_certificate(alice.certificate).serial_number

    # Issued by a look-alike CA: does not chain to the CA it came with ...
    _sdk_refuses(alice.keystore, forged, root, "CHAIN_INVALID")
    # ... and the look-alike itself is not the pinned CA.
    _sdk_refuses(alice.keystore, forged, _der(fake_ca), "UNTRUSTED_CA", trust_anchor=root)
    _sdk_refuses(alice.keystore, alice.certificate, root, "UNTRUSTED_CA", _der(fake_ca))
    # A genuine certificate of another user's key.
    _sdk_refuses(alice.keystore, pki.bob.certificate, root, "KEY_MISMATCH")
    # The right key, but the phone belongs to another user.
    renamed = dataclasses.replace(alice.keystore, user_id=pki.bob.keystore.user_id)
    _sdk_refuses(renamed, alice.certificate, root, "SUBJECT_MISMATCH")
    # Tampered with after issuance (one octet of the CA's signature).
    tampered = bytearray(alice.certificate)
    tampered[-1] ^= 0x01
    _sdk_refuses(alice.keystore, bytes(tampered), root, "CHAIN_INVALID")
    # Expired, or not yet valid.
    not_after = x509.load_der_x509_certificate(alice.certificate).not_valid_after_utc
    later = not_after + datetime.timedelta(seconds=1)
    _sdk_refuses(alice.keystore, alice.certificate, root, "CHAIN_INVALID", now=later)
    earlier = _now() - datetime.timedelta(days=1)
    _sdk_refuses(alice.keystore, alice.certificate, root, "CHAIN_INVALID", now=earlier)
    # Not a certificate at all.
    _sdk_refuses(alice.keystore, b"\x30\x00", root, "CERTIFICATE_MALFORMED")
    # An organisation certificate as the CA.
    org = pki.organisation_keys[gateway_pb2.ORGANISATION_KEY_ALGORITHM_EC_P256].key.certificate
    _sdk_refuses(alice.keystore, alice.certificate, org, "CHAIN_INVALID")

    # Fetched from the gateway: pinned to the real CA it verifies, pinned elsewhere it does not.
    async with deployment.public_channel("gateway") as channel:
        fetched = await fetch_personal_certificate(channel, alice.keystore, trust_anchor=root)
        assert fetched.certificate == alice.certificate
        with pytest.raises(ClientError) as info:
            await fetch_personal_certificate(channel, alice.keystore, trust_anchor=_der(fake_ca))
        assert info.value.reason == "UNTRUSTED_CA"
