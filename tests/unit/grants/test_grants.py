"""Signed grants (``mobilesign.grants``): encoded, signed as the HSM signs them (ECDSA P-256
over the domain-separated SHA-256 digest), assembled and verified in process; every refusal of
``verify`` and ``check_use`` checked by kind and reason."""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils

from mobilesign import grants, records
from mobilesign.errors import Kind
from mobilesign.v1 import gateway_pb2

NOW = 1_780_000_000
KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_KEY = ec.generate_private_key(ec.SECP256R1())
SIGN = records.Operation.SIGN_ECDSA_SHA256


def _statement(**changes: Any) -> grants.Statement:
    fields: dict[str, Any] = {
        "grant_id": secrets.token_hex(16),
        "user_id": "alice",
        "key_id": secrets.token_hex(16),
        "operations": ("sign",),
        "not_before": NOW - 60,
        "not_after": NOW + 3600,
        "quota_total": 10,
        "quota_daily": 3,
        "purpose": "contracts",
        "issued_at": NOW - 60,
    }
    fields.update(changes)
    return grants.Statement(**fields)


def _signature(statement: bytes, key: ec.EllipticCurvePrivateKey = KEY) -> bytes:
    """What the HSM does with the grant key: ECDSA over the precomputed digest."""
    return key.sign(grants.signing_digest(statement), ec.ECDSA(utils.Prehashed(hashes.SHA256())))


def _signed(statement: bytes, key: ec.EllipticCurvePrivateKey = KEY) -> bytes:
    return grants.assemble(statement, _signature(statement, key))


def _expect(signed: bytes, kind: Kind, reason: str, keys: list[ec.EllipticCurvePrivateKey]) -> None:
    with pytest.raises(grants.GrantError) as info:
        grants.verify(signed, [k.public_key() for k in keys])
    assert (info.value.kind, info.value.reason) == (kind, reason)


def _record(statement: grants.Statement, **changes: Any) -> records.ServiceRecord:
    record = records.ServiceRecord(
        record_id=secrets.token_hex(16),
        user_id=statement.user_id,
        user_key_id=secrets.token_hex(32),
        certificate_serial="1f",
        organisation_key_id=statement.key_id,
        organisation_certificate_sha256=bytes(32),
        operation=SIGN,
        input_sha256=bytes(32),
        purpose="contracts",
        grant_id=statement.grant_id,
        time_ms=NOW * 1000,
        gateway_nonce=bytes(16),
    )
    return dataclasses.replace(record, **changes)


def test_a_signed_grant_verifies_to_its_statement() -> None:
    statement = _statement(operations=("sign", "decrypt"))
    signed = _signed(grants.encode(statement))
    # Any of the keys given may have signed it.
    assert grants.verify(signed, [OTHER_KEY.public_key(), KEY.public_key()]) == statement
    envelope = gateway_pb2.SignedGrant.FromString(signed)
    assert envelope.statement == grants.encode(statement)
    assert (
        grants.signing_digest(envelope.statement)
        == hashlib.sha256(b"mobilesign/v1 grant\x00" + envelope.statement).digest()
    )


def test_a_grant_signed_by_another_key_is_forged() -> None:
    encoded = grants.encode(_statement())
    _expect(_signed(encoded, OTHER_KEY), Kind.DENIED, "GRANT_FORGED", [KEY])
    _expect(_signed(encoded), Kind.DENIED, "GRANT_FORGED", [])
    # The signature of one statement on another, and a signature without the domain tag.
    _expect(
        grants.assemble(grants.encode(_statement()), _signature(encoded)),
        Kind.DENIED,
        "GRANT_FORGED",
        [KEY],
    )
    untagged = KEY.sign(encoded, ec.ECDSA(hashes.SHA256()))
    _expect(grants.assemble(encoded, untagged), Kind.DENIED, "GRANT_FORGED", [KEY])
    _expect(grants.assemble(encoded, b"\x30\x00"), Kind.DENIED, "GRANT_FORGED", [KEY])


@pytest.mark.parametrize(
    "signed",
    [
        b"",
        b"\xff\xff\xff",
        # A statement that is not a GrantStatement (field 1 with a bad length).
        gateway_pb2.SignedGrant(statement=b"\x0a\x7f", signature=b"x").SerializeToString(),
        # A string field that is not UTF-8.
        gateway_pb2.SignedGrant(statement=b"\x12\x02\xff\xfe", signature=b"x").SerializeToString(),
        # Over the size bound, even with a valid signature inside.
        gateway_pb2.SignedGrant(
            statement=grants.encode(_statement()), signature=bytes(grants.MAX_SIGNED_GRANT_BYTES)
        ).SerializeToString(),
    ],
)
def test_malformed_bytes_are_refused(signed: bytes) -> None:
    _expect(signed, Kind.INVALID, "GRANT_MALFORMED", [KEY])


def test_an_oversized_grant_is_refused_before_parsing() -> None:
    statement = grants.encode(_statement(purpose="p" * records.MAX_PURPOSE))
    signed = _signed(statement)
    assert len(signed) <= grants.MAX_SIGNED_GRANT_BYTES
    padded = (
        signed
        + gateway_pb2.SignedGrant(
            signature=bytes(grants.MAX_SIGNED_GRANT_BYTES + 1 - len(signed))
        ).SerializeToString()
    )
    assert len(padded) > grants.MAX_SIGNED_GRANT_BYTES
    _expect(padded, Kind.INVALID, "GRANT_MALFORMED", [KEY])


