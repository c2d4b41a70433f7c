"""The PKIX builders with software signers (EC P-256, Ed25519, RSA): what they lay out is parsed
and verified independently with ``cryptography``, field by field."""

from __future__ import annotations

import datetime
from collections.abc import Callable

import pytest
from asn1crypto import core as asn1_core
from asn1crypto import crl as asn1_crl
from asn1crypto import csr as asn1_csr
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtensionOID, NameOID, SignatureAlgorithmOID

from mobilesign import pkix
from tests.certificate_checks import PrivateKey, SoftwareSigner, key_usage, spki_of

UTC = datetime.UTC
NOT_BEFORE = datetime.datetime(2026, 3, 1, 8, 30, 15, tzinfo=UTC)
NOT_AFTER = datetime.datetime(2027, 3, 1, 8, 30, 15, tzinfo=UTC)
POLICY = "2.25.18231653970288761229732193313012031650"
CRL_URL = "http://pki.example.invalid/root.crl"
#: asn1crypto's reason names, as the CA stores them, and what RFC 5280 calls them.
REASONS = {
    "key_compromise": x509.ReasonFlags.key_compromise,
    "ca_compromise": x509.ReasonFlags.ca_compromise,
    "affiliation_changed": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessation_of_operation": x509.ReasonFlags.cessation_of_operation,
    "privilege_withdrawn": x509.ReasonFlags.privilege_withdrawn,
}


_RSA_KEY: list[rsa.RSAPrivateKey] = []


def _rsa_key() -> rsa.RSAPrivateKey:
    if not _RSA_KEY:
        _RSA_KEY.append(rsa.generate_private_key(65537, 2048))
    return _RSA_KEY[0]


KEYS: dict[str, Callable[[], PrivateKey]] = {
    "ec-p256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "ed25519": ed25519.Ed25519PrivateKey.generate,
    "rsa-2048": _rsa_key,
}
SIGNATURE_OIDS = {
    "ec-p256": SignatureAlgorithmOID.ECDSA_WITH_SHA256,
    "ed25519": SignatureAlgorithmOID.ED25519,
    "rsa-2048": SignatureAlgorithmOID.RSA_WITH_SHA256,
}


@pytest.fixture(params=list(KEYS))
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def signer(kind: str) -> SoftwareSigner:
    return SoftwareSigner(KEYS[kind]())


def _key_id(spki: bytes) -> bytes:
    public = serialization.load_der_public_key(spki)
    return x509.SubjectKeyIdentifier.from_public_key(public).digest  # type: ignore[arg-type]


CA_NAME = pkix.name({"common_name": "Test Root CA", "organization_name": "Test"})


async def _root(
    signer: SoftwareSigner,
    not_before: datetime.datetime = NOT_BEFORE,
    not_after: datetime.datetime = NOT_AFTER,
) -> bytes:
    return await pkix.build_certificate(
        signer=signer,
        serial=pkix.random_serial(),
        issuer=CA_NAME,
        subject=CA_NAME,
        subject_public_key_info=signer.spki,
        not_before=not_before,
        not_after=not_after,
        extensions=[
            pkix.basic_constraints(ca=True),
            pkix.key_usage("key_cert_sign", "crl_sign"),
            pkix.subject_key_identifier(_key_id(signer.spki)),
        ],
    )


