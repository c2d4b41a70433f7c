"""Device and PIN proofs: the transcripts phone and cosigner both build, device-key signatures
over them, PIN verifiers and PIN proofs; each proof accepted when right and refused with the wrong
key, the wrong transcript or malformed input."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from functools import cache

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from mobilesign import deviceauth, domains
from mobilesign.errors import Kind

KEY_ID = bytes(range(32))
CHALLENGE = bytes(range(32, 64))
GROUP_KEY = bytes(range(64, 96))
TICKET = b"an enrolment ticket"
PIN = "271828"


def _spki(public_key: object) -> bytes:
    assert isinstance(
        public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey
    )
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


DEVICE = ec.generate_private_key(ec.SECP256R1())
OTHER_DEVICE = ec.generate_private_key(ec.SECP256R1())
DEVICE_SPKI = deviceauth.device_key_spki(DEVICE)


@cache
def _verifier(pin: str, spki: bytes) -> bytes:
    return deviceauth.pin_verifier(pin, spki)


# Device keys ---------------------------------------------------------------------------------


def test_device_key_spki_round_trips() -> None:
    assert _spki(DEVICE.public_key()) == DEVICE_SPKI
    loaded = deviceauth.load_device_key(DEVICE_SPKI)
    assert loaded.public_numbers() == DEVICE.public_key().public_numbers()


def _p256_compressed() -> bytes:
    return DEVICE.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
    )


_SECP256K1 = _spki(ec.generate_private_key(ec.SECP256K1()).public_key())
#: secp256k1's curve OID (1.3.132.0.10) changed to one nobody implements (1.3.132.0.99).
_UNKNOWN_CURVE = _SECP256K1.replace(
    bytes.fromhex("06052b8104000a"), bytes.fromhex("06052b81040063")
)


@pytest.mark.parametrize(
    "spki",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\x30\x03abc", id="garbage"),
        pytest.param(DEVICE_SPKI[:-1], id="truncated"),
        pytest.param(DEVICE_SPKI + b"\x00", id="trailing-octet"),
        pytest.param(b"\x30" * (deviceauth.MAX_DEVICE_KEY_BYTES + 1), id="oversize"),
        pytest.param(_p256_compressed(), id="bare-point-not-spki"),
        pytest.param(_UNKNOWN_CURVE, id="unknown-curve"),
    ],
)
def test_malformed_device_keys_are_refused(spki: bytes) -> None:
    with pytest.raises(deviceauth.DeviceKeyError) as info:
        deviceauth.load_device_key(spki)
    assert (info.value.kind, info.value.reason) == (Kind.INVALID, "DEVICE_KEY_INVALID")


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: ec.generate_private_key(ec.SECP384R1()), id="p384"),
        pytest.param(lambda: ec.generate_private_key(ec.SECP521R1()), id="p521"),
        pytest.param(lambda: ec.generate_private_key(ec.SECP256K1()), id="secp256k1"),
        # Short enough for the size check: refused for what it is.
        pytest.param(lambda: rsa.generate_private_key(65537, 1024), id="rsa-1024"),  # noqa: S505
        pytest.param(lambda: rsa.generate_private_key(65537, 2048), id="rsa-2048"),
        pytest.param(ed25519.Ed25519PrivateKey.generate, id="ed25519"),
    ],
)
def test_keys_that_are_not_p256_are_refused(make: Callable[[], object]) -> None:
    private = make()
    assert isinstance(
        private, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    )
    spki = _spki(private.public_key())
    with pytest.raises(deviceauth.DeviceKeyError) as info:
        deviceauth.load_device_key(spki)
    assert (info.value.kind, info.value.reason) == (Kind.INVALID, "DEVICE_KEY_INVALID")


# Transcripts ---------------------------------------------------------------------------------


def test_enrol_transcript_layout() -> None:
    transcript = deviceauth.enrol_transcript(TICKET, GROUP_KEY, DEVICE_SPKI)
    assert transcript == (
        domains.ENROL
        + hashlib.sha256(TICKET).digest()
        + GROUP_KEY
        + hashlib.sha256(DEVICE_SPKI).digest()
    )
    # Each input changes it.
    others = {
        deviceauth.enrol_transcript(TICKET + b"!", GROUP_KEY, DEVICE_SPKI),
        deviceauth.enrol_transcript(TICKET, bytes(32), DEVICE_SPKI),
        deviceauth.enrol_transcript(TICKET, GROUP_KEY, deviceauth.device_key_spki(OTHER_DEVICE)),
    }
    assert transcript not in others
    assert len(others) == 3


def test_session_transcripts_are_domain_separated() -> None:
    cosigner = deviceauth.session_transcript(KEY_ID, CHALLENGE)
    gateway = deviceauth.gateway_session_transcript(KEY_ID, CHALLENGE)
    assert cosigner == domains.SESSION + KEY_ID + CHALLENGE
    assert gateway == domains.GATEWAY_SESSION + KEY_ID + CHALLENGE
    assert cosigner != gateway
    assert deviceauth.session_transcript(KEY_ID, bytes(32)) != cosigner


# Device-key signatures -----------------------------------------------------------------------

TRANSCRIPTS = [
    pytest.param(lambda: deviceauth.enrol_transcript(TICKET, GROUP_KEY, DEVICE_SPKI), id="enrol"),
    pytest.param(lambda: deviceauth.session_transcript(KEY_ID, CHALLENGE), id="session"),
    pytest.param(
        lambda: deviceauth.gateway_session_transcript(KEY_ID, CHALLENGE), id="gateway-session"
    ),
]


@pytest.mark.parametrize("transcript", TRANSCRIPTS)
def test_device_signature_round_trip(transcript: Callable[[], bytes]) -> None:
    data = transcript()
    signature = deviceauth.sign(DEVICE, data)
    public = deviceauth.load_device_key(DEVICE_SPKI)
    assert deviceauth.verify(public, signature, data)
    # It is a plain ECDSA P-256 / SHA-256 DER signature (raises if not).
    DEVICE.public_key().verify(signature, data, ec.ECDSA(hashes.SHA256()))


@pytest.mark.parametrize("transcript", TRANSCRIPTS)
def test_device_signature_refused_for_another_key_or_transcript(
    transcript: Callable[[], bytes],
) -> None:
    data = transcript()
    signature = deviceauth.sign(DEVICE, data)
    assert not deviceauth.verify(OTHER_DEVICE.public_key(), signature, data)
    assert not deviceauth.verify(DEVICE.public_key(), signature, data + b"\x00")
    assert not deviceauth.verify(DEVICE.public_key(), signature, data[:-1])
    by_other = deviceauth.sign(OTHER_DEVICE, data)
    assert not deviceauth.verify(DEVICE.public_key(), by_other, data)


def test_a_session_signature_does_not_open_a_gateway_session() -> None:
    signature = deviceauth.sign(DEVICE, deviceauth.session_transcript(KEY_ID, CHALLENGE))
    gateway = deviceauth.gateway_session_transcript(KEY_ID, CHALLENGE)
    assert not deviceauth.verify(DEVICE.public_key(), signature, gateway)


@pytest.mark.parametrize(
    "signature",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\x30\x00", id="empty-sequence"),
        pytest.param(b"\xff" * 72, id="garbage"),
        pytest.param(bytes(64), id="raw-zero"),
    ],
)
def test_malformed_device_signatures_are_refused_not_raised(signature: bytes) -> None:
    data = deviceauth.session_transcript(KEY_ID, CHALLENGE)
    assert not deviceauth.verify(DEVICE.public_key(), signature, data)


def test_tampered_signature_is_refused() -> None:
    data = deviceauth.session_transcript(KEY_ID, CHALLENGE)
    signature = bytearray(deviceauth.sign(DEVICE, data))
    signature[-1] ^= 0x01
    assert not deviceauth.verify(DEVICE.public_key(), bytes(signature), data)


# PIN verifiers and proofs --------------------------------------------------------------------


def test_pin_verifier_is_pbkdf2_salted_with_the_device_key() -> None:
    verifier = _verifier(PIN, DEVICE_SPKI)
    assert len(verifier) == deviceauth.PIN_VERIFIER_BYTES
    salt = hashlib.sha256(domains.PIN_VERIFIER_SALT + DEVICE_SPKI).digest()
    assert verifier == hashlib.pbkdf2_hmac(
        "sha256", PIN.encode(), salt, deviceauth.PBKDF2_ITERATIONS, dklen=32
    )
    assert deviceauth.pin_verifier(PIN, DEVICE_SPKI) == verifier
    assert _verifier("314159", DEVICE_SPKI) != verifier
    assert _verifier(PIN, deviceauth.device_key_spki(OTHER_DEVICE)) != verifier


@pytest.mark.parametrize(
    "pin",
    ["", "123", "x" * (deviceauth.MAX_PIN_LENGTH + 1)],
    ids=["empty", "three", "too-long"],
)
def test_pin_length_is_bounded(pin: str) -> None:
    with pytest.raises(ValueError, match="PIN"):
        deviceauth.pin_verifier(pin, DEVICE_SPKI)


@pytest.mark.parametrize(
    "pin", ["1234", "x" * deviceauth.MAX_PIN_LENGTH], ids=["shortest", "longest"]
)
def test_pin_length_bounds_are_inclusive(pin: str) -> None:
    assert len(deviceauth.pin_verifier(pin, DEVICE_SPKI)) == deviceauth.PIN_VERIFIER_BYTES


def test_pin_proof_round_trip() -> None:
    verifier = _verifier(PIN, DEVICE_SPKI)
    transcript = deviceauth.session_transcript(KEY_ID, CHALLENGE)
    proof = deviceauth.pin_proof(verifier, transcript)
    assert len(proof) == 32
    assert deviceauth.check_pin_proof(verifier, transcript, proof)
    assert deviceauth.pin_proof(verifier, transcript) == proof


def test_pin_proof_refused_with_the_wrong_pin_transcript_or_octets() -> None:
    verifier = _verifier(PIN, DEVICE_SPKI)
    transcript = deviceauth.session_transcript(KEY_ID, CHALLENGE)
    proof = deviceauth.pin_proof(verifier, transcript)
    wrong_pin = deviceauth.pin_proof(_verifier("314159", DEVICE_SPKI), transcript)
    assert not deviceauth.check_pin_proof(verifier, transcript, wrong_pin)
    other_challenge = deviceauth.session_transcript(KEY_ID, bytes(32))
    assert not deviceauth.check_pin_proof(verifier, other_challenge, proof)
    gateway = deviceauth.gateway_session_transcript(KEY_ID, CHALLENGE)
    assert not deviceauth.check_pin_proof(verifier, gateway, proof)
    assert not deviceauth.check_pin_proof(verifier, transcript, proof[:-1])
    assert not deviceauth.check_pin_proof(verifier, transcript, b"")
    flipped = bytes([proof[0] ^ 0x01]) + proof[1:]
    assert not deviceauth.check_pin_proof(verifier, transcript, flipped)
