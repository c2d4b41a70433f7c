"""The certification authority with a software signer (EC P-256 in this process), the gateway's
SQLite repository on a temporary file and a clock the tests set: what it issues is parsed and
checked with ``cryptography``, field by field, and path-validated with
:func:`mobilesign.pkix.verify_issued_by`."""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtensionOID, NameOID, SignatureAlgorithmOID

from mobilesign import pkix
from mobilesign.ca import CaError, CaSettings, CertificateAuthority, Status
from mobilesign.ca.authority import ORGANISATION_POLICY_OID, PERSONAL_POLICY_OID
from mobilesign.errors import Kind
from ra.ca_repository import CaStore
from tests.certificate_checks import (
    SoftwareSigner,
    check_end_entity_extensions,
    extension_of,
    key_usage,
    spki_of,
)

UTC = datetime.UTC
T0 = datetime.datetime(2026, 5, 4, 10, 0, 0, tzinfo=UTC)
SKEW = datetime.timedelta(minutes=5)
SETTINGS = CaSettings()
CA_KEY_ID = "ca-key-1"
CA_SUBJECT = x509.Name(
    [
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mobilesign"),
        x509.NameAttribute(NameOID.COMMON_NAME, "mobilesign Root CA"),
    ]
)
REASONS = {
    "key_compromise": x509.ReasonFlags.key_compromise,
    "ca_compromise": x509.ReasonFlags.ca_compromise,
    "affiliation_changed": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessation_of_operation": x509.ReasonFlags.cessation_of_operation,
    "privilege_withdrawn": x509.ReasonFlags.privilege_withdrawn,
}


class Clock:
    """The CA's clock: a fixed time the test moves forward."""

    def __init__(self, now: datetime.datetime) -> None:
        self.now = now

    def __call__(self) -> datetime.datetime:
        return self.now

    def advance(self, delta: datetime.timedelta) -> None:
        self.now += delta


@pytest.fixture
def signer() -> SoftwareSigner:
    return SoftwareSigner(ec.generate_private_key(ec.SECP256R1()))


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[CaStore]:
    store = await CaStore.open(tmp_path / "ca.db")
    yield store
    await store.close()


@pytest.fixture
async def ca(signer: SoftwareSigner, store: CaStore, clock: Clock) -> CertificateAuthority:
    return await CertificateAuthority.start(signer, CA_KEY_ID, signer.spki, store, SETTINGS, clock)


def _root(ca: CertificateAuthority) -> x509.Certificate:
    return x509.load_der_x509_certificate(ca.root_der)


async def _crl(ca: CertificateAuthority) -> x509.CertificateRevocationList:
    return x509.load_der_x509_crl(await ca.crl())


def _crl_number(crl: x509.CertificateRevocationList) -> int:
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


# The root ------------------------------------------------------------------------------------


