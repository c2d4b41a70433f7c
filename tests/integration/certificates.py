"""Shared by the RA/CA tests (flows S1 and S2) against real HSM proxy, RA, gateway and cosigner
processes: the CA's expected settings, the certificates issued once for all of them (``Pki``,
made by the ``pki`` fixture), administration and public calls, and field-by-field checks.
"""

from __future__ import annotations

import contextlib
import datetime
import secrets
import sqlite3
import subprocess
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID, SignatureAlgorithmOID

from client import sdk
from client.certificates import request_personal_certificate
from client.keystore import Keystore
from mobilesign import activation, records
from mobilesign.rpc.status import reason_of
from mobilesign.testing import Deployment
from mobilesign.v1 import (
    cosigner_pb2,
    cosigner_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
    hsm_pb2,
    hsm_pb2_grpc,
    ra_pb2,
    ra_pb2_grpc,
)
from tests.certificate_checks import (
    check_end_entity_extensions,
    key_usage,
    spki_of,
)

Code = grpc.StatusCode
Algorithm: TypeAlias = gateway_pb2.OrganisationKeyAlgorithm.ValueType
PIN = "135790"
ORG_ID = "acme"
ORG_NAME = "ACME Trading, Société Anonyme"
#: The RA's built-in CA settings (ra/config.py, mobilesign/ca/authority.py).
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
#: How far the CA backdates notBefore (clock skew allowance), with slack for a slow run.
BACKDATE_SLACK = datetime.timedelta(minutes=10)
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
# Expected settings ----------------------------------------------------------------------------


PERSONAL_USAGE = key_usage(digital_signature=True, content_commitment=True)
CA_USAGE = key_usage(key_cert_sign=True, crl_sign=True)


# What the pki fixture issues ------------------------------------------------------------------


@dataclass(frozen=True)
class Personal:
    """An enrolled phone key with its personal certificate."""

    keystore: Keystore
    ticket: bytes
    certificate: bytes
    ca_certificate: bytes
    csr: bytes
    #: The RA's grant key as the certificate response carried it.
    grant_key_spki: bytes


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


# Calls to the deployment ----------------------------------------------------------------------


def admin_stub(channel: grpc.aio.Channel) -> ra_pb2_grpc.AdminServiceAsyncStub:
    return ra_pb2_grpc.AdminServiceStub(channel)


def registration_stub(channel: grpc.aio.Channel) -> ra_pb2_grpc.RegistrationServiceAsyncStub:
    return ra_pb2_grpc.RegistrationServiceStub(channel)


def public_stub(channel: grpc.aio.Channel) -> gateway_pb2_grpc.GatewayServiceAsyncStub:
    return gateway_pb2_grpc.GatewayServiceStub(channel)


def cosigner_stub(channel: grpc.aio.Channel) -> cosigner_pb2_grpc.CosignerServiceAsyncStub:
    return cosigner_pb2_grpc.CosignerServiceStub(channel)


#: The activation code the RA issued with each ticket the tests asked for: what the administrator
#: hands the user beside the ticket (never to the cosigner).
ACTIVATION_CODES: dict[bytes, bytes] = {}


def remember(issued: ra_pb2.IssueEnrolmentTicketResponse) -> bytes:
    """Keep the activation code of an issued ticket; returns the ticket."""
    ACTIVATION_CODES[issued.ticket] = issued.activation_code
    return issued.ticket


def application_proof(ticket: bytes, csr: bytes) -> bytes:
    """The honest phone's proof for ``csr`` (empty for a ticket the RA never issued here)."""
    code = ACTIVATION_CODES.get(ticket)
    return activation.application_proof(code, csr) if code is not None else b""


async def apply_for_certificate(
    deployment: Deployment, ticket: bytes, csr: bytes, proof: bytes | None = None
) -> cosigner_pb2.RequestPersonalCertificateResponse:
    """What a phone can do: submit a ticket and a CSR at the cosigner's public edge, raw, with
    the proof of the ticket's activation code (the honest one unless ``proof`` is given)."""
    async with deployment.public_channel("cosigner") as channel:
        return await cosigner_stub(channel).RequestPersonalCertificate(
            cosigner_pb2.RequestPersonalCertificateRequest(
                ticket=ticket,
                csr=csr,
                application_proof=application_proof(ticket, csr) if proof is None else proof,
            ),
            timeout=30,
        )


