"""How a phone proves who it is to the cosigner: its device key and its PIN.

Shared by the client SDK (which makes the proofs) and the cosigner (which checks them), so that
both sides build byte-identical transcripts. docs/protocol.md specifies the same bytes.

- The **device key** is an ordinary EC P-256 key pair kept on the phone (in a hardware keystore
  on real devices). Its signatures are ECDSA with SHA-256, DER-encoded.
- The **PIN** never leaves the phone. The phone derives a 32-byte PIN verifier with
  PBKDF2-HMAC-SHA256 (salted with the device key), registers it once at enrolment, and later
  proves knowledge of it with an HMAC over a fresh server challenge. The cosigner stores the
  verifier sealed by the HSM and counts wrong proofs.
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mobilesign import domains
from mobilesign.errors import Error, Kind

PIN_VERIFIER_BYTES = 32
CHALLENGE_BYTES = 32
PBKDF2_ITERATIONS = 200_000
MIN_PIN_LENGTH = 4
MAX_PIN_LENGTH = 64
MAX_DEVICE_KEY_BYTES = 200


class DeviceKeyError(Error):
    """A device public key is malformed or not an EC P-256 key (INVALID DEVICE_KEY_INVALID)."""

    def __init__(self, message: str) -> None:
        super().__init__(Kind.INVALID, "DEVICE_KEY_INVALID", message)


def load_device_key(spki: bytes) -> ec.EllipticCurvePublicKey:
    """Parse a device public key (DER SubjectPublicKeyInfo, EC P-256)."""
    if not spki or len(spki) > MAX_DEVICE_KEY_BYTES:
        raise DeviceKeyError("device key malformed")
    try:
        key = serialization.load_der_public_key(spki)
    except (ValueError, UnsupportedAlgorithm):
        raise DeviceKeyError("device key malformed") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise DeviceKeyError("device key must be EC P-256")
    return key


def device_key_spki(key: ec.EllipticCurvePrivateKey) -> bytes:
    """The DER SubjectPublicKeyInfo of a device key's public half."""
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def pin_verifier(pin: str, device_spki: bytes) -> bytes:
    """The PIN verifier registered at enrolment (computed on the phone only)."""
    if not MIN_PIN_LENGTH <= len(pin) <= MAX_PIN_LENGTH:
        raise ValueError(f"a PIN has {MIN_PIN_LENGTH} to {MAX_PIN_LENGTH} characters")
    salt = hashlib.sha256(domains.PIN_VERIFIER_SALT + device_spki).digest()
    return hashlib.pbkdf2_hmac(
        "sha256", pin.encode(), salt, PBKDF2_ITERATIONS, dklen=PIN_VERIFIER_BYTES
    )


def enrol_transcript(ticket: bytes, group_public_key: bytes, device_spki: bytes) -> bytes:
    """What the device key signs at the end of enrolment: it binds the device to the new key."""
    return (
        domains.ENROL
        + hashlib.sha256(ticket).digest()
        + group_public_key
        + hashlib.sha256(device_spki).digest()
    )


def session_transcript(key_id: bytes, challenge: bytes) -> bytes:
    """What the device key signs, and the PIN proof covers, when a signing session opens."""
    return domains.SESSION + key_id + challenge


def gateway_session_transcript(key_id: bytes, challenge: bytes) -> bytes:
    """What the device key signs to open a session with the gateway."""
    return domains.GATEWAY_SESSION + key_id + challenge


def sign(device_key: ec.EllipticCurvePrivateKey, transcript: bytes) -> bytes:
    """ECDSA P-256 / SHA-256 signature (DER) by the device key."""
    return device_key.sign(transcript, ec.ECDSA(hashes.SHA256()))


def verify(device_key: ec.EllipticCurvePublicKey, signature: bytes, transcript: bytes) -> bool:
    """True when ``signature`` is the device key's signature on ``transcript``."""
    try:
        device_key.verify(signature, transcript, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return False
    return True


def pin_proof(verifier: bytes, transcript: bytes) -> bytes:
    """HMAC-SHA256 under the PIN verifier over the session transcript."""
    return hmac.new(verifier, domains.PIN_PROOF + transcript, hashlib.sha256).digest()


def check_pin_proof(verifier: bytes, transcript: bytes, proof: bytes) -> bool:
    """Constant-time check of a PIN proof."""
    return hmac.compare_digest(pin_proof(verifier, transcript), proof)