async def test_root_is_self_signed_for_the_signer_key(
    ca: CertificateAuthority, signer: SoftwareSigner
) -> None:
    root = _root(ca)
    assert root.version is x509.Version.v3
    assert root.subject == root.issuer == CA_SUBJECT
    assert spki_of(root.public_key()) == signer.spki
    assert root.signature_algorithm_oid == SignatureAlgorithmOID.ECDSA_WITH_SHA256
    root.verify_directly_issued_by(root)
    assert root.serial_number > 0
    assert root.not_valid_before_utc == T0 - SKEW
    assert root.not_valid_after_utc == T0 + datetime.timedelta(days=SETTINGS.root_validity_days)

    assert {e.oid for e in root.extensions} == {
        ExtensionOID.BASIC_CONSTRAINTS,
        ExtensionOID.KEY_USAGE,
        ExtensionOID.SUBJECT_KEY_IDENTIFIER,
    }
    constraints = extension_of(root, x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca
    usage = extension_of(root, x509.KeyUsage)
    assert usage.critical
    assert usage.value == key_usage(key_cert_sign=True, crl_sign=True)
    ski = extension_of(root, x509.SubjectKeyIdentifier)
    assert not ski.critical
    assert ski.value == x509.SubjectKeyIdentifier.from_public_key(signer.key.public_key())


async def test_start_creates_the_root_and_a_first_crl_once(
    signer: SoftwareSigner, store: CaStore, clock: Clock
) -> None:
    first = await CertificateAuthority.start(signer, CA_KEY_ID, signer.spki, store, SETTINGS, clock)
    assert signer.calls == 2  # the root and the first CRL
    assert await store.authority() == (CA_KEY_ID, first.root_der)
    crl = await _crl(first)
    assert _crl_number(crl) == 1
    assert list(crl) == []

    clock.advance(datetime.timedelta(hours=1))
    again = await CertificateAuthority.start(signer, CA_KEY_ID, signer.spki, store, SETTINGS, clock)
    assert again.root_der == first.root_der
    assert signer.calls == 2
    with pytest.raises(RuntimeError):
        await CertificateAuthority.start(signer, "another-key", signer.spki, store, SETTINGS, clock)


async def test_root_validates_as_its_own_trust_anchor(ca: CertificateAuthority) -> None:
    root = _root(ca)
    pkix.verify_issued_by(root, root, T0)


# Organisation and personal certificates ------------------------------------------------------


def _check_end_entity(
    certificate: x509.Certificate,
    root: x509.Certificate,
    *,
    subject: x509.Name,
    spki: bytes,
    usage: x509.KeyUsage,
    policy: str,
    issued_at: datetime.datetime,
) -> None:
    assert certificate.version is x509.Version.v3
    assert certificate.serial_number > 0
    assert certificate.serial_number.bit_length() >= 64
    assert certificate.subject == subject
    assert certificate.issuer == root.subject
    assert spki_of(certificate.public_key()) == spki
    assert certificate.signature_algorithm_oid == SignatureAlgorithmOID.ECDSA_WITH_SHA256
    certificate.verify_directly_issued_by(root)
    pkix.verify_issued_by(certificate, root, issued_at)
    assert certificate.not_valid_before_utc == issued_at - SKEW
    assert certificate.not_valid_after_utc == min(
        issued_at + datetime.timedelta(days=SETTINGS.certificate_validity_days),
        root.not_valid_after_utc,
    )

    check_end_entity_extensions(
        certificate, root, usage=usage, policy=policy, crl_url=SETTINGS.crl_url
    )


@pytest.mark.parametrize("kind", ["ec-p256", "rsa-2048"])
async def test_organisation_certificate_fields(ca: CertificateAuthority, kind: str) -> None:
    is_rsa = kind == "rsa-2048"
    private = (
        rsa.generate_private_key(65537, 2048) if is_rsa else ec.generate_private_key(ec.SECP256R1())
    )
    spki = spki_of(private.public_key())
    issued = await ca.issue_organisation(
        organisation="ACME Trading, Société Anonyme",
        label="acme-seal",
        key_id="hsm-key-7",
        spki=spki,
        encipherment=is_rsa,
    )
    certificate = x509.load_der_x509_certificate(issued.der)
    assert issued.serial == format(certificate.serial_number, "x")
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ACME Trading, Société Anonyme"),
            x509.NameAttribute(NameOID.COMMON_NAME, "acme-seal"),
        ]
    )
    usage = key_usage(digital_signature=True, content_commitment=True, key_encipherment=is_rsa)
    _check_end_entity(
        certificate,
        _root(ca),
        subject=subject,
        spki=spki,
        usage=usage,
        policy=ORGANISATION_POLICY_OID,
        issued_at=T0,
    )
    record = await ca.current_for_key("hsm-key-7")
    assert record is not None
    assert (record.serial, record.kind, record.holder, record.der) == (
        issued.serial,
        "organisation",
        "ACME Trading, Société Anonyme",
        issued.der,
    )
    assert record.issued_at == int(T0.timestamp())
    assert record.not_after == int(certificate.not_valid_after_utc.timestamp())


async def test_personal_certificate_fields(ca: CertificateAuthority, clock: Clock) -> None:
    clock.advance(datetime.timedelta(days=30))
    joint = ed25519.Ed25519PrivateKey.generate().public_key()
    key_id = joint.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()
    issued = await ca.issue_personal(user_id="alice", key_id=key_id, spki=spki_of(joint))
    certificate = x509.load_der_x509_certificate(issued.der)
    _check_end_entity(
        certificate,
        _root(ca),
        subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "alice")]),
        spki=spki_of(joint),
        usage=key_usage(digital_signature=True, content_commitment=True),
        policy=PERSONAL_POLICY_OID,
        issued_at=clock.now,
    )
    record = await ca.current_for_key(key_id)
    assert record is not None
    assert (record.kind, record.holder, record.serial) == ("personal", "alice", issued.serial)


async def test_not_after_is_capped_by_the_root(ca: CertificateAuthority, clock: Clock) -> None:
    root = _root(ca)
    clock.now = root.not_valid_after_utc - datetime.timedelta(days=100)
    issued = await ca.issue_personal(
        user_id="late",
        key_id="ab" * 32,
        spki=spki_of(ed25519.Ed25519PrivateKey.generate().public_key()),
    )
    certificate = x509.load_der_x509_certificate(issued.der)
    assert certificate.not_valid_after_utc == root.not_valid_after_utc
    # So it is shorter than the usual validity.
    assert certificate.not_valid_after_utc - certificate.not_valid_before_utc < datetime.timedelta(
        days=SETTINGS.certificate_validity_days
    )


