"""The CA certificate (S1) and the chain: a self-signed root for the CA key in the token, every
issued certificate validated by ``cryptography``'s X.509 verifier and by the ``openssl`` command,
the CRL's fields and signature, and random, unique serial numbers.
"""

from __future__ import annotations

import datetime
import itertools
from pathlib import Path
from typing import Any

import pytest
from asn1crypto import crl as asn1_crl
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtensionOID, SignatureAlgorithmOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    Policy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from mobilesign.testing import Deployment
from mobilesign.v1 import gateway_pb2, hsm_pb2
from tests.certificate_checks import extension_of, spki_of
from tests.integration.certificates import (
    BACKDATE_SLACK,
    CA_DAYS,
    CA_KEY_LABEL,
    CA_SUBJECT,
    CA_USAGE,
    Pki,
    ca_public_key,
    certificate_status,
    check_serial,
    create_key,
    create_organisation,
    crl_number,
    crl_pem_of,
    fetch_crl,
    fetch_root,
    hsm_stub,
    pem_of,
    run_openssl,
    serial_hex,
    utc_now,
    write_file,
)

pytestmark = pytest.mark.integration
CRL_DAYS = 7


@pytest.fixture
def deployment(certificates_deployment: Deployment) -> Deployment:
    """The shared HSM proxy, RA/CA, gateway and cosigner."""
    return certificates_deployment


async def test_ca_certificate_is_a_self_signed_root_for_the_hsm_key(
    deployment: Deployment, pki: Pki
) -> None:
    root = x509.load_der_x509_certificate(pki.root_der)
    assert root.version is x509.Version.v3
    check_serial(root.serial_number)
    assert root.subject == root.issuer == CA_SUBJECT
    now = utc_now()
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
    constraints = extension_of(root, x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca
    key_usage = extension_of(root, x509.KeyUsage)
    assert key_usage.critical
    assert key_usage.value == CA_USAGE
    ski = extension_of(root, x509.SubjectKeyIdentifier)
    assert not ski.critical
    assert ski.value == x509.SubjectKeyIdentifier.from_public_key(ca_public_key(root))

    # The certified key is the CA key in the token: EC P-256, purpose CA.
    async with deployment.channel("hsm-proxy", "admin") as channel:
        listed = await hsm_stub(channel).ListKeys(
            hsm_pb2.ListKeysRequest(purpose=hsm_pb2.KEY_PURPOSE_CA)
        )
    (ca_key,) = [key for key in listed.keys if key.label == CA_KEY_LABEL]
    assert ca_key.algorithm == hsm_pb2.KEY_ALGORITHM_EC_P256
    assert spki_of(root.public_key()) == ca_key.public_key_spki
    assert isinstance(ca_public_key(root).curve, ec.SECP256R1)

    # Every answer carries the same root; the RA publishes it in its state directory too.
    assert pki.alice.ca_certificate == pki.bob.ca_certificate == pki.root_der
    assert (deployment.state_dir / "ra" / "ca.der").read_bytes() == pki.root_der
    assert await fetch_root(deployment) == pki.root_der


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
        .time(now or utc_now())
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
    ca = write_file(tmp_path, "ca.pem", pem_of(pki.root_der))
    crl = write_file(tmp_path, "crl.pem", crl_pem_of(pki.crl))
    leaves = [
        write_file(tmp_path, "alice.pem", pem_of(pki.alice.certificate)),
        write_file(tmp_path, "bob.pem", pem_of(pki.bob.certificate)),
    ] + [
        write_file(tmp_path, f"org-{algorithm}.pem", pem_of(k.key.certificate))
        for algorithm, k in pki.organisation_keys.items()
    ]
    for extra in ([], ["-crl_check", "-CRLfile", str(crl)]):
        result = run_openssl("verify", "-x509_strict", "-CAfile", ca, *extra, *leaves)
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.count(": OK") == len(leaves)
    result = run_openssl("crl", "-noout", "-CAfile", ca, "-in", crl)
    assert result.returncode == 0, result.stderr
    assert "verify OK" in result.stdout + result.stderr
    # And the root alone, as a self-signed trust anchor under the strict checks.
    result = run_openssl("verify", "-x509_strict", "-CAfile", ca, ca)
    assert result.returncode == 0, result.stdout + result.stderr


async def test_crl_fields_and_signature(deployment: Deployment, pki: Pki) -> None:
    root = x509.load_der_x509_certificate(pki.root_der)
    der = await fetch_crl(deployment)
    crl = x509.load_der_x509_crl(der)
    assert asn1_crl.CertificateList.load(der)["tbs_cert_list"]["version"].native == "v2"
    assert crl.issuer == root.subject
    assert crl.signature_algorithm_oid == SignatureAlgorithmOID.ECDSA_WITH_SHA256
    assert crl.is_signature_valid(ca_public_key(root))
    this_update = crl.last_update_utc
    next_update = crl.next_update_utc
    assert next_update is not None
    assert this_update <= utc_now() < next_update
    assert next_update - this_update == datetime.timedelta(days=CRL_DAYS)
    assert {e.oid for e in crl.extensions} == {
        ExtensionOID.CRL_NUMBER,
        ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
    }
    assert crl_number(crl) >= 1
    aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    assert not aki.critical
    root_ski = extension_of(root, x509.SubjectKeyIdentifier).value
    assert aki.value.key_identifier == root_ski.digest
    # A CRL that was not reissued is served as it is; its number does not move.
    assert await fetch_crl(deployment) == der
    # No certificate of the module's users or organisation is listed.
    for person in (pki.alice, pki.bob):
        serial = x509.load_der_x509_certificate(person.certificate).serial_number
        assert crl.get_revoked_certificate_by_serial_number(serial) is None


async def test_serial_numbers_are_unique_positive_and_random(deployment: Deployment) -> None:
    count = 24
    await create_organisation(deployment, "serials", "Serial Numbers Ltd")
    keys = [
        await create_key(
            deployment, "serials", f"serial-{i:02d}", gateway_pb2.ORGANISATION_KEY_ALGORITHM_EC_P256
        )
        for i in range(count)
    ]
    certificates = [x509.load_der_x509_certificate(k.key.certificate) for k in keys]
    serials = [c.serial_number for c in certificates]
    for certificate, key in zip(certificates, keys, strict=True):
        check_serial(certificate.serial_number)
        assert key.key.certificate_serial == serial_hex(certificate)
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
        status = await certificate_status(deployment, key.key.certificate_serial)
        assert status.status == gateway_pb2.CERTIFICATE_STATUS_GOOD