async def certify_at_ra(
    deployment: Deployment,
    ticket: bytes,
    csr: bytes,
    attestation: bytes,
    identity: str = "cosigner",
    proof: bytes | None = None,
) -> ra_pb2.CertifyUserKeyResponse:
    """What the RA checks: CertifyUserKey called directly, by default as the cosigner, with the
    honest phone's proof of the activation code unless ``proof`` is given."""
    async with deployment.channel("ra", identity) as channel:
        return await registration_stub(channel).CertifyUserKey(
            ra_pb2.CertifyUserKeyRequest(
                ticket=ticket,
                csr=csr,
                attestation=attestation,
                application_proof=application_proof(ticket, csr) if proof is None else proof,
            ),
            timeout=30,
        )


def hsm_stub(channel: grpc.aio.Channel) -> hsm_pb2_grpc.HsmServiceAsyncStub:
    return hsm_pb2_grpc.HsmServiceStub(channel)


async def new_user(deployment: Deployment, prefix: str) -> tuple[str, bytes]:
    """A new user and an enrolment ticket for them."""
    user_id = f"{prefix}-{secrets.token_hex(4)}"
    async with deployment.channel("ra", "admin") as channel:
        admin = admin_stub(channel)
        await admin.CreateUser(ra_pb2.CreateUserRequest(user_id=user_id, display_name="T"))
        reply = await admin.IssueEnrolmentTicket(
            ra_pb2.IssueEnrolmentTicketRequest(user_id=user_id, ttl_seconds=600)
        )
    return user_id, remember(reply)


def ticket_id_of(ticket: bytes) -> str:
    """The id a (genuine) ticket names."""
    signed = ra_pb2.SignedEnrolmentTicket.FromString(ticket)
    return ra_pb2.EnrolmentTicketClaims.FromString(signed.claims).ticket_id


def attestation_of(keystore: Keystore, ticket: bytes) -> bytes:
    """The attestation the cosigner makes for a key it enrolled with ``ticket``."""
    return records.KeyAttestation(keystore.key_id, keystore.user_id, ticket_id_of(ticket)).encode()


async def enrol(deployment: Deployment, prefix: str) -> tuple[Keystore, bytes]:
    """A new user whose phone enrolled a joint key (no certificate yet), and the ticket."""
    _, ticket = await new_user(deployment, prefix)
    async with deployment.public_channel("cosigner") as channel:
        keystore = await sdk.enrol(channel, ticket, PIN)
    return keystore, ticket


@contextlib.asynccontextmanager
async def signing_session(
    deployment: Deployment, keystore: Keystore
) -> AsyncIterator[sdk.SigningSession]:
    """An open signing session with the cosigner (device and PIN proven)."""
    async with (
        deployment.public_channel("cosigner") as channel,
        sdk.SigningSession(channel, keystore, PIN) as session,
    ):
        yield session


async def certify(deployment: Deployment, keystore: Keystore, ticket: bytes) -> Personal:
    """The SDK's honest request for a personal certificate (verified by the SDK)."""
    async with (
        signing_session(deployment, keystore) as session,
        deployment.public_channel("cosigner") as cosigner,
    ):
        certificates, csr = await request_personal_certificate(
            cosigner, session, keystore, ticket, ACTIVATION_CODES[ticket]
        )
    return Personal(
        keystore,
        ticket,
        certificates.certificate,
        certificates.ca_certificate,
        csr,
        certificates.grant_key_spki,
    )


async def enrol_and_certify(deployment: Deployment, prefix: str) -> Personal:
    keystore, ticket = await enrol(deployment, prefix)
    return await certify(deployment, keystore, ticket)


async def hsm_key_info(deployment: Deployment, key_id: str) -> hsm_pb2.KeyInfo:
    async with deployment.channel("hsm-proxy", "admin") as channel:
        reply = await hsm_stub(channel).GetPublicKey(hsm_pb2.GetPublicKeyRequest(key_id=key_id))
    return reply.key


async def create_key(
    deployment: Deployment, organisation_id: str, label: str, algorithm: int
) -> OrganisationKey:
    async with deployment.channel("ra", "admin") as channel:
        reply = await admin_stub(channel).CreateOrganisationKey(
            ra_pb2.CreateOrganisationKeyRequest(
                organisation_id=organisation_id,
                label=label,
                algorithm=gateway_pb2.OrganisationKeyAlgorithm.ValueType(algorithm),
            ),
            timeout=60,
        )
    return OrganisationKey(reply.key, reply.csr, await hsm_key_info(deployment, reply.key.key_id))


async def create_organisation(deployment: Deployment, organisation_id: str, name: str) -> None:
    async with deployment.channel("ra", "admin") as channel:
        await admin_stub(channel).CreateOrganisation(
            ra_pb2.CreateOrganisationRequest(organisation_id=organisation_id, name=name)
        )


