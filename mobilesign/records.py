"""The bytes that are signed and logged when an organisation key is used.

- A **service record** (``MSR1``) says who used which key for what, when and why. Its bytes are
  fixed when the gateway creates it; the user co-signs exactly these bytes (Ed25519, through the
  two-party protocol), the HSM proxy checks them next to the key, and the audit log stores them.
- A **log entry** (``MSL1``) is what the Merkle tree commits to: a co-signed record, or the
  outcome of executing one.
- The **gateway authorisation** digest binds the gateway's approval to one co-signed record.

Encoding (documented in the README): a 4-byte magic naming format and version, then each field
in a fixed order as a 2-byte big-endian length followed by the field's bytes. Integers are 8-byte
big-endian. Parsing is strict: unknown magic, short or trailing bytes, and out-of-range fields are
refused, so each value has exactly one encoding.
"""

from __future__ import annotations

import dataclasses
import enum
import hmac
import struct
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID

from mobilesign import domains
from mobilesign.errors import Error, Kind

RECORD_MAGIC = b"MSR1"
ENTRY_MAGIC = b"MSL1"
MAX_PURPOSE = 200


class RecordError(Error):
    """Bytes that are not a well-formed record or log entry (INVALID RECORD_MALFORMED)."""

    def __init__(self, message: str) -> None:
        super().__init__(Kind.INVALID, "RECORD_MALFORMED", message)


class Operation(enum.Enum):
    """What a record allows; the value is what the record carries."""

    SIGN_ECDSA_SHA256 = "sign-digest:ecdsa-p256-sha256"
    SIGN_RSA_PSS_SHA256 = "sign-digest:rsa-pss-sha256"
    DECRYPT_RSA_OAEP_SHA256 = "decrypt:rsa-oaep-sha256"

    @property
    def is_sign(self) -> bool:
        """True for the signing operations."""
        return self.value.startswith("sign-digest:")


@dataclass(frozen=True)
class ServiceRecord:
    """One use of an organisation key, as the user co-signs it."""

    record_id: str  # 32 hex digits, random
    user_id: str
    user_key_id: str  # 64 hex digits: the joint public key
    certificate_serial: str  # the user's personal certificate
    organisation_key_id: str  # 32 hex digits: the HSM key id
    organisation_certificate_sha256: bytes  # fingerprint of the organisation certificate
    operation: Operation
    input_sha256: bytes
    purpose: str
    grant_id: str
    time_ms: int
    #: 16 bytes only the gateway that prepared the record can make (:func:`prepared_nonce`).
    gateway_nonce: bytes

    def encode(self) -> bytes:
        """The record's bytes (``MSR1``)."""
        fields = [
            bytes.fromhex(self.record_id),
            self.user_id.encode(),
            bytes.fromhex(self.user_key_id),
            self.certificate_serial.encode(),
            bytes.fromhex(self.organisation_key_id),
            self.organisation_certificate_sha256,
            self.operation.value.encode(),
            self.input_sha256,
            self.purpose.encode(),
            bytes.fromhex(self.grant_id),
            struct.pack(">Q", self.time_ms),
            self.gateway_nonce,
        ]
        return RECORD_MAGIC + b"".join(struct.pack(">H", len(f)) + f for f in fields)


NONCE_BYTES = 16


def prepared_nonce(key: bytes, record: ServiceRecord) -> bytes:
    """The gateway nonce of ``record`` under the gateway's record key: a MAC of every other
    field, so that a record the gateway prepared can come back at execution unstored."""
    unsealed = dataclasses.replace(record, gateway_nonce=bytes(NONCE_BYTES)).encode()
    return hmac.digest(key, domains.PREPARED_RECORD + unsealed, "sha256")[:NONCE_BYTES]


def prepared_with(key: bytes, record: ServiceRecord) -> bool:
    """Whether ``record``'s gateway nonce is the one :func:`prepared_nonce` makes with ``key``."""
    return hmac.compare_digest(record.gateway_nonce, prepared_nonce(key, record))


def _fields(data: bytes, magic: bytes, count: int) -> list[bytes]:
    if not data.startswith(magic):
        raise RecordError("unknown format")
    fields = []
    offset = len(magic)
    for _ in range(count):
        if offset + 2 > len(data):
            raise RecordError("truncated")
        (length,) = struct.unpack_from(">H", data, offset)
        offset += 2
        if offset + length > len(data):
            raise RecordError("truncated")
        fields.append(data[offset : offset + length])
        offset += length
    if offset != len(data):
        raise RecordError("trailing bytes")
    return fields


def _exact(value: bytes, size: int, what: str) -> bytes:
    if len(value) != size:
        raise RecordError(f"{what} must be {size} bytes")
    return value


def _text(value: bytes, what: str, limit: int) -> str:
    try:
        text = value.decode()
    except UnicodeDecodeError:
        raise RecordError(f"{what} is not UTF-8") from None
    if len(text) > limit:
        raise RecordError(f"{what} is too long")
    return text