async def test_self_signed_ca_certificate(kind: str, signer: SoftwareSigner) -> None:
    serial = pkix.random_serial()
    der = await pkix.build_certificate(
        signer=signer,
        serial=serial,
        issuer=CA_NAME,
        subject=CA_NAME,
        subject_public_key_info=signer.spki,
        not_before=NOT_BEFORE,
        not_after=NOT_AFTER,
        extensions=[
            pkix.basic_constraints(ca=True),
            pkix.key_usage("key_cert_sign", "crl_sign"),
            pkix.subject_key_identifier(_key_id(signer.spki)),
        ],
    )
    assert signer.calls == 1
    certificate = x509.load_der_x509_certificate(der)
    assert certificate.version is x509.Version.v3
    assert certificate.serial_number == serial
    assert certificate.issuer == certificate.subject
    assert certificate.subject == x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test"),
            x509.NameAttribute(NameOID.COMMON_NAME, "Test Root CA"),
        ]
    )
    assert certificate.not_valid_before_utc == NOT_BEFORE
    assert certificate.not_valid_after_utc == NOT_AFTER
    assert spki_of(certificate.public_key()) == signer.spki
    assert certificate.signature_algorithm_oid == SIGNATURE_OIDS[kind]
    certificate.verify_directly_issued_by(certificate)

    constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value == x509.BasicConstraints(ca=True, path_length=None)
    usage = certificate.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value == key_usage(key_cert_sign=True, crl_sign=True)
    ski = certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert not ski.critical
    assert ski.value == x509.SubjectKeyIdentifier.from_public_key(certificate.public_key())

    # The signature algorithm inside the TBS is the one outside it (RFC 5280 4.1.1.2).
    parsed = asn1_x509.Certificate.load(der)
    assert parsed["tbs_certificate"]["signature"].dump() == parsed["signature_algorithm"].dump()


async def test_end_entity_certificate_with_every_extension(
    kind: str, signer: SoftwareSigner
) -> None:
    root = x509.load_der_x509_certificate(await _root(signer))
    holder = ed25519.Ed25519PrivateKey.generate().public_key()
    serial = pkix.random_serial()
    other_policy = "1.3.6.1.4.1.99999.1"
    der = await pkix.build_certificate(
        signer=signer,
        serial=serial,
        issuer=root.subject.public_bytes(),
        subject=pkix.name({"common_name": "alice@example.com"}),
        subject_public_key_info=spki_of(holder),
        not_before=NOT_BEFORE,
        not_after=NOT_AFTER,
        extensions=[
            pkix.basic_constraints(ca=False),
            pkix.key_usage("digital_signature", "non_repudiation"),
            pkix.certificate_policies(POLICY, other_policy),
            pkix.subject_key_identifier(_key_id(spki_of(holder))),
            pkix.authority_key_identifier(_key_id(signer.spki)),
            pkix.crl_distribution_point(CRL_URL),
        ],
    )
    certificate = x509.load_der_x509_certificate(der)
    certificate.verify_directly_issued_by(root)
    assert certificate.issuer == root.subject
    assert certificate.subject == x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, "alice@example.com")]
    )
    assert certificate.serial_number == serial
    assert spki_of(certificate.public_key()) == spki_of(holder)
    assert [e.oid for e in certificate.extensions] == [
        ExtensionOID.BASIC_CONSTRAINTS,
        ExtensionOID.KEY_USAGE,
        ExtensionOID.CERTIFICATE_POLICIES,
        ExtensionOID.SUBJECT_KEY_IDENTIFIER,
        ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
        ExtensionOID.CRL_DISTRIBUTION_POINTS,
    ]
    extensions = {e.oid: e for e in certificate.extensions}
    assert [e.critical for e in certificate.extensions] == [True, True, False, False, False, False]
    assert extensions[ExtensionOID.BASIC_CONSTRAINTS].value == x509.BasicConstraints(
        ca=False, path_length=None
    )
    assert extensions[ExtensionOID.KEY_USAGE].value == key_usage(
        digital_signature=True, content_commitment=True
    )
    assert extensions[ExtensionOID.CERTIFICATE_POLICIES].value == x509.CertificatePolicies(
        [
            x509.PolicyInformation(x509.ObjectIdentifier(POLICY), None),
            x509.PolicyInformation(x509.ObjectIdentifier(other_policy), None),
        ]
    )
    assert extensions[ExtensionOID.SUBJECT_KEY_IDENTIFIER].value == (
        x509.SubjectKeyIdentifier.from_public_key(holder)
    )
    root_ski = root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert extensions[ExtensionOID.AUTHORITY_KEY_IDENTIFIER].value == (
        x509.AuthorityKeyIdentifier(root_ski.digest, None, None)
    )
    assert extensions[ExtensionOID.CRL_DISTRIBUTION_POINTS].value == x509.CRLDistributionPoints(
        [x509.DistributionPoint([x509.UniformResourceIdentifier(CRL_URL)], None, None, None)]
    )


