"""Enrolment tickets: the RA issues them, the cosigner and the RA verify them.

A ticket is a serialized ``SignedEnrolmentTicket``: the exact bytes of the claims and an ECDSA
P-256 / SHA-256 signature over ``"mobilesign/v1 enrolment-ticket" || 0x00 || claims`` by the
RA's ticket key, which lives in the HSM. Single use is enforced by the cosigner, which
consumes the ticket id in the same transaction that stores the new key.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils
from google.protobuf.message import DecodeError

from mobilesign import domains, ids
from mobilesign.errors import Error, Kind
from mobilesign.v1 import ra_pb2

AUDIENCE = "cosigner"
MAX_TICKET_BYTES = 2048
#: Tolerated difference between the RA's and the cosigner's clocks.
CLOCK_SKEW_SECONDS = 60


class TicketError(Error):
    """The ticket is malformed (INVALID), or forged, expired or meant for someone else
    (DENIED)."""


@dataclass(frozen=True)
class Claims:
    """What a verified ticket grants."""

    ticket_id: str
    user_id: str
    issued_at: int
    expires_at: int
    #: The user may hold this key besides others already certified.
    additional_key: bool


def signing_digest(claims: bytes) -> bytes:
    """SHA-256 of the domain-separated claims: what the ticket key signs."""
    return hashlib.sha256(domains.ENROLMENT_TICKET + claims).digest()


def encode(claims: Claims) -> bytes:
    """The claims' bytes, to be signed."""
    return ra_pb2.EnrolmentTicketClaims(
        ticket_id=claims.ticket_id,
        user_id=claims.user_id,
        issued_at_unix=claims.issued_at,
        expires_at_unix=claims.expires_at,
        audience=AUDIENCE,
        additional_key=claims.additional_key,
    ).SerializeToString(deterministic=True)


def assemble(claims: bytes, signature: bytes) -> bytes:
    """The ticket handed to the phone."""
    return ra_pb2.SignedEnrolmentTicket(claims=claims, signature=signature).SerializeToString(
        deterministic=True
    )


def verify(ticket: bytes, public_key: ec.EllipticCurvePublicKey, now: int) -> Claims:
    """Check the signature, audience and validity window of ``ticket``; return its claims."""
    if not ticket or len(ticket) > MAX_TICKET_BYTES:
        raise TicketError(Kind.INVALID, "TICKET_MALFORMED", "the enrolment ticket is malformed")
    try:
        signed = ra_pb2.SignedEnrolmentTicket.FromString(ticket)
        claims = ra_pb2.EnrolmentTicketClaims.FromString(signed.claims)
    except DecodeError:
        raise TicketError(
            Kind.INVALID, "TICKET_MALFORMED", "the enrolment ticket is malformed"
        ) from None
    try:
        public_key.verify(
            signed.signature,
            signing_digest(signed.claims),
            ec.ECDSA(utils.Prehashed(hashes.SHA256())),
        )
    except InvalidSignature:
        raise TicketError(
            Kind.DENIED, "TICKET_FORGED", "the enrolment ticket's signature is invalid"
        ) from None
    well_formed = ids.TICKET_ID.matches(claims.ticket_id) and ids.USER_ID.matches(claims.user_id)
    if claims.audience != AUDIENCE or not well_formed:
        raise TicketError(Kind.INVALID, "TICKET_MALFORMED", "the enrolment ticket is malformed")
    if not claims.issued_at_unix - CLOCK_SKEW_SECONDS <= now < claims.expires_at_unix:
        raise TicketError(Kind.DENIED, "TICKET_EXPIRED", "the enrolment ticket has expired")
    return Claims(
        claims.ticket_id,
        claims.user_id,
        claims.issued_at_unix,
        claims.expires_at_unix,
        claims.additional_key,
    )
