"""Service records and log entries: one encoding per value, strict parsing, stable bytes."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mobilesign import records

_HEX16 = st.binary(min_size=16, max_size=16).map(bytes.hex)
_TEXT = st.text(max_size=60).filter(lambda t: len(t.encode()) < 200)

_RECORDS = st.builds(
    records.ServiceRecord,
    record_id=_HEX16,
    user_id=st.text(min_size=1, max_size=64),
    user_key_id=st.binary(min_size=32, max_size=32).map(bytes.hex),
    certificate_serial=st.integers(1, 2**159).map(lambda n: format(n, "x")),
    organisation_key_id=_HEX16,
    organisation_certificate_sha256=st.binary(min_size=32, max_size=32),
    operation=st.sampled_from(list(records.Operation)),
    input_sha256=st.binary(min_size=32, max_size=32),
    purpose=st.text(max_size=200),
    grant_id=_HEX16,
    time_ms=st.integers(0, 2**63),
    gateway_nonce=st.binary(min_size=16, max_size=16),
)


def _example() -> records.ServiceRecord:
    return records.ServiceRecord(
        record_id="00112233445566778899aabbccddeeff",
        user_id="alice",
        user_key_id="ab" * 32,
        certificate_serial="1f",
        organisation_key_id="0f" * 16,
        organisation_certificate_sha256=bytes(range(32)),
        operation=records.Operation.SIGN_ECDSA_SHA256,
        input_sha256=hashlib.sha256(b"x").digest(),
        purpose="purchase",
        grant_id="ee" * 16,
        time_ms=1_764_000_000_000,
        gateway_nonce=bytes(16),
    )


def test_known_encoding_is_stable() -> None:
    # A change here changes what users have signed: it must be a new format version.
    encoded = _example().encode()
    assert encoded.startswith(b"MSR1\x00\x10\x00\x11\x22")
    assert encoded == (
        b"MSR1"
        + b"".join(
            len(f).to_bytes(2, "big") + f
            for f in [
                bytes.fromhex("00112233445566778899aabbccddeeff"),
                b"alice",
                bytes.fromhex("ab" * 32),
                b"1f",
                bytes.fromhex("0f" * 16),
                bytes(range(32)),
                b"sign-digest:ecdsa-p256-sha256",
                hashlib.sha256(b"x").digest(),
                b"purchase",
                bytes.fromhex("ee" * 16),
                (1_764_000_000_000).to_bytes(8, "big"),
                bytes(16),
            ]
        )
    )


@settings(max_examples=50)
@given(_RECORDS)
def test_records_round_trip(record: records.ServiceRecord) -> None:
    assert records.decode_record(record.encode()) == record


@settings(max_examples=50)
@given(_RECORDS, st.data())
def test_any_truncation_or_extension_is_refused(
    record: records.ServiceRecord, data: st.DataObject
) -> None:
    encoded = record.encode()
    cut = data.draw(st.integers(0, len(encoded) - 1))
    with pytest.raises(records.RecordError):
        records.decode_record(encoded[:cut])
    with pytest.raises(records.RecordError):
        records.decode_record(encoded + data.draw(st.binary(min_size=1, max_size=8)))


@settings(max_examples=100)
@given(st.binary(max_size=400))
def test_random_bytes_never_crash(data: bytes) -> None:
    for decode in (records.decode_record, records.decode_entry):
        with contextlib.suppress(records.RecordError):
            decode(data)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("operation", "sign-digest:md5"),
        ("record_id", b"\x00" * 15),
    ],
)
def test_bad_fields_are_refused(field: str, value: object) -> None:
    encoded = _example().encode()
    if field == "operation":
        encoded = encoded.replace(
            b"sign-digest:ecdsa-p256-sha256", str(value).encode()[:29].ljust(29, b"x")
        )
    else:
        assert isinstance(value, bytes)
        encoded = b"MSR1" + len(value).to_bytes(2, "big") + value + encoded[4 + 2 + 16 :]
    with pytest.raises(records.RecordError):
        records.decode_record(encoded)


@settings(max_examples=50)
@given(st.binary(max_size=300), st.binary(max_size=80))
def test_record_entries_round_trip(record: bytes, signature: bytes) -> None:
    entry = records.RecordEntry(record, signature)
    assert records.decode_entry(entry.encode()) == entry


@settings(max_examples=50)
@given(_HEX16, st.booleans(), _TEXT, st.binary(min_size=32, max_size=32))
def test_outcome_entries_round_trip(
    record_id: str, succeeded: bool, reason: str, digest: bytes
) -> None:
    entry = records.OutcomeEntry(record_id, succeeded, reason, digest)
    assert records.decode_entry(entry.encode()) == entry


def test_entry_kinds_are_distinct() -> None:
    outcome = records.OutcomeEntry("00" * 16, True, "", bytes(32)).encode()
    assert outcome[4] == records.EntryKind.OUTCOME.value
    with pytest.raises(records.RecordError):
        records.decode_entry(outcome[:4] + b"\x09" + outcome[5:])


def test_key_attestation_round_trips_and_binds_key_user_and_ticket() -> None:
    attestation = records.KeyAttestation("ab" * 32, "alice@example", "cd" * 16)
    encoded = attestation.encode()
    assert encoded.startswith(b"mobilesign/v1 enrolled-key\x00")
    assert records.decode_key_attestation(encoded) == attestation
    for other in (
        dataclasses.replace(attestation, user_key_id="ac" * 32),
        dataclasses.replace(attestation, user_id="bob"),
        dataclasses.replace(attestation, ticket_id="ce" * 16),
    ):
        assert other.encode() != encoded


@pytest.mark.parametrize(
    "mangle",
    [
        lambda b: b[:-1],
        lambda b: b + b"\x00",
        lambda b: b"mobilesign/v1 enrolled-kez\x00" + b[27:],
        lambda b: b[:27] + b"\x00\x1f" + b[29:60],  # a 31-byte key field
        lambda b: b"mobilesign/v1 enrolled-key\x00" + bytes.fromhex("ab" * 32),  # key alone
        lambda b: b[:-18] + b"\x00\x0f" + b[-15:],  # a 15-byte ticket field
    ],
)
def test_malformed_key_attestations_are_refused(mangle: Any) -> None:
    encoded = records.KeyAttestation("ab" * 32, "alice", "cd" * 16).encode()
    with pytest.raises(records.RecordError):
        records.decode_key_attestation(mangle(encoded))


_KEY = bytes(range(32))


@settings(max_examples=50)
@given(record=_RECORDS, other=_RECORDS)
def test_a_prepared_record_is_recognised_and_any_change_is_not(
    record: records.ServiceRecord, other: records.ServiceRecord
) -> None:
    prepared = dataclasses.replace(record, gateway_nonce=records.prepared_nonce(_KEY, record))
    assert records.prepared_with(_KEY, prepared)
    assert not records.prepared_with(bytes(32), prepared)  # another gateway's key
    for field in dataclasses.fields(records.ServiceRecord):
        if field.name == "gateway_nonce" or getattr(other, field.name) == getattr(
            record, field.name
        ):
            continue
        changed = dataclasses.replace(prepared, **{field.name: getattr(other, field.name)})
        assert not records.prepared_with(_KEY, changed), field.name


def test_the_prepared_nonce_is_pinned() -> None:
    # HMAC-SHA256 under the domain tag, truncated to 16 bytes, over the record with a zero nonce.
    record = _example()
    expected = hmac.digest(_KEY, b"mobilesign/v1 prepared-record\x00" + record.encode(), "sha256")[
        :16
    ]
    assert records.prepared_nonce(_KEY, record) == expected
