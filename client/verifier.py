"""Offline verification (flow S5): with the CA certificate and the log's public key, anyone can
check a receipt — the user's certificate, the user's signature on the service record, the
checkpoint's signature and the record's inclusion in the log — and that a later checkpoint
extends an earlier one. Nothing here talks to a server.
"""

from __future__ import annotations

import base64
import datetime
import json
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from client.errors import ClientError
from mobilesign import auditlog, pkix, records
from mobilesign.v1 import gateway_pb2

RECEIPT_FORMAT = "mobilesign-receipt-v1"


class VerificationFailed(ClientError):
    """The receipt or proof does not verify; ``reason`` says which check failed."""


@dataclass(frozen=True)
class TrustAnchors:
    """What a verifier must hold beforehand: the CA certificate, the log's key and origin, and
    (for a phone about to co-sign) the RA's grant key."""

    ca_certificate: bytes
    log_public_key: bytes
    log_origin: str
    #: DER SubjectPublicKeyInfo of the RA's grant key; receipts are verified without it.
    grant_key_spki: bytes = b""


@dataclass(frozen=True)
class VerifiedReceipt:
    """What a verified receipt proves."""

    record: records.ServiceRecord
    entry_index: int
    checkpoint: auditlog.Checkpoint


def receipt_to_json(receipt: gateway_pb2.Receipt, log_origin: str) -> str:
    """The receipt as a self-contained JSON document (binary fields in base64)."""

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return json.dumps(
        {
            "format": RECEIPT_FORMAT,
            "log_origin": log_origin,
            "record": b64(receipt.record),
            "user_signature": b64(receipt.user_signature),
            "user_certificate": b64(receipt.user_certificate),
            "entry_index": receipt.entry_index,
            "entry": b64(receipt.entry),
            "inclusion_proof": [b64(h) for h in receipt.inclusion_proof],
            "checkpoint": receipt.checkpoint.decode(),
        },
        indent=2,
    )


def receipt_from_json(text: str) -> tuple[gateway_pb2.Receipt, str]:
    """Parse a JSON receipt; returns it with the log origin it names."""
    try:
        document: dict[str, Any] = json.loads(text)
        if document.get("format") != RECEIPT_FORMAT:
            raise VerificationFailed("RECEIPT_MALFORMED", "not a mobilesign receipt")

        def b64(name: str) -> bytes:
            return base64.b64decode(document[name], validate=True)

        receipt = gateway_pb2.Receipt(
            record=b64("record"),
            user_signature=b64("user_signature"),
            user_certificate=b64("user_certificate"),
            entry_index=int(document["entry_index"]),
            entry=b64("entry"),
            inclusion_proof=[
                base64.b64decode(h, validate=True) for h in document["inclusion_proof"]
            ],
            checkpoint=document["checkpoint"].encode(),
        )
        return receipt, str(document["log_origin"])
    except (ValueError, KeyError, TypeError, AttributeError):
        raise VerificationFailed("RECEIPT_MALFORMED", "the receipt does not parse") from None


def _log_verifier(log_public_key: bytes, origin: str) -> auditlog.NoteVerifier:
    key = serialization.load_der_public_key(log_public_key)
    if not isinstance(key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
        raise VerificationFailed("LOG_KEY_INVALID", "unsupported log key")
    return auditlog.NoteVerifier(origin, key)


def _checkpoint(note: bytes, verifier: auditlog.NoteVerifier) -> auditlog.Checkpoint:
    try:
        return auditlog.verify_checkpoint(note, verifier)
    except auditlog.NoteError as exc:
        raise VerificationFailed("CHECKPOINT_INVALID", str(exc)) from None


def verify_receipt(
    receipt: gateway_pb2.Receipt, ca_certificate: bytes, log_public_key: bytes, log_origin: str
) -> VerifiedReceipt:
    """Check every link of a receipt; raise :class:`VerificationFailed` at the first break."""
    try:
        record = records.decode_record(receipt.record)
    except records.RecordError as exc:
        raise VerificationFailed("RECORD_MALFORMED", str(exc)) from None
    try:
        ca = x509.load_der_x509_certificate(ca_certificate)
        user = x509.load_der_x509_certificate(receipt.user_certificate)
    except ValueError:
        raise VerificationFailed("CERTIFICATE_MALFORMED", "a certificate does not parse") from None
    # The chain is judged at the time of the record, so old receipts stay verifiable.
    when = datetime.datetime.fromtimestamp(record.time_ms / 1000, datetime.UTC)
    try:
        pkix.verify_issued_by(user, ca, when)
    except pkix.ChainError as exc:
        raise VerificationFailed("CERTIFICATE_UNTRUSTED", str(exc)) from None
    user_key = user.public_key()
    if not isinstance(user_key, ed25519.Ed25519PublicKey) or not records.names_certificate(
        record, user
    ):
        raise VerificationFailed("CERTIFICATE_MISMATCH", "the record names another certificate")
    try:
        user_key.verify(receipt.user_signature, receipt.record)
    except InvalidSignature:
        raise VerificationFailed("USER_SIGNATURE_INVALID", "the user did not sign this") from None
    if receipt.entry != records.RecordEntry(receipt.record, receipt.user_signature).encode():
        raise VerificationFailed("ENTRY_MISMATCH", "the log entry is not this signed record")
    checkpoint = _checkpoint(receipt.checkpoint, _log_verifier(log_public_key, log_origin))
    try:
        auditlog.verify_inclusion(
            leaf_hash=auditlog.leaf_hash(receipt.entry),
            index=receipt.entry_index,
            size=checkpoint.size,
            proof=list(receipt.inclusion_proof),
            root=checkpoint.root_hash,
        )
    except auditlog.ProofError as exc:
        raise VerificationFailed("INCLUSION_INVALID", str(exc)) from None
    return VerifiedReceipt(record, receipt.entry_index, checkpoint)


def verify_consistency(
    old_checkpoint: bytes,
    new_checkpoint: bytes,
    proof: list[bytes],
    log_public_key: bytes,
    log_origin: str,
) -> tuple[auditlog.Checkpoint, auditlog.Checkpoint]:
    """Check both checkpoints' signatures and that the newer tree extends the older one."""
    verifier = _log_verifier(log_public_key, log_origin)
    old = _checkpoint(old_checkpoint, verifier)
    new = _checkpoint(new_checkpoint, verifier)
    try:
        auditlog.verify_consistency(
            old_size=old.size,
            new_size=new.size,
            proof=proof,
            old_root=old.root_hash,
            new_root=new.root_hash,
        )
    except auditlog.ProofError as exc:
        raise VerificationFailed("CONSISTENCY_INVALID", str(exc)) from None
    return old, new
