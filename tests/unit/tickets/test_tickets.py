"""Enrolment tickets: encoded, signed (ECDSA P-256 over the SHA-256 signing digest, as the HSM
signs it), assembled and verified in process; every refusal checked by kind and reason."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils

from mobilesign import tickets
from mobilesign.errors import Kind
from mobilesign.v1 import ra_pb2

NOW = 1_780_000_000
SKEW = tickets.CLOCK_SKEW_SECONDS
KEY = ec.generate_private_key(ec.SECP256R1())


def _sign(claims: bytes, key: ec.EllipticCurvePrivateKey = KEY) -> bytes:
    """What the HSM does with the ticket key: ECDSA over the precomputed digest."""
    return key.sign(tickets.signing_digest(claims), ec.ECDSA(utils.Prehashed(hashes.SHA256())))


def _claims(**overrides: Any) -> tickets.Claims:
    fields: dict[str, Any] = {
        "ticket_id": secrets.token_hex(16),
        "user_id": "alice",
        "issued_at": NOW,
        "expires_at": NOW + 600,
        "additional_key": False,
    }
    fields.update(overrides)
    return tickets.Claims(**fields)


def _ticket(claims: tickets.Claims) -> bytes:
    encoded = tickets.encode(claims)
    return tickets.assemble(encoded, _sign(encoded))


def _raw_claims(**overrides: Any) -> bytes:
    """Claims as protobuf bytes, including fields ``encode`` always sets (the audience)."""
    fields: dict[str, Any] = {
        "ticket_id": secrets.token_hex(16),
        "user_id": "alice",
        "issued_at_unix": NOW,
        "expires_at_unix": NOW + 600,
        "audience": tickets.AUDIENCE,
    }
    fields.update(overrides)
    claims = ra_pb2.EnrolmentTicketClaims(**fields)
    return claims.SerializeToString(deterministic=True)


def _expect(ticket: bytes, kind: Kind, reason: str, now: int = NOW) -> None:
    with pytest.raises(tickets.TicketError) as info:
        tickets.verify(ticket, KEY.public_key(), now)
    assert (info.value.kind, info.value.reason) == (kind, reason), info.value


def test_round_trip() -> None:
    claims = _claims()
    encoded = tickets.encode(claims)
    ticket = tickets.assemble(encoded, _sign(encoded))
    assert tickets.verify(ticket, KEY.public_key(), NOW) == claims
    # The ticket carries the exact claim bytes that were signed.
    signed = ra_pb2.SignedEnrolmentTicket.FromString(ticket)
    assert signed.claims == encoded
    parsed = ra_pb2.EnrolmentTicketClaims.FromString(encoded)
    assert parsed.audience == tickets.AUDIENCE
    assert (parsed.ticket_id, parsed.user_id) == (claims.ticket_id, "alice")


def test_encoding_is_deterministic_and_digest_is_domain_separated() -> None:
    claims = _claims()
    assert tickets.encode(claims) == tickets.encode(claims)
    encoded = tickets.encode(claims)
    digest = tickets.signing_digest(encoded)
    assert len(digest) == 32
    assert digest != tickets.signing_digest(encoded + b"\x00")
    assert digest != hashlib.sha256(encoded).digest()


@pytest.mark.parametrize(
    "now",
    [NOW - SKEW, NOW, NOW + 599],
    ids=["skew-early", "issued", "last-second"],
)
def test_valid_within_the_window(now: int) -> None:
    claims = _claims()
    assert tickets.verify(_ticket(claims), KEY.public_key(), now) == claims


@pytest.mark.parametrize(
    "now",
    [NOW - SKEW - 1, NOW + 600, NOW + 3600],
    ids=["before-skew", "at-expiry", "long-after"],
)
def test_outside_the_window_is_expired(now: int) -> None:
    _expect(_ticket(_claims()), Kind.DENIED, "TICKET_EXPIRED", now)


def test_expired_ticket_is_refused_at_any_time_after() -> None:
    ticket = _ticket(_claims(issued_at=NOW - 7200, expires_at=NOW - 3600))
    _expect(ticket, Kind.DENIED, "TICKET_EXPIRED")


def test_not_yet_valid_beyond_the_skew() -> None:
    ticket = _ticket(_claims(issued_at=NOW + SKEW + 1, expires_at=NOW + 3600))
    _expect(ticket, Kind.DENIED, "TICKET_EXPIRED")
    # Within the skew it is accepted.
    within = _claims(issued_at=NOW + SKEW, expires_at=NOW + 3600)
    assert tickets.verify(_ticket(within), KEY.public_key(), NOW) == within


def _flip_last_signature_octet(ticket: bytes) -> bytes:
    signed = ra_pb2.SignedEnrolmentTicket.FromString(ticket)
    signature = bytearray(signed.signature)
    signature[-1] ^= 0x01
    return tickets.assemble(signed.claims, bytes(signature))


def _other_claims_same_signature(ticket: bytes) -> bytes:
    signed = ra_pb2.SignedEnrolmentTicket.FromString(ticket)
    claims = ra_pb2.EnrolmentTicketClaims.FromString(signed.claims)
    claims.user_id = "mallory"
    return tickets.assemble(claims.SerializeToString(deterministic=True), signed.signature)


def _signed_by_another_key(ticket: bytes) -> bytes:
    claims = ra_pb2.SignedEnrolmentTicket.FromString(ticket).claims
    return tickets.assemble(claims, _sign(claims, ec.generate_private_key(ec.SECP256R1())))


def _without_domain_separation(ticket: bytes) -> bytes:
    claims = ra_pb2.SignedEnrolmentTicket.FromString(ticket).claims
    return tickets.assemble(claims, KEY.sign(claims, ec.ECDSA(hashes.SHA256())))


@pytest.mark.parametrize(
    "forge",
    [
        pytest.param(_flip_last_signature_octet, id="signature-bit"),
        pytest.param(_other_claims_same_signature, id="claims-changed"),
        pytest.param(_signed_by_another_key, id="another-key"),
        pytest.param(_without_domain_separation, id="no-domain-separation"),
        pytest.param(
            lambda t: tickets.assemble(ra_pb2.SignedEnrolmentTicket.FromString(t).claims, b""),
            id="no-signature",
        ),
        pytest.param(
            lambda t: tickets.assemble(
                ra_pb2.SignedEnrolmentTicket.FromString(t).claims, b"\x30\x00"
            ),
            id="empty-der-signature",
        ),
    ],
)
def test_forged_ticket(forge: Callable[[bytes], bytes]) -> None:
    _expect(forge(_ticket(_claims())), Kind.DENIED, "TICKET_FORGED")


def _signed_raw(claims: bytes) -> bytes:
    return tickets.assemble(claims, _sign(claims))


@pytest.mark.parametrize(
    "ticket",
    [
        pytest.param(lambda: _signed_raw(_raw_claims(audience="gateway")), id="audience"),
        pytest.param(lambda: _signed_raw(_raw_claims(audience="")), id="no-audience"),
        pytest.param(lambda: _signed_raw(_raw_claims(ticket_id="xyz")), id="ticket-id-short"),
        pytest.param(
            lambda: _signed_raw(_raw_claims(ticket_id="AB" * 16)), id="ticket-id-upper-case"
        ),
        pytest.param(
            lambda: _signed_raw(_raw_claims(ticket_id="ab" * 16 + "\n")), id="ticket-id-newline"
        ),
        pytest.param(lambda: _signed_raw(_raw_claims(ticket_id="")), id="ticket-id-empty"),
        pytest.param(lambda: _signed_raw(_raw_claims(user_id="")), id="empty-user"),
        pytest.param(lambda: b"", id="empty"),
        pytest.param(lambda: b"\xff" * 64, id="garbage"),
        pytest.param(lambda: tickets.assemble(b"not claims", b"x"), id="garbage-claims"),
        pytest.param(
            lambda: (lambda t: t + bytes(tickets.MAX_TICKET_BYTES + 1 - len(t)))(
                _ticket(_claims())
            ),
            id="oversize",
        ),
    ],
)
def test_malformed_ticket(ticket: Callable[[], bytes]) -> None:
    _expect(ticket(), Kind.INVALID, "TICKET_MALFORMED")


@pytest.mark.parametrize("user_id", ["u" * 65, "alice bob", "al/ice"])
def test_a_user_id_outside_the_id_format_is_malformed(user_id: str) -> None:
    # Signed by the right key, but no user could have this id: refused, not trusted.
    _expect(_signed_raw(_raw_claims(user_id=user_id)), Kind.INVALID, "TICKET_MALFORMED")


def test_the_longest_user_id_is_accepted_and_the_flag_travels() -> None:
    claims = _claims(user_id="u" * 64, additional_key=True)
    assert tickets.verify(_ticket(claims), KEY.public_key(), NOW) == claims