@pytest.mark.parametrize(
    "fields",
    [
        {"grant_id": "not-hex"},
        {"grant_id": "AB" * 16},
        {"user_id": ""},
        {"user_id": "no spaces"},
        {"key_id": "00" * 15},
        {"operations": []},
        {"operations": [gateway_pb2.OPERATION_SIGN_DIGEST, gateway_pb2.OPERATION_SIGN_DIGEST]},
        {"operations": [gateway_pb2.OPERATION_UNSPECIFIED]},
        {"operations": [99]},
        {"not_before_unix": NOW, "not_after_unix": NOW},
        {"not_before_unix": -1},
        {"quota_total": 0},
        {"quota_daily": 0},
        {"quota_total": grants.MAX_QUOTA + 1},
        {"quota_daily": grants.MAX_QUOTA + 1},
        {"purpose": "p" * (records.MAX_PURPOSE + 1)},
    ],
)
def test_a_signed_statement_out_of_bounds_is_malformed(fields: dict[str, Any]) -> None:
    message = gateway_pb2.GrantStatement.FromString(grants.encode(_statement()))
    for name, value in fields.items():
        if name == "operations":
            del message.operations[:]
            message.operations.extend(value)
        else:
            setattr(message, name, value)
    # Signed by the right key: the statement itself is what is refused.
    _expect(
        _signed(message.SerializeToString(deterministic=True)),
        Kind.INVALID,
        "GRANT_MALFORMED",
        [KEY],
    )


def _field(number: int, wire_type: int, payload: bytes) -> bytes:
    return bytes([number << 3 | wire_type]) + payload


def _delimited(number: int, value: bytes) -> bytes:
    return _field(number, 2, bytes([len(value)]) + value)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def test_a_non_canonical_encoding_of_a_statement_is_refused() -> None:
    statement = _statement()
    canonical = grants.encode(statement)
    assert grants.verify(_signed(canonical), [KEY.public_key()]) == statement
    tail = canonical[canonical.index(_delimited(2, statement.user_id.encode())) :]
    head = _delimited(1, statement.grant_id.encode())
    assert head + tail == canonical
    operations = canonical[canonical.index(b"\x22") :][:3]  # field 4, packed, one value
    assert operations == b"\x22\x01\x01"
    for variant in (
        tail + head,  # the same fields in another order
        head + _delimited(1, statement.grant_id.encode()) + tail,  # a field repeated
        canonical.replace(operations, _field(4, 0, b"\x01")),  # operations not packed
        canonical + _field(11, 0, _varint(0)),  # an unknown field
        head + _field(12, 0, b"\x80\x00") + tail,  # an over-long varint of an unknown field
    ):
        assert variant != canonical
        # Correctly signed, and still refused: only the RA's own encoding is accepted.
        _expect(_signed(variant), Kind.INVALID, "GRANT_MALFORMED", [KEY])


def test_check_use_accepts_a_fitting_record_inside_the_window() -> None:
    statement = _statement(operations=("sign",))
    for operation in (SIGN, records.Operation.SIGN_RSA_PSS_SHA256):
        grants.check_use(statement, _record(statement, operation=operation), NOW)
    grants.check_use(statement, _record(statement), statement.not_before)
    grants.check_use(statement, _record(statement), statement.not_after - 1)
    decrypting = _statement(operations=("decrypt",))
    grants.check_use(
        decrypting,
        _record(decrypting, operation=records.Operation.DECRYPT_RSA_OAEP_SHA256),
        NOW,
    )


@pytest.mark.parametrize(
    ("changes", "now", "reason"),
    [
        ({"grant_id": "ab" * 16}, NOW, "GRANT_MISMATCH"),
        ({"user_id": "mallory"}, NOW, "GRANT_USER_MISMATCH"),
        ({"organisation_key_id": "cd" * 16}, NOW, "GRANT_KEY_MISMATCH"),
        ({"operation": records.Operation.DECRYPT_RSA_OAEP_SHA256}, NOW, "OPERATION_NOT_GRANTED"),
        ({}, NOW - 61, "GRANT_NOT_YET_VALID"),
        ({}, NOW + 3600, "GRANT_EXPIRED"),
    ],
)
def test_check_use_refuses_a_record_the_grant_does_not_cover(
    changes: dict[str, Any], now: int, reason: str
) -> None:
    statement = _statement()
    with pytest.raises(grants.GrantError) as info:
        grants.check_use(statement, _record(statement, **changes), now)
    assert (info.value.kind, info.value.reason) == (Kind.DENIED, reason)


def test_a_decrypt_grant_does_not_allow_signing() -> None:
    statement = _statement(operations=("decrypt",))
    with pytest.raises(grants.GrantError) as info:
        grants.check_use(statement, _record(statement, operation=SIGN), NOW)
    assert info.value.reason == "OPERATION_NOT_GRANTED"


def test_operation_names_and_values() -> None:
    assert grants.operation_name(gateway_pb2.OPERATION_SIGN_DIGEST) == "sign"
    assert grants.operation_name(gateway_pb2.OPERATION_DECRYPT) == "decrypt"
    for name in grants.OPERATIONS:
        assert grants.operation_name(grants.operation_value(name)) == name
    assert grants.operation_value("sign") == gateway_pb2.OPERATION_SIGN_DIGEST
    for value in (gateway_pb2.OPERATION_UNSPECIFIED, 3, -1):
        with pytest.raises(grants.GrantError) as info:
            grants.operation_name(value)
        assert (info.value.kind, info.value.reason) == (Kind.INVALID, "OPERATION_INVALID")
    with pytest.raises(KeyError):
        grants.operation_value("delete")


def test_read_returns_the_statement_without_a_key_and_refuses_what_verify_refuses() -> None:
    statement = _statement()
    signed = _signed(grants.encode(statement))
    assert grants.read(signed) == statement
    with pytest.raises(grants.GrantError) as info:
        grants.read(signed[:-3])
    assert info.value.reason == "GRANT_MALFORMED"
