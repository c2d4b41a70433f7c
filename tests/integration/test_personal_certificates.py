"""Personal certificates (S2): the certificate and its jointly signed request field by field,
extension requests in the CSR ignored, and the client SDK refusing certificates it must not
trust.
"""

from __future__ import annotations

import dataclasses
import datetime
from pathlib import Path

import pytest
from asn1crypto import csr as asn1_csr
from asn1crypto import keys as asn1_keys
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import SignatureAlgorithmOID

from client.certificates import (
    fetch_personal_certificate,
    joint_public_key_spki,
    verify_personal_certificate,
)
from client.errors import ClientError
from client.keystore import Keystore
from mobilesign import pkix
from mobilesign.ca.authority import PERSONAL_POLICY_OID
from mobilesign.testing import Deployment
from mobilesign.v1 import gateway_pb2
from tests.certificate_checks import spki_of
from tests.integration.certificates import (
    CA_DAYS,
    CA_SUBJECT,
    CA_USAGE,
    END_ENTITY_DAYS,
    PERSONAL_USAGE,
    Pki,
    apply_for_certificate,
    check_end_entity,
    enrol,
    personal_subject,
    run_openssl,
    signing_session,
    utc_now,
    write_file,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def deployment(certificates_deployment: Deployment) -> Deployment:
    """The shared HSM proxy, RA/CA, gateway and cosigner."""
    return certificates_deployment


async def test_personal_certificate_fields(pki: Pki) -> None:
    root = x509.load_der_x509_certificate(pki.root_der)
    for person in (pki.alice, pki.bob):
        certificate = x509.load_der_x509_certificate(person.certificate)
        check_end_entity(
            certificate,
            root,
            subject=personal_subject(person.keystore.user_id),
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
        assert csr.subject == personal_subject(person.keystore.user_id)
        assert csr.signature_algorithm_oid == SignatureAlgorithmOID.ED25519
        assert len(csr.attributes) == 0
        assert len(csr.extensions) == 0
        joint = ed25519.Ed25519PublicKey.from_public_bytes(person.keystore.group_public_key)
        assert spki_of(csr.public_key()) == spki_of(joint)
        # The proof of possession is a plain RFC 8032 signature by the joint key.
        joint.verify(csr.signature, csr.tbs_certrequest_bytes)
        request = write_file(tmp_path, "request.pem", csr.public_bytes(serialization.Encoding.PEM))
        result = run_openssl("req", "-verify", "-noout", "-in", request)
        assert result.returncode == 0, result.stderr
        assert "verify OK" in result.stdout + result.stderr


async def test_csr_extension_requests_are_ignored(deployment: Deployment, pki: Pki) -> None:
    """A jointly signed CSR asking to be a CA gets the personal profile, nothing more."""
    keystore, ticket = await enrol(deployment, "greedy")
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
    async with signing_session(deployment, keystore) as session:
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
    reply = await apply_for_certificate(deployment, ticket, csr_der)
    check_end_entity(
        x509.load_der_x509_certificate(reply.certificate),
        x509.load_der_x509_certificate(pki.root_der),
        subject=personal_subject(keystore.user_id),
        spki=spki,
        usage=PERSONAL_USAGE,
        policy=PERSONAL_POLICY_OID,
    )


def _self_made_ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A CA that copies the real root's name but holds its own key."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = utc_now()
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
    now = utc_now()
    public = ed25519.Ed25519PublicKey.from_public_bytes(keystore.group_public_key)
    return (
        x509.CertificateBuilder()
        .subject_name(personal_subject(keystore.user_id))
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
    earlier = utc_now() - datetime.timedelta(days=1)
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
