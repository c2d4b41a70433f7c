"""DER builders for certificates, CRLs and PKCS#10 requests with an external signer."""

from __future__ import annotations

import datetime
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from asn1crypto import algos, crl, csr, keys, x509

from mobilesign.pkix.signing import Signer

_GENERALIZED_FROM = datetime.datetime(2050, 1, 1, tzinfo=datetime.UTC)


@dataclass(frozen=True)
class Extension:
    """One X.509 extension in asn1crypto's terms (e.g. ``key_usage``, ``{"digital_signature"}``)."""

    extn_id: str
    value: Any
    critical: bool = False


def basic_constraints(*, ca: bool) -> Extension:
    """Critical basic constraints."""
    return Extension("basic_constraints", {"ca": ca}, critical=True)


def key_usage(*usages: str) -> Extension:
    """Critical key usage, e.g. ``digital_signature``, ``non_repudiation``, ``key_cert_sign``."""
    return Extension("key_usage", set(usages), critical=True)


def subject_key_identifier(identifier: bytes) -> Extension:
    """Subject key identifier."""
    return Extension("key_identifier", identifier)


def authority_key_identifier(identifier: bytes) -> Extension:
    """Authority key identifier (key identifier form)."""
    return Extension("authority_key_identifier", {"key_identifier": identifier})


def certificate_policies(*oids: str) -> Extension:
    """Certificate policies, by OID, without qualifiers."""
    return Extension("certificate_policies", [{"policy_identifier": oid} for oid in oids])


def crl_distribution_point(url: str) -> Extension:
    """One CRL distribution point with a URI full name."""
    uri = x509.GeneralName(name="uniform_resource_identifier", value=url)
    return Extension("crl_distribution_points", [{"distribution_point": {"full_name": [uri]}}])


def name(attributes: Mapping[str, str]) -> bytes:
    """A distinguished name (DER) from asn1crypto attribute names, e.g. ``common_name``."""
    return bytes(x509.Name.build(dict(attributes)).dump())


def random_serial() -> int:
    """A positive 159-bit serial number from the OS CSPRNG (RFC 5280: at most 20 octets)."""
    return secrets.randbits(159) | (1 << 158)


def _time(moment: datetime.datetime) -> x509.Time:
    # RFC 5280 4.1.2.5: UTCTime through 2049, GeneralizedTime after.
    moment = moment.astimezone(datetime.UTC).replace(microsecond=0)
    if moment < _GENERALIZED_FROM:
        return x509.Time({"utc_time": moment})
    return x509.Time({"general_time": moment})


def _algorithm(signer: Signer) -> algos.SignedDigestAlgorithm:
    return algos.SignedDigestAlgorithm({"algorithm": signer.algorithm.value})


def _extensions(extensions: Sequence[Extension]) -> list[dict[str, Any]]:
    return [
        {"extn_id": e.extn_id, "critical": e.critical, "extn_value": e.value} for e in extensions
    ]


async def build_certificate(
    *,
    signer: Signer,
    serial: int,
    issuer: bytes,
    subject: bytes,
    subject_public_key_info: bytes,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
    extensions: Sequence[Extension],
) -> bytes:
    """A v3 certificate (DER) whose TBS is signed by ``signer``."""
    tbs = x509.TbsCertificate(
        {
            "version": "v3",
            "serial_number": serial,
            "signature": _algorithm(signer),
            "issuer": x509.Name.load(issuer),
            "validity": {"not_before": _time(not_before), "not_after": _time(not_after)},
            "subject": x509.Name.load(subject),
            "subject_public_key_info": keys.PublicKeyInfo.load(subject_public_key_info),
            "extensions": _extensions(extensions),
        }
    )
    signature = await signer.sign(tbs.dump())
    certificate = x509.Certificate(
        {
            "tbs_certificate": tbs,
            "signature_algorithm": _algorithm(signer),
            "signature_value": signature,
        }
    )
    return bytes(certificate.dump())


@dataclass(frozen=True)
class RevokedEntry:
    """A revoked certificate as a CRL lists it."""

    serial: int
    revoked_at: datetime.datetime
    reason: str


async def build_crl(
    *,
    signer: Signer,
    issuer: bytes,
    number: int,
    this_update: datetime.datetime,
    next_update: datetime.datetime,
    revoked: Sequence[RevokedEntry],
    authority_key_identifier: bytes,
) -> bytes:
    """A v2 CRL (DER) with CRL number and authority key identifier, signed by ``signer``."""
    entries = [
        {
            "user_certificate": entry.serial,
            "revocation_date": _time(entry.revoked_at),
            "crl_entry_extensions": [{"extn_id": "crl_reason", "extn_value": entry.reason}],
        }
        for entry in revoked
    ]
    tbs = crl.TbsCertList(
        {
            "version": "v2",
            "signature": _algorithm(signer),
            "issuer": x509.Name.load(issuer),
            "this_update": _time(this_update),
            "next_update": _time(next_update),
            "revoked_certificates": entries or None,
            "crl_extensions": [
                {"extn_id": "crl_number", "critical": False, "extn_value": number},
                {
                    "extn_id": "authority_key_identifier",
                    "critical": False,
                    "extn_value": {"key_identifier": authority_key_identifier},
                },
            ],
        }
    )
    signature = await signer.sign(tbs.dump())
    certificate_list = crl.CertificateList(
        {"tbs_cert_list": tbs, "signature_algorithm": _algorithm(signer), "signature": signature}
    )
    return bytes(certificate_list.dump())


async def build_csr(*, signer: Signer, subject: bytes, subject_public_key_info: bytes) -> bytes:
    """A PKCS#10 request (DER) for ``subject_public_key_info``, signed by ``signer`` (the proof
    of possession of the matching private key)."""
    info = csr.CertificationRequestInfo(
        {
            "version": "v1",
            "subject": x509.Name.load(subject),
            "subject_pk_info": keys.PublicKeyInfo.load(subject_public_key_info),
            "attributes": [],
        }
    )
    signature = await signer.sign(info.dump())
    request = csr.CertificationRequest(
        {
            "certification_request_info": info,
            "signature_algorithm": _algorithm(signer),
            "signature": signature,
        }
    )
    return bytes(request.dump())