async def test_certificates_do_not_validate_outside_their_period_or_under_another_ca(
    ca: CertificateAuthority, store: CaStore, tmp_path: Path
) -> None:
    issued = await ca.issue_personal(
        user_id="bob",
        key_id="cd" * 32,
        spki=spki_of(ed25519.Ed25519PrivateKey.generate().public_key()),
    )
    certificate = x509.load_der_x509_certificate(issued.der)
    root = _root(ca)
    pkix.verify_issued_by(certificate, root, T0 + datetime.timedelta(days=364))
    with pytest.raises(pkix.ChainError) as info:
        pkix.verify_issued_by(certificate, root, T0 + datetime.timedelta(days=366))
    assert (info.value.kind, info.value.reason) == (Kind.DENIED, "CERTIFICATE_UNTRUSTED")
    with pytest.raises(pkix.ChainError):
        pkix.verify_issued_by(certificate, root, T0 - datetime.timedelta(hours=1))

    other_signer = SoftwareSigner(ec.generate_private_key(ec.SECP256R1()))
    other_store = await CaStore.open(tmp_path / "other.db")
    try:
        other = await CertificateAuthority.start(
            other_signer, "other", other_signer.spki, other_store, SETTINGS, lambda: T0
        )
    finally:
        await other_store.close()
    # Same name, another key: the certificate does not chain to it.
    assert _root(other).subject == root.subject
    with pytest.raises(pkix.ChainError):
        pkix.verify_issued_by(certificate, _root(other), T0)


async def test_serials_are_unique(ca: CertificateAuthority) -> None:
    spki = spki_of(ec.generate_private_key(ec.SECP256R1()).public_key())
    serials = {
        (
            await ca.issue_organisation(
                organisation="o", label=f"k{i}", key_id=f"k{i}", spki=spki, encipherment=False
            )
        ).serial
        for i in range(10)
    }
    assert len(serials) == 10
    assert all(int(s, 16) > 0 and s == s.lower() and not s.startswith("0") for s in serials)


# Revocation, CRLs and status -------------------------------------------------------------------


async def _organisation(ca: CertificateAuthority, label: str) -> str:
    spki = spki_of(ec.generate_private_key(ec.SECP256R1()).public_key())
    issued = await ca.issue_organisation(
        organisation="acme", label=label, key_id=label, spki=spki, encipherment=False
    )
    return issued.serial


async def test_revocation_lists_the_serial_with_its_reason(
    ca: CertificateAuthority, clock: Clock
) -> None:
    kept = await _organisation(ca, "kept")
    serials = {reason: await _organisation(ca, reason) for reason in REASONS}
    root = _root(ca)
    number = _crl_number(await _crl(ca))
    for reason, serial in serials.items():
        clock.advance(datetime.timedelta(minutes=1))
        await ca.revoke(serial, reason)
        crl = await _crl(ca)
        number += 1
        assert _crl_number(crl) == number
        assert crl.last_update_utc == clock.now
        assert crl.next_update_utc == clock.now + datetime.timedelta(
            days=SETTINGS.crl_validity_days
        )
        entry = crl.get_revoked_certificate_by_serial_number(int(serial, 16))
        assert entry is not None
        assert entry.revocation_date_utc == clock.now
        assert (
            entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
            is (REASONS[reason])
        )
    crl = await _crl(ca)
    root_key = root.public_key()
    assert isinstance(root_key, ec.EllipticCurvePublicKey)
    assert crl.is_signature_valid(root_key)
    assert crl.issuer == root.subject
    aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == extension_of(root, x509.SubjectKeyIdentifier).value.digest
    assert {r.serial_number for r in crl} == {int(s, 16) for s in serials.values()}
    assert crl.get_revoked_certificate_by_serial_number(int(kept, 16)) is None


async def test_status_good_revoked_unknown(ca: CertificateAuthority, clock: Clock) -> None:
    serial = await _organisation(ca, "status")
    status, record = await ca.status(serial)
    assert status is Status.GOOD
    assert record is not None
    assert record.revoked_at is None
    assert not await ca.key_revoked("status")

    clock.advance(datetime.timedelta(days=2))
    await ca.revoke(serial, "superseded")
    status, record = await ca.status(serial)
    assert status is Status.REVOKED
    assert record is not None
    assert (record.revoked_at, record.revocation_reason) == (
        int(clock.now.timestamp()),
        "superseded",
    )
    assert await ca.key_revoked("status")

    assert await ca.status("7" * 40) == (Status.UNKNOWN, None)
    assert not await ca.key_revoked("no-such-key")
    assert await ca.current_for_key("no-such-key") is None


def _expect(error: CaError, kind: Kind, reason: str) -> None:
    assert (error.kind, error.reason) == (kind, reason), error


