"""The mobile e-signature client SDK: holds the phone's share, drives the two-party protocols
with the cosigner, and checks everything it receives.

Public surface: :class:`Keystore`, :func:`enrol`, :class:`SigningSession`, the personal
certificate functions and :class:`ClientError`.
"""

from client.certificates import (
    Certificates,
    fetch_personal_certificate,
    request_personal_certificate,
    verify_personal_certificate,
)
from client.errors import ClientError
from client.gateway_client import GatewaySession, OrganisationKey, Use
from client.keystore import Keystore
from client.sdk import SigningSession, enrol
from client.verifier import (
    TrustAnchors,
    VerificationFailed,
    VerifiedReceipt,
    receipt_from_json,
    receipt_to_json,
    verify_consistency,
    verify_receipt,
)

__all__ = [
    "Certificates",
    "ClientError",
    "GatewaySession",
    "Keystore",
    "OrganisationKey",
    "SigningSession",
    "TrustAnchors",
    "Use",
    "VerificationFailed",
    "VerifiedReceipt",
    "enrol",
    "fetch_personal_certificate",
    "receipt_from_json",
    "receipt_to_json",
    "request_personal_certificate",
    "verify_consistency",
    "verify_personal_certificate",
    "verify_receipt",
]
