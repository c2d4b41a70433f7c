"""Checking an end-entity certificate against a CA certificate with OpenSSL-independent code
(cryptography's X.509 path validation), as relying parties and the phone do."""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.x509.verification import (
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from mobilesign.errors import Error, Kind


class ChainError(Error):
    """The certificate does not chain to the CA at the given time (DENIED
    CERTIFICATE_UNTRUSTED)."""

    def __init__(self, message: str) -> None:
        super().__init__(Kind.DENIED, "CERTIFICATE_UNTRUSTED", message)


def verify_issued_by(leaf: x509.Certificate, ca: x509.Certificate, when: datetime.datetime) -> None:
    """Path validation of ``leaf`` against the single trust anchor ``ca`` at ``when``.

    The CA certificate gets the Web PKI CA checks; end-entity extensions are the issuer's
    profile (personal and organisation certificates carry no server names), so they are not
    held to Web PKI rules.
    """
    verifier = (
        PolicyBuilder()
        .store(Store([ca]))
        .time(when)
        .extension_policies(
            ca_policy=ExtensionPolicy.webpki_defaults_ca(),
            ee_policy=ExtensionPolicy.permit_all(),
        )
        .build_client_verifier()
    )
    try:
        verifier.verify(leaf, [])
    except VerificationError as exc:
        raise ChainError(str(exc)) from None
