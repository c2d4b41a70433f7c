"""Grants: the RA signs them, the HSM proxy and the phone check them.

A grant is a serialized ``SignedGrant``: the exact bytes of a ``GrantStatement`` and an ECDSA
P-256 / SHA-256 signature over ``"mobilesign/v1 grant" || 0x00 || statement`` by the RA's grant
key, which lives in the HSM. The statement says who may use which organisation key, for which
operations, in which window, how often; :func:`check_use` is the one test of whether a service
record fits it, shared by the proxy (next to the key) and the phone (before co-signing).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils
from google.protobuf.message import DecodeError

from mobilesign import domains, ids, records
from mobilesign.errors import Error, Kind
from mobilesign.v1 import gateway_pb2

MAX_SIGNED_GRANT_BYTES = 2048
MAX_QUOTA = 1_000_000
#: The operation names a statement may carry, and the record operations each allows.
OPERATIONS: dict[str, frozenset[records.Operation]] = {
    "sign": frozenset({records.Operation.SIGN_ECDSA_SHA256, records.Operation.SIGN_RSA_PSS_SHA256}),
    "decrypt": frozenset({records.Operation.DECRYPT_RSA_OAEP_SHA256}),
}
_API_NAMES = {
    gateway_pb2.OPERATION_SIGN_DIGEST: "sign",
    gateway_pb2.OPERATION_DECRYPT: "decrypt",
}
_API_VALUES = {name: value for value, name in _API_NAMES.items()}


class GrantError(Error):
    """The grant is malformed (INVALID), or forged or does not allow a use (DENIED)."""


@dataclass(frozen=True)
class Statement:
    """What a verified grant allows."""

    grant_id: str
    user_id: str
    key_id: str
    operations: tuple[str, ...]  # names from OPERATIONS, no repeats
    not_before: int
    not_after: int
    quota_total: int
    quota_daily: int
    purpose: str
    issued_at: int


def signing_digest(statement: bytes) -> bytes:
    """SHA-256 of the domain-separated statement: what the grant key signs."""
    return hashlib.sha256(domains.GRANT + statement).digest()


def encode(statement: Statement) -> bytes:
    """The statement's bytes, to be signed."""
    return gateway_pb2.GrantStatement(
        grant_id=statement.grant_id,
        user_id=statement.user_id,
        key_id=statement.key_id,
        operations=[_API_VALUES[name] for name in statement.operations],
        not_before_unix=statement.not_before,
        not_after_unix=statement.not_after,
        quota_total=statement.quota_total,
        quota_daily=statement.quota_daily,
        purpose=statement.purpose,
        issued_at_unix=statement.issued_at,
    ).SerializeToString(deterministic=True)


def assemble(statement: bytes, signature: bytes) -> bytes:
    """The signed grant, as the RA hands it out."""
    return gateway_pb2.SignedGrant(statement=statement, signature=signature).SerializeToString(
        deterministic=True
    )


def _malformed() -> GrantError:
    return GrantError(Kind.INVALID, "GRANT_MALFORMED", "the signed grant is malformed")


def _statement(message: gateway_pb2.GrantStatement) -> Statement:
    names = tuple(_API_NAMES.get(op, "") for op in message.operations)
    if (
        not ids.GRANT_ID.matches(message.grant_id)
        or not ids.USER_ID.matches(message.user_id)
        or not ids.ORGANISATION_KEY_ID.matches(message.key_id)
        or not names
        or "" in names
        or len(set(names)) != len(names)
        or not 0 <= message.not_before_unix < message.not_after_unix
        or not 0 < message.quota_total <= MAX_QUOTA
        or not 0 < message.quota_daily <= MAX_QUOTA
        or len(message.purpose) > records.MAX_PURPOSE
    ):
        raise _malformed()
    return Statement(
        grant_id=message.grant_id,
        user_id=message.user_id,
        key_id=message.key_id,
        operations=names,
        not_before=message.not_before_unix,
        not_after=message.not_after_unix,
        quota_total=message.quota_total,
        quota_daily=message.quota_daily,
        purpose=message.purpose,
        issued_at=message.issued_at_unix,
    )


def _parse(signed: bytes) -> tuple[gateway_pb2.SignedGrant, Statement]:
    if not signed or len(signed) > MAX_SIGNED_GRANT_BYTES:
        raise _malformed()
    try:
        envelope = gateway_pb2.SignedGrant.FromString(signed)
        message = gateway_pb2.GrantStatement.FromString(envelope.statement)
    except DecodeError:
        raise _malformed() from None
    # One encoding per statement: what is verified is what the RA would have produced. Unknown
    # fields are dropped first (protobuf keeps and re-emits them): a field this code does not
    # know, perhaps a restriction added later, must not be silently ignored.
    message.DiscardUnknownFields()
    if message.SerializeToString(deterministic=True) != envelope.statement:
        raise _malformed()
    return envelope, _statement(message)


def read(signed: bytes) -> Statement:
    """The statement of a signed grant, its signature not checked: for the RA reading back the
    grants it signed and stored itself. INVALID GRANT_MALFORMED as :func:`verify`."""
    return _parse(signed)[1]


def verify(signed: bytes, public_keys: Iterable[ec.EllipticCurvePublicKey]) -> Statement:
    """Check that one of ``public_keys`` signed ``signed``; return its statement.

    INVALID GRANT_MALFORMED for bytes that are not a well-formed signed grant, DENIED
    GRANT_FORGED when no key verifies the signature.
    """
    envelope, statement = _parse(signed)
    digest = signing_digest(envelope.statement)
    for key in public_keys:
        try:
            key.verify(envelope.signature, digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
        except InvalidSignature:
            continue
        return statement
    raise GrantError(Kind.DENIED, "GRANT_FORGED", "the grant is not signed by the RA")


def check_use(statement: Statement, record: records.ServiceRecord, now: int) -> None:
    """Refuse (DENIED, each with its own reason) unless ``record`` is a use ``statement``
    allows at ``now``: same grant, user and key, an allowed operation, inside the window.
    Quotas and revocation are the counter's business, not the statement's."""
    if record.grant_id != statement.grant_id:
        raise GrantError(Kind.DENIED, "GRANT_MISMATCH", "the record names another grant")
    if record.user_id != statement.user_id:
        raise GrantError(Kind.DENIED, "GRANT_USER_MISMATCH", "the grant is for another user")
    if record.organisation_key_id != statement.key_id:
        raise GrantError(Kind.DENIED, "GRANT_KEY_MISMATCH", "the grant is for another key")
    if not any(record.operation in OPERATIONS[name] for name in statement.operations):
        raise GrantError(
            Kind.DENIED, "OPERATION_NOT_GRANTED", "the grant does not allow this operation"
        )
    if now < statement.not_before:
        raise GrantError(Kind.DENIED, "GRANT_NOT_YET_VALID", "the grant is not valid yet")
    if now >= statement.not_after:
        raise GrantError(Kind.DENIED, "GRANT_EXPIRED", "the grant has expired")


def operation_name(value: int) -> str:
    """The operation an API enum value names (``sign`` or ``decrypt``); INVALID otherwise."""
    name = _API_NAMES.get(gateway_pb2.Operation.ValueType(value))
    if name is None:
        raise GrantError(Kind.INVALID, "OPERATION_INVALID", "unknown operation")
    return name


def operation_value(name: str) -> gateway_pb2.Operation.ValueType:
    """The API enum value of an operation name."""
    return _API_VALUES[name]
