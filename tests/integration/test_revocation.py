"""Revocation: bad requests change nothing; a revoked personal certificate is listed in the
next CRL, reported by status, refused by OpenSSL and by the cosigner; organisation certificates
revoked with every reason, one new CRL each.
"""

from __future__ import annotations

import secrets
import subprocess
import time
from collections.abc import Awaitable
from pathlib import Path

import pytest
from cryptography import x509

from client import sdk
from client.errors import ClientError
from mobilesign.testing import Deployment
from mobilesign.v1 import gateway_pb2, ra_pb2
from tests.integration.certificates import (
    PIN,
    Code,
    Pki,
    admin_stub,
    ca_public_key,
    certificate_status,
    create_key,
    create_organisation,
    crl_number,
    crl_pem_of,
    enrol_and_certify,
    expect_refusal,
    fetch_crl,
    issued_count,
    key_status,
    pem_of,
    public_stub,
    run_openssl,
    serial_hex,
    signing_session,
    write_file,
)

pytestmark = pytest.mark.integration
REASONS = {
    gateway_pb2.REVOCATION_REASON_KEY_COMPROMISE: x509.ReasonFlags.key_compromise,
    gateway_pb2.REVOCATION_REASON_CA_COMPROMISE: x509.ReasonFlags.ca_compromise,
    gateway_pb2.REVOCATION_REASON_AFFILIATION_CHANGED: x509.ReasonFlags.affiliation_changed,
    gateway_pb2.REVOCATION_REASON_SUPERSEDED: x509.ReasonFlags.superseded,
    gateway_pb2.REVOCATION_REASON_CESSATION_OF_OPERATION: x509.ReasonFlags.cessation_of_operation,
    gateway_pb2.REVOCATION_REASON_PRIVILEGE_WITHDRAWN: x509.ReasonFlags.privilege_withdrawn,
}


@pytest.fixture
def deployment(certificates_deployment: Deployment) -> Deployment:
    """The shared HSM proxy, RA/CA, gateway and cosigner."""
    return certificates_deployment


async def _revoke(deployment: Deployment, serial: str, reason: int) -> None:
    async with deployment.channel("ra", "admin") as channel:
        await admin_stub(channel).RevokeCertificate(
            ra_pb2.RevokeCertificateRequest(
                serial=serial, reason=gateway_pb2.RevocationReason.ValueType(reason)
            )
        )


async def test_bad_revocation_requests_are_refused_and_change_nothing(
    deployment: Deployment, pki: Pki
) -> None:
    serial = serial_hex(x509.load_der_x509_certificate(pki.bob.certificate))
    crl_before = await fetch_crl(deployment)
    issued = issued_count(deployment)
    key_compromise = gateway_pb2.REVOCATION_REASON_KEY_COMPROMISE
    async with deployment.channel("ra", "admin") as channel:
        admin = admin_stub(channel)

        def revoke(serial: str, reason: int = key_compromise) -> Awaitable[object]:
            return admin.RevokeCertificate(
                ra_pb2.RevokeCertificateRequest(
                    serial=serial, reason=gateway_pb2.RevocationReason.ValueType(reason)
                )
            )

        unknown = "7" + secrets.token_hex(19)
        await expect_refusal(revoke(unknown), Code.NOT_FOUND, "CERTIFICATE_NOT_FOUND")
        for malformed in ("", serial.upper(), "0" + serial, "0x" + serial, serial + "g", "-1"):
            await expect_refusal(revoke(malformed), Code.INVALID_ARGUMENT, "MALFORMED_SERIAL")
        # No reason, or one the API does not offer (certificateHold 6, removeFromCRL 8, AA 10).
        for reason in (gateway_pb2.REVOCATION_REASON_UNSPECIFIED, 6, 8, 10):
            await expect_refusal(revoke(serial, reason), Code.INVALID_ARGUMENT, "REASON_REQUIRED")
    async with deployment.public_channel("gateway") as channel:
        await expect_refusal(
            public_stub(channel).GetCertificateStatus(
                gateway_pb2.GetCertificateStatusRequest(serial=serial.upper())
            ),
            Code.INVALID_ARGUMENT,
            "MALFORMED_SERIAL",
        )
    assert (
        await certificate_status(deployment, unknown)
    ) == gateway_pb2.GetCertificateStatusResponse(status=gateway_pb2.CERTIFICATE_STATUS_UNKNOWN)
    assert (
        await certificate_status(deployment, serial)
    ) == gateway_pb2.GetCertificateStatusResponse(status=gateway_pb2.CERTIFICATE_STATUS_GOOD)
    assert not (await key_status(deployment, pki.bob.keystore.key_id)).revoked
    assert await fetch_crl(deployment) == crl_before
    assert issued_count(deployment) == issued


def _openssl_verify_with_crl(
    tmp_path: Path, root_der: bytes, crl_der: bytes, certificate: bytes
) -> subprocess.CompletedProcess[str]:
    ca = write_file(tmp_path, "ca.pem", pem_of(root_der))
    crl = write_file(tmp_path, "crl.pem", crl_pem_of(crl_der))
    leaf = write_file(tmp_path, "leaf.pem", pem_of(certificate))
    return run_openssl("verify", "-crl_check", "-CRLfile", crl, "-CAfile", ca, leaf)