@pytest.mark.parametrize(
    "usages",
    [
        ("digital_signature",),
        ("digital_signature", "non_repudiation", "key_encipherment"),
        ("key_cert_sign", "crl_sign"),
        ("decipher_only", "key_agreement"),
    ],
)
async def test_key_usage_bits_are_der(usages: tuple[str, ...]) -> None:
    """Named bits in DER drop trailing zero bits; cryptography refuses anything else."""
    signer = SoftwareSigner(ed25519.Ed25519PrivateKey.generate())
    der = await pkix.build_certificate(
        signer=signer,
        serial=pkix.random_serial(),
        issuer=CA_NAME,
        subject=CA_NAME,
        subject_public_key_info=signer.spki,
        not_before=NOT_BEFORE,
        not_after=NOT_AFTER,
        extensions=[pkix.key_usage(*usages)],
    )
    usage = x509.load_der_x509_certificate(der).extensions.get_extension_for_class(x509.KeyUsage)
    names = {"non_repudiation": "content_commitment"}
    expected = key_usage(**{names.get(u, u): True for u in usages})
    assert usage.value == expected


async def test_certificate_request(kind: str, signer: SoftwareSigner) -> None:
    subject = pkix.name({"common_name": "acme-seal", "organization_name": "ACME, Société"})
    der = await pkix.build_csr(signer=signer, subject=subject, subject_public_key_info=signer.spki)
    csr = x509.load_der_x509_csr(der)
    assert csr.is_signature_valid
    assert csr.signature_algorithm_oid == SIGNATURE_OIDS[kind]
    assert csr.subject == x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ACME, Société"),
            x509.NameAttribute(NameOID.COMMON_NAME, "acme-seal"),
        ]
    )
    assert spki_of(csr.public_key()) == signer.spki
    assert len(csr.attributes) == 0
    parsed = asn1_csr.CertificationRequest.load(der)
    assert parsed["certification_request_info"]["version"].native == "v1"


async def test_certificate_request_signed_by_another_key_does_not_verify(kind: str) -> None:
    claimed = SoftwareSigner(KEYS[kind]())
    # Another key of the same type (the cached RSA key would be the same one).
    other = rsa.generate_private_key(65537, 2048) if kind == "rsa-2048" else KEYS[kind]()
    actual = SoftwareSigner(other)
    assert actual.spki != claimed.spki
    der = await pkix.build_csr(
        signer=actual,
        subject=pkix.name({"common_name": "mallory"}),
        subject_public_key_info=claimed.spki,
    )
    assert not x509.load_der_x509_csr(der).is_signature_valid


@pytest.mark.parametrize("kind", ["ec-p256", "ed25519"])
async def test_crl(kind: str) -> None:
    signer = SoftwareSigner(KEYS[kind]())
    root = x509.load_der_x509_certificate(await _root(signer))
    revoked = [
        pkix.RevokedEntry(
            serial=pkix.random_serial(),
            revoked_at=NOT_BEFORE + datetime.timedelta(hours=i),
            reason=reason,
        )
        for i, reason in enumerate(REASONS)
    ]
    this_update = NOT_BEFORE + datetime.timedelta(days=1)
    next_update = this_update + datetime.timedelta(days=7)
    der = await pkix.build_crl(
        signer=signer,
        issuer=root.subject.public_bytes(),
        number=42,
        this_update=this_update,
        next_update=next_update,
        revoked=revoked,
        authority_key_identifier=_key_id(signer.spki),
    )
    crl = x509.load_der_x509_crl(der)
    assert asn1_crl.CertificateList.load(der)["tbs_cert_list"]["version"].native == "v2"
    assert crl.is_signature_valid(root.public_key())  # type: ignore[arg-type]
    assert crl.signature_algorithm_oid == SIGNATURE_OIDS[kind]
    assert crl.issuer == root.subject
    assert crl.last_update_utc == this_update
    assert crl.next_update_utc == next_update
    number = crl.extensions.get_extension_for_class(x509.CRLNumber)
    assert not number.critical
    assert number.value.crl_number == 42
    aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    assert not aki.critical
    assert aki.value.key_identifier == _key_id(signer.spki)
    assert len(crl) == len(revoked)
    for entry in revoked:
        listed = crl.get_revoked_certificate_by_serial_number(entry.serial)
        assert listed is not None
        assert listed.revocation_date_utc == entry.revoked_at
        reason = listed.extensions.get_extension_for_class(x509.CRLReason)
        assert not reason.critical
        assert reason.value.reason is REASONS[entry.reason]