async def fetch_root(deployment: Deployment) -> bytes:
    async with deployment.public_channel("gateway") as channel:
        reply = await public_stub(channel).GetCaCertificate(gateway_pb2.GetCaCertificateRequest())
    return reply.certificate


async def fetch_crl(deployment: Deployment) -> bytes:
    async with deployment.public_channel("gateway") as channel:
        return (await public_stub(channel).GetCrl(gateway_pb2.GetCrlRequest())).crl


async def setup_pki(deployment: Deployment) -> Pki:
    await create_organisation(deployment, ORG_ID, ORG_NAME)
    organisation_keys = {
        algorithm: await create_key(deployment, ORG_ID, label, algorithm)
        for algorithm, (label, _) in ALGORITHMS.items()
    }
    alice = await enrol_and_certify(deployment, "alice")
    bob = await enrol_and_certify(deployment, "bob.smith@acme.example")
    return Pki(
        await fetch_root(deployment), alice, bob, organisation_keys, await fetch_crl(deployment)
    )


# Checks ---------------------------------------------------------------------------------------


async def expect_refusal(
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


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def ca_public_key(root: x509.Certificate) -> ec.EllipticCurvePublicKey:
    public = root.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    return public


def serial_octets(serial: int) -> int:
    """Length of the DER INTEGER contents (two's complement, so a sign bit is needed)."""
    return serial.bit_length() // 8 + 1


def check_serial(serial: int) -> None:
    assert serial > 0
    assert serial_octets(serial) <= 20
    # At least 64 bits of CSPRNG output (CA/B Forum); the CA uses 159 with the top bit set.
    assert serial.bit_length() >= 64


def check_validity(certificate: x509.Certificate, days: int) -> None:
    now = utc_now()
    not_before = certificate.not_valid_before_utc
    not_after = certificate.not_valid_after_utc
    assert not_before <= now < not_after
    assert now - not_before < BACKDATE_SLACK + datetime.timedelta(minutes=5)
    lifetime = not_after - not_before
    assert (
        datetime.timedelta(days=days) <= lifetime <= datetime.timedelta(days=days) + BACKDATE_SLACK
    )


def check_end_entity(
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
    check_serial(certificate.serial_number)
    check_validity(certificate, END_ENTITY_DAYS)
    assert certificate.subject == subject
    assert certificate.issuer == root.subject == CA_SUBJECT
    assert spki_of(certificate.public_key()) == spki
    assert certificate.signature_algorithm_oid == SignatureAlgorithmOID.ECDSA_WITH_SHA256
    certificate.verify_directly_issued_by(root)

    check_end_entity_extensions(certificate, root, usage=usage, policy=policy, crl_url=CRL_URL)


def personal_subject(user_id: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, user_id)])


def crl_number(crl: x509.CertificateRevocationList) -> int:
    return int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)


def ca_db_path(deployment: Deployment) -> Path:
    return deployment.state_dir / "ra" / "ca.db"


def issued_count(deployment: Deployment) -> int:
    """Certificates in the CA's database (read-only, beside the running RA)."""
    connection = sqlite3.connect(f"file:{ca_db_path(deployment)}?mode=ro", uri=True)
    try:
        (count,) = connection.execute("SELECT COUNT(*) FROM certificates").fetchone()
    finally:
        connection.close()
    return int(count)


async def certificate_status(
    deployment: Deployment, serial: str
) -> gateway_pb2.GetCertificateStatusResponse:
    async with deployment.public_channel("gateway") as channel:
        return await public_stub(channel).GetCertificateStatus(
            gateway_pb2.GetCertificateStatusRequest(serial=serial)
        )


async def key_status(deployment: Deployment, key_id: str) -> ra_pb2.GetKeyStatusResponse:
    async with deployment.channel("ra", "cosigner") as channel:
        return await ra_pb2_grpc.RegistrationServiceStub(channel).GetKeyStatus(
            ra_pb2.GetKeyStatusRequest(key_id=key_id)
        )


def serial_hex(certificate: x509.Certificate) -> str:
    return format(certificate.serial_number, "x")


def pem_of(der: bytes) -> bytes:
    return x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)


def crl_pem_of(der: bytes) -> bytes:
    return x509.load_der_x509_crl(der).public_bytes(serialization.Encoding.PEM)


def run_openssl(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", *map(str, args)], capture_output=True, text=True, check=False, timeout=30
    )


def write_file(directory: Path, name: str, data: bytes) -> Path:
    path = directory / name
    path.write_bytes(data)
    return path