async def test_revoked_personal_certificate(
    deployment: Deployment, pki: Pki, tmp_path: Path
) -> None:
    root = x509.load_der_x509_certificate(pki.root_der)
    carol = await enrol_and_certify(deployment, "carol")
    certificate = x509.load_der_x509_certificate(carol.certificate)
    serial = serial_hex(certificate)
    key_id = carol.keystore.key_id

    # Before: good everywhere, and the cosigner signs.
    assert (
        await certificate_status(deployment, serial)
    ) == gateway_pb2.GetCertificateStatusResponse(status=gateway_pb2.CERTIFICATE_STATUS_GOOD)
    assert await key_status(deployment, key_id) == ra_pb2.GetKeyStatusResponse(
        revoked=False, certificate_serial=serial, certificate=carol.certificate
    )
    async with signing_session(deployment, carol.keystore) as session:
        await session.sign(b"before revocation")
    crl_before = x509.load_der_x509_crl(await fetch_crl(deployment))
    assert crl_before.get_revoked_certificate_by_serial_number(certificate.serial_number) is None

    started = int(time.time())
    await _revoke(deployment, serial, gateway_pb2.REVOCATION_REASON_KEY_COMPROMISE)
    ended = int(time.time())

    status = await certificate_status(deployment, serial)
    assert status.status == gateway_pb2.CERTIFICATE_STATUS_REVOKED
    assert status.reason == gateway_pb2.REVOCATION_REASON_KEY_COMPROMISE
    assert started <= status.revoked_at_unix <= ended
    assert await key_status(deployment, key_id) == ra_pb2.GetKeyStatusResponse(
        revoked=True, certificate_serial=serial, certificate=carol.certificate
    )

    crl_der = await fetch_crl(deployment)
    crl = x509.load_der_x509_crl(crl_der)
    assert crl.is_signature_valid(ca_public_key(root))
    assert crl_number(crl) > crl_number(crl_before)
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
    async with deployment.channel("ra", "admin") as channel:
        await expect_refusal(
            admin_stub(channel).RevokeCertificate(
                ra_pb2.RevokeCertificateRequest(
                    serial=serial, reason=gateway_pb2.REVOCATION_REASON_SUPERSEDED
                )
            ),
            Code.FAILED_PRECONDITION,
            "ALREADY_REVOKED",
        )
    assert await fetch_crl(deployment) == crl_der
    assert (
        await certificate_status(deployment, serial)
    ).reason == gateway_pb2.REVOCATION_REASON_KEY_COMPROMISE


async def test_revoked_organisation_certificates_with_every_reason(
    deployment: Deployment, pki: Pki, tmp_path: Path
) -> None:
    root = x509.load_der_x509_certificate(pki.root_der)
    await create_organisation(deployment, "globex", "Globex Corporation")
    keys = {
        reason: await create_key(
            deployment,
            "globex",
            f"globex-{i}",
            gateway_pb2.ORGANISATION_KEY_ALGORITHM_RSA_2048
            if i == 0
            else gateway_pb2.ORGANISATION_KEY_ALGORITHM_EC_P256,
        )
        for i, reason in enumerate(REASONS)
    }
    numbers = [crl_number(x509.load_der_x509_crl(await fetch_crl(deployment)))]
    for reason, key in keys.items():
        await _revoke(deployment, key.key.certificate_serial, reason)
        numbers.append(crl_number(x509.load_der_x509_crl(await fetch_crl(deployment))))
    # One new CRL per revocation, numbered in order.
    assert numbers == sorted(set(numbers))
    assert len(numbers) == len(keys) + 1

    crl_der = await fetch_crl(deployment)
    crl = x509.load_der_x509_crl(crl_der)
    assert crl.is_signature_valid(ca_public_key(root))
    for reason, key in keys.items():
        certificate = x509.load_der_x509_certificate(key.key.certificate)
        entry = crl.get_revoked_certificate_by_serial_number(certificate.serial_number)
        assert entry is not None
        assert (
            entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
            is (REASONS[reason])
        )
        status = await certificate_status(deployment, key.key.certificate_serial)
        assert (status.status, status.reason) == (gateway_pb2.CERTIFICATE_STATUS_REVOKED, reason)
        assert (await key_status(deployment, key.key.key_id)).revoked
        result = _openssl_verify_with_crl(tmp_path, pki.root_der, crl_der, key.key.certificate)
        assert "certificate revoked" in result.stdout + result.stderr, result.stdout
    # The organisation still lists its keys, each with its (now revoked) certificate.
    async with deployment.channel("ra", "admin") as channel:
        listed = await admin_stub(channel).ListOrganisationKeys(
            ra_pb2.ListOrganisationKeysRequest(organisation_id="globex")
        )
    assert sorted(k.certificate for k in listed.keys) == sorted(
        k.key.certificate for k in keys.values()
    )
    # An organisation key is not a personal key: its id (32 hex digits, not the 64 of a joint
    # key) is refused by the phone-facing RPC before any lookup.
    async with deployment.public_channel("gateway") as channel:
        await expect_refusal(
            public_stub(channel).GetPersonalCertificate(
                gateway_pb2.GetPersonalCertificateRequest(
                    key_id=next(iter(keys.values())).key.key_id
                )
            ),
            Code.INVALID_ARGUMENT,
            "MALFORMED_KEY_ID",
        )