async def test_empty_crl_has_no_revoked_certificates_field() -> None:
    """RFC 5280 5.1.2.6: with no revoked certificates the list is absent, not empty."""
    signer = SoftwareSigner(ec.generate_private_key(ec.SECP256R1()))
    der = await pkix.build_crl(
        signer=signer,
        issuer=CA_NAME,
        number=1,
        this_update=NOT_BEFORE,
        next_update=NOT_AFTER,
        revoked=[],
        authority_key_identifier=_key_id(signer.spki),
    )
    crl = x509.load_der_x509_crl(der)
    assert crl.is_signature_valid(signer.public_key)
    assert len(crl) == 0
    tbs = asn1_crl.CertificateList.load(der)["tbs_cert_list"]
    # Void: the optional field is not in the encoding at all.
    assert isinstance(tbs["revoked_certificates"], asn1_core.Void)
    assert tbs["crl_extensions"].native is not None


# Time encoding: UTCTime through 2049, GeneralizedTime from 2050 (RFC 5280 4.1.2.5) -----------


def _validity(der: bytes) -> tuple[str, str]:
    validity = asn1_x509.Certificate.load(der)["tbs_certificate"]["validity"]
    return validity["not_before"].name, validity["not_after"].name


async def _certificate_valid(not_before: datetime.datetime, not_after: datetime.datetime) -> bytes:
    signer = SoftwareSigner(ed25519.Ed25519PrivateKey.generate())
    return await _root(signer, not_before, not_after)


LAST_UTC_TIME = datetime.datetime(2049, 12, 31, 23, 59, 59, tzinfo=UTC)
FIRST_GENERALIZED_TIME = datetime.datetime(2050, 1, 1, tzinfo=UTC)


async def test_time_switches_from_utc_time_to_generalized_time_at_2050() -> None:
    der = await _certificate_valid(LAST_UTC_TIME, FIRST_GENERALIZED_TIME)
    assert _validity(der) == ("utc_time", "general_time")
    assert b"\x17\x0d491231235959Z" in der
    assert b"\x18\x0f20500101000000Z" in der
    certificate = x509.load_der_x509_certificate(der)
    assert certificate.not_valid_before_utc == LAST_UTC_TIME
    assert certificate.not_valid_after_utc == FIRST_GENERALIZED_TIME

    far = datetime.datetime(2123, 6, 30, 12, 0, 1, tzinfo=UTC)
    der = await _certificate_valid(FIRST_GENERALIZED_TIME, far)
    assert _validity(der) == ("general_time", "general_time")
    assert x509.load_der_x509_certificate(der).not_valid_after_utc == far

    first = datetime.datetime(1950, 1, 1, tzinfo=UTC)
    der = await _certificate_valid(first, LAST_UTC_TIME)
    assert _validity(der) == ("utc_time", "utc_time")
    assert b"\x17\x0d500101000000Z" in der
    assert x509.load_der_x509_certificate(der).not_valid_before_utc == first


async def test_times_are_converted_to_utc_before_choosing_the_encoding() -> None:
    # 23:30 on 31 December 2049 one hour west of Greenwich is 00:30 UTC in 2050.
    west = datetime.timezone(datetime.timedelta(hours=-1))
    local = datetime.datetime(2049, 12, 31, 23, 30, tzinfo=west)
    # 00:30 on 1 January 2050 two hours east is 22:30 UTC in 2049.
    east = datetime.timezone(datetime.timedelta(hours=2))
    early = datetime.datetime(2050, 1, 1, 0, 30, tzinfo=east)
    der = await _certificate_valid(early, local)
    assert _validity(der) == ("utc_time", "general_time")
    certificate = x509.load_der_x509_certificate(der)
    assert certificate.not_valid_before_utc == datetime.datetime(2049, 12, 31, 22, 30, tzinfo=UTC)
    assert certificate.not_valid_after_utc == datetime.datetime(2050, 1, 1, 0, 30, tzinfo=UTC)