def decode_record(data: bytes) -> ServiceRecord:
    """Parse record bytes strictly; re-encoding gives the same bytes."""
    f = _fields(data, RECORD_MAGIC, 12)
    try:
        operation = Operation(_text(f[6], "operation", 64))
    except ValueError:
        raise RecordError("unknown operation") from None
    record = ServiceRecord(
        record_id=_exact(f[0], 16, "record id").hex(),
        user_id=_text(f[1], "user id", 64),
        user_key_id=_exact(f[2], 32, "user key id").hex(),
        certificate_serial=_text(f[3], "certificate serial", 40),
        organisation_key_id=_exact(f[4], 16, "organisation key id").hex(),
        organisation_certificate_sha256=_exact(f[5], 32, "certificate fingerprint"),
        operation=operation,
        input_sha256=_exact(f[7], 32, "input digest"),
        purpose=_text(f[8], "purpose", MAX_PURPOSE),
        grant_id=_exact(f[9], 16, "grant id").hex(),
        time_ms=struct.unpack(">Q", _exact(f[10], 8, "time"))[0],
        gateway_nonce=_exact(f[11], NONCE_BYTES, "gateway nonce"),
    )
    if record.encode() != data:
        raise RecordError("not the canonical encoding")
    return record


class EntryKind(enum.Enum):
    """What a log entry holds."""

    RECORD = 1
    OUTCOME = 2


@dataclass(frozen=True)
class RecordEntry:
    """A co-signed service record, as logged before the operation runs."""

    record: bytes
    user_signature: bytes

    def encode(self) -> bytes:
        """The entry's bytes (``MSL1``, kind 1)."""
        return _entry(EntryKind.RECORD, [self.record, self.user_signature])


@dataclass(frozen=True)
class OutcomeEntry:
    """The outcome of executing a logged record."""

    record_id: str
    succeeded: bool
    reason: str  # empty on success
    result_sha256: bytes  # SHA-256 of the result; 32 zero bytes on failure

    def encode(self) -> bytes:
        """The entry's bytes (``MSL1``, kind 2)."""
        return _entry(
            EntryKind.OUTCOME,
            [
                bytes.fromhex(self.record_id),
                b"\x01" if self.succeeded else b"\x00",
                self.reason.encode(),
                self.result_sha256,
            ],
        )


def _entry(kind: EntryKind, fields: list[bytes]) -> bytes:
    return (
        ENTRY_MAGIC + bytes([kind.value]) + b"".join(struct.pack(">H", len(f)) + f for f in fields)
    )


def decode_entry(data: bytes) -> RecordEntry | OutcomeEntry:
    """Parse a log entry strictly."""
    if len(data) < 5 or not data.startswith(ENTRY_MAGIC):
        raise RecordError("unknown entry format")
    body = ENTRY_MAGIC + data[5:]
    if data[4] == EntryKind.RECORD.value:
        record, signature = _fields(body, ENTRY_MAGIC, 2)
        entry: RecordEntry | OutcomeEntry = RecordEntry(record, signature)
    elif data[4] == EntryKind.OUTCOME.value:
        record_id, ok, reason, digest = _fields(body, ENTRY_MAGIC, 4)
        if ok not in (b"\x00", b"\x01"):
            raise RecordError("bad outcome flag")
        entry = OutcomeEntry(
            _exact(record_id, 16, "record id").hex(),
            ok == b"\x01",
            _text(reason, "reason", 200),
            _exact(digest, 32, "result digest"),
        )
    else:
        raise RecordError("unknown entry kind")
    if entry.encode() != data:
        raise RecordError("not the canonical encoding")
    return entry


#: Associated data of the cosigner's sealed key attestation (see :class:`KeyAttestation`).
KEY_ATTESTATION_AAD = domains.KEY_ATTESTATION_AAD


@dataclass(frozen=True)
class KeyAttestation:
    """What the cosigner seals to attest that it holds a share of a user's key: the joint key,
    the user it was enrolled for, and the enrolment ticket it was enrolled with.

    Encoding: the ``ENROLLED_KEY`` tag, then the three fields length-prefixed as in a record
    (the 32-byte key, the user id in UTF-8, the 16-byte ticket id)."""

    user_key_id: str  # 64 hex digits
    user_id: str
    ticket_id: str  # 32 hex digits

    def encode(self) -> bytes:
        """The plaintext to seal."""
        fields = [
            bytes.fromhex(self.user_key_id),
            self.user_id.encode(),
            bytes.fromhex(self.ticket_id),
        ]
        return domains.ENROLLED_KEY + b"".join(struct.pack(">H", len(f)) + f for f in fields)


def decode_key_attestation(data: bytes) -> KeyAttestation:
    """Parse an opened attestation strictly (:class:`RecordError` otherwise)."""
    f = _fields(data, domains.ENROLLED_KEY, 3)
    attestation = KeyAttestation(
        user_key_id=_exact(f[0], 32, "user key id").hex(),
        user_id=_text(f[1], "user id", 64),
        ticket_id=_exact(f[2], 16, "ticket id").hex(),
    )
    if attestation.encode() != data:
        raise RecordError("not the canonical encoding")
    return attestation


def names_certificate(record: ServiceRecord, certificate: x509.Certificate) -> bool:
    """True when ``certificate`` is the one the record names: same joint Ed25519 key, serial
    and user (CN)."""
    key = certificate.public_key()
    if not isinstance(key, ed25519.Ed25519PublicKey):
        return False
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    names = [a.value for a in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return (
        raw.hex() == record.user_key_id
        and format(certificate.serial_number, "x") == record.certificate_serial
        and names == [record.user_id]
    )
