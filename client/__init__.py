"""The mobile e-signature client SDK: holds the phone's share, drives the two-party protocols
with the cosigner, and checks everything it receives.

Public surface: :class:`Keystore`, :func:`enroll`, :class:`SigningSession` and
:class:`ClientError`.
"""

from client.errors import ClientError
from client.keystore import Keystore
from client.sdk import SigningSession, enroll

__all__ = ["ClientError", "Keystore", "SigningSession", "enroll"]