async def test_fractional_seconds_are_dropped() -> None:
    """DER times carry no fractions (RFC 5280 4.1.2.5.2): they are truncated, not encoded."""
    with_micro = NOT_BEFORE.replace(microsecond=999_999)
    der = await _certificate_valid(with_micro, FIRST_GENERALIZED_TIME.replace(microsecond=1))
    certificate = x509.load_der_x509_certificate(der)
    assert certificate.not_valid_before_utc == NOT_BEFORE
    assert certificate.not_valid_after_utc == FIRST_GENERALIZED_TIME
    assert b"\x18\x0f20500101000000Z" in der


async def test_crl_times_switch_at_2050_too() -> None:
    signer = SoftwareSigner(ed25519.Ed25519PrivateKey.generate())
    der = await pkix.build_crl(
        signer=signer,
        issuer=CA_NAME,
        number=7,
        this_update=LAST_UTC_TIME,
        next_update=FIRST_GENERALIZED_TIME,
        revoked=[pkix.RevokedEntry(1, FIRST_GENERALIZED_TIME, "superseded")],
        authority_key_identifier=_key_id(signer.spki),
    )
    tbs = asn1_crl.CertificateList.load(der)["tbs_cert_list"]
    assert tbs["this_update"].name == "utc_time"
    assert tbs["next_update"].name == "general_time"
    assert tbs["revoked_certificates"][0]["revocation_date"].name == "general_time"
    crl = x509.load_der_x509_crl(der)
    assert crl.last_update_utc == LAST_UTC_TIME
    assert crl.next_update_utc == FIRST_GENERALIZED_TIME


async def test_dates_before_1950_are_never_misencoded() -> None:
    """UTCTime cannot say 1949 (it would read as 2049): refused or GeneralizedTime, never
    silently wrong."""
    old = datetime.datetime(1949, 12, 31, 23, 59, 59, tzinfo=UTC)
    try:
        der = await _certificate_valid(old, NOT_AFTER)
    except ValueError:
        return
    assert x509.load_der_x509_certificate(der).not_valid_before_utc == old


# Serial numbers and names -------------------------------------------------------------------


def test_random_serials_are_positive_20_octets_and_uniformly_random() -> None:
    serials = [pkix.random_serial() for _ in range(2000)]
    assert len(set(serials)) == len(serials)
    for serial in serials:
        assert serial > 0
        assert serial.bit_length() == 159  # top bit fixed: always 20 octets, never 21
        assert serial.bit_length() // 8 + 1 == 20
    # Each of the 158 random bit positions is set about half the time (1000 +- 22.4; the bounds
    # are more than 9 standard deviations out).
    for bit in range(158):
        ones = sum((serial >> bit) & 1 for serial in serials)
        assert 800 <= ones <= 1200, (bit, ones)


async def test_random_serial_round_trips_through_a_certificate() -> None:
    signer = SoftwareSigner(ec.generate_private_key(ec.SECP256R1()))
    der = await _root(signer)
    serial = x509.load_der_x509_certificate(der).serial_number
    parsed = asn1_x509.Certificate.load(der)["tbs_certificate"]["serial_number"]
    assert parsed.native == serial
    assert len(parsed.contents) == 20


def test_name_attributes() -> None:
    der = pkix.name({"common_name": "bob.smith@acme.example", "organization_name": "Ü, Ltd+Co"})
    parsed = asn1_x509.Name.load(der)
    attributes = [(a["type"].native, a["value"].native) for rdn in parsed.chosen for a in rdn]
    assert sorted(attributes) == [
        ("common_name", "bob.smith@acme.example"),
        ("organization_name", "Ü, Ltd+Co"),
    ]
    # One attribute per RDN, UTF8String (RFC 5280 4.1.2.4: MUST for new certificates).
    assert all(len(rdn) == 1 for rdn in parsed.chosen)
    assert {a["value"].name for rdn in parsed.chosen for a in rdn} == {"utf8_string"}
