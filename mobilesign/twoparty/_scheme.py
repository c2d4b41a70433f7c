"""Scheme identifiers carried on the wire, and the ciphersuite behind each."""

from __future__ import annotations

from enum import StrEnum

from mobilesign.twoparty._ciphersuite import Ciphersuite
from mobilesign.twoparty._ed25519 import ED25519_SHA512
from mobilesign.twoparty._errors import ProtocolError, Reason


class Scheme(StrEnum):
    """A two-party signature scheme. The value is what travels on the wire.

    Only FROST(Ed25519, SHA-512) exists today; SM2 two-party and two-party ECDSA are
    expected to join as further members with their own state machines.
    """

    FROST_ED25519_SHA512 = "FROST-ED25519-SHA512-v1"
    """RFC 9591 FROST(Ed25519, SHA-512); the value is the RFC's contextString."""


_CIPHERSUITES: dict[Scheme, Ciphersuite] = {Scheme.FROST_ED25519_SHA512: ED25519_SHA512}


def parse_scheme(value: object) -> Scheme:
    """Map a wire scheme identifier to a :class:`Scheme`, or raise UNSUPPORTED_SCHEME."""
    if isinstance(value, str):
        for scheme in Scheme:
            if scheme.value == value:
                return scheme
    raise ProtocolError(Reason.UNSUPPORTED_SCHEME, detail="unknown scheme")


def ciphersuite(scheme: Scheme) -> Ciphersuite:
    """The FROST ciphersuite implementing ``scheme``."""
    return _CIPHERSUITES[scheme]


PHONE_IDENTIFIER = 1
"""The phone's FROST participant identifier."""
COSIGNER_IDENTIFIER = 2
"""The cosigner's FROST participant identifier."""
PARTICIPANTS = (PHONE_IDENTIFIER, COSIGNER_IDENTIFIER)
"""Both signers, sorted as RFC 9591 commitment lists require."""