async def test_revoking_twice_is_refused_and_keeps_the_first_reason(
    ca: CertificateAuthority, clock: Clock
) -> None:
    serial = await _organisation(ca, "twice")
    await ca.revoke(serial, "key_compromise")
    crl_der = await ca.crl()
    clock.advance(datetime.timedelta(minutes=1))
    with pytest.raises(CaError) as info:
        await ca.revoke(serial, "superseded")
    _expect(info.value, Kind.PRECONDITION, "ALREADY_REVOKED")
    _, record = await ca.status(serial)
    assert record is not None
    assert (record.revocation_reason, record.revoked_at) == ("key_compromise", int(T0.timestamp()))
    assert await ca.crl() == crl_der


async def test_a_revocation_whose_crl_failed_is_published_later(
    ca: CertificateAuthority, signer: SoftwareSigner, clock: Clock
) -> None:
    serial = await _organisation(ca, "unpublished")
    signer.fail_next = True
    with pytest.raises(ConnectionError):
        await ca.revoke(serial, "key_compromise")
    status, _ = await ca.status(serial)
    assert status is Status.REVOKED
    # The next CRL asked for lists it, though the last one is far from half its validity.
    clock.advance(datetime.timedelta(minutes=1))
    listed = {entry.serial_number for entry in await _crl(ca)}
    assert int(serial, 16) in listed


async def test_retrying_a_revocation_whose_crl_failed_publishes_it(
    ca: CertificateAuthority, signer: SoftwareSigner
) -> None:
    serial = await _organisation(ca, "retried")
    signer.fail_next = True
    with pytest.raises(ConnectionError):
        await ca.revoke(serial, "key_compromise")
    await ca.revoke(serial, "key_compromise")
    assert int(serial, 16) in {entry.serial_number for entry in await _crl(ca)}
    with pytest.raises(CaError) as info:
        await ca.revoke(serial, "key_compromise")
    _expect(info.value, Kind.PRECONDITION, "ALREADY_REVOKED")


async def test_unknown_serial_is_not_found(ca: CertificateAuthority) -> None:
    crl_der = await ca.crl()
    with pytest.raises(CaError) as info:
        await ca.revoke("7" * 40, "key_compromise")
    _expect(info.value, Kind.NOT_FOUND, "CERTIFICATE_NOT_FOUND")
    assert await ca.crl() == crl_der


@pytest.mark.parametrize(
    "reason",
    ["", "unspecified", "certificate_hold", "remove_from_crl", "aa_compromise", "KEY_COMPROMISE"],
)
async def test_reason_outside_the_offered_set_is_refused(
    ca: CertificateAuthority, reason: str
) -> None:
    serial = await _organisation(ca, "reasons")
    crl_der = await ca.crl()
    with pytest.raises(CaError) as info:
        await ca.revoke(serial, reason)
    _expect(info.value, Kind.INVALID, "REASON_REQUIRED")
    assert (await ca.status(serial))[0] is Status.GOOD
    assert await ca.crl() == crl_der


async def test_crl_is_reissued_only_after_half_its_validity(
    ca: CertificateAuthority, clock: Clock, signer: SoftwareSigner
) -> None:
    first = await ca.crl()
    number = _crl_number(x509.load_der_x509_crl(first))
    calls = signer.calls
    half = datetime.timedelta(days=SETTINGS.crl_validity_days) / 2

    clock.advance(half - datetime.timedelta(seconds=1))
    assert await ca.crl() == first
    assert signer.calls == calls

    clock.advance(datetime.timedelta(seconds=1))
    second_der = await ca.crl()
    assert second_der != first
    second = x509.load_der_x509_crl(second_der)
    assert _crl_number(second) == number + 1
    assert second.last_update_utc == T0 + half
    assert second.next_update_utc == T0 + half + datetime.timedelta(days=SETTINGS.crl_validity_days)
    assert signer.calls == calls + 1
    # And it is kept again for the next half period.
    clock.advance(datetime.timedelta(days=1))
    assert await ca.crl() == second_der


async def test_state_survives_reopening_the_store(
    ca: CertificateAuthority, signer: SoftwareSigner, clock: Clock, tmp_path: Path
) -> None:
    serial = await _organisation(ca, "durable")
    await ca.revoke(serial, "cessation_of_operation")
    crl_der = await ca.crl()
    reopened = await CaStore.open(tmp_path / "ca.db")
    try:
        again = await CertificateAuthority.start(
            signer, CA_KEY_ID, signer.spki, reopened, SETTINGS, clock
        )
        assert again.root_der == ca.root_der
        assert await again.crl() == crl_der
        assert (await again.status(serial))[0] is Status.REVOKED
    finally:
        await reopened.close()
