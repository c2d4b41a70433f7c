"""The mobile e-signature client SDK: holds the phone's share, drives the two-party protocols
with the cosigner, and checks everything it receives.

Public surface: :class:`Keystore`, :func:`enroll`, :class:`SigningSession`, the personal
certificate functions and :class:`ClientError`.
"""

from client.certificates import (
    Certificates,
    fetch_personal_certificate,
    request_personal_certificate,
    verify_personal_certificate,
)
from client.errors import ClientError
from client.keystore import Keystore
from client.sdk import SigningSession, enroll

__all__ = [
    "Certificates",
    "ClientError",
    "Keystore",
    "SigningSession",
    "enroll",
    "fetch_personal_certificate",
    "request_personal_certificate",
    "verify_personal_certificate",
]
