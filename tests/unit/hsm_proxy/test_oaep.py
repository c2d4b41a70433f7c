"""EME-OAEP decoding (SHA-256, MGF1-SHA-256, empty label) after the token's raw RSA operation.

Round trips start from encryptions made by ``cryptography``; the raw private-key operation
(``m = c^d mod n``) stands in for the token's ``CKM_RSA_X_509``. Malformed encodings are built
by a reference encoder in this file (itself checked against ``cryptography``'s decryption), with
one step of RFC 8017 section 7.1.1 done wrong each time.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from functools import cache

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from hsm_proxy import oaep

HASH_BYTES = 32
LABEL_HASH = hashlib.sha256(b"").digest()


@cache
def _key(bits: int) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def _oaep(label: bytes | None = None) -> padding.OAEP:
    return padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=label)


def _raw_decrypt(key: rsa.RSAPrivateKey, ciphertext: bytes) -> bytes:
    """What ``CKM_RSA_X_509`` returns: c^d mod n, as many octets as the modulus."""
    numbers = key.private_numbers()
    k = (key.key_size + 7) // 8
    m = pow(int.from_bytes(ciphertext, "big"), numbers.d, numbers.public_numbers.n)
    return m.to_bytes(k, "big")


def _raw_encrypt(key: rsa.RSAPrivateKey, encoded: bytes) -> bytes:
    numbers = key.public_key().public_numbers()
    k = (key.key_size + 7) // 8
    return pow(int.from_bytes(encoded, "big"), numbers.e, numbers.n).to_bytes(k, "big")


def _mgf1(seed: bytes, length: int) -> bytes:
    out = b""
    counter = 0
    while len(out) < length:
        out += hashlib.sha256(seed + counter.to_bytes(4, "big")).digest()
        counter += 1
    return out[:length]


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def _encode(
    message: bytes,
    k: int,
    *,
    leading: int = 0,
    label_hash: bytes = LABEL_HASH,
    separator: bytes = b"\x01",
    tamper_db: Callable[[bytearray], None] | None = None,
) -> bytes:
    """A reference EME-OAEP encoding of ``message`` for a ``k``-octet modulus; the keyword
    arguments make it wrong on purpose."""
    padding_length = k - len(message) - 2 * HASH_BYTES - 2
    db = bytearray(label_hash + b"\x00" * padding_length + separator + message)
    if tamper_db is not None:
        tamper_db(db)
    seed = os.urandom(HASH_BYTES)
    masked_db = _xor(bytes(db), _mgf1(seed, len(db)))
    masked_seed = _xor(seed, _mgf1(masked_db, HASH_BYTES))
    return bytes([leading]) + masked_seed + masked_db


@pytest.mark.parametrize("bits", [2048, 3072])
@pytest.mark.parametrize(
    "length", [0, 1, 32, 100], ids=["empty", "one-octet", "aes-key", "hundred"]
)
def test_decodes_what_cryptography_encrypted(bits: int, length: int) -> None:
    key = _key(bits)
    message = os.urandom(length)
    ciphertext = key.public_key().encrypt(message, _oaep())
    k = (bits + 7) // 8
    assert oaep.decode(_raw_decrypt(key, ciphertext), k) == message


def test_decodes_the_longest_message() -> None:
    key = _key(2048)
    k = 256
    message = os.urandom(k - 2 * HASH_BYTES - 2)
    ciphertext = key.public_key().encrypt(message, _oaep())
    assert oaep.decode(_raw_decrypt(key, ciphertext), k) == message


def test_message_may_contain_zero_and_one_octets() -> None:
    key = _key(2048)
    message = b"\x00\x01\x00\x01\x01\x00"
    ciphertext = key.public_key().encrypt(message, _oaep())
    assert oaep.decode(_raw_decrypt(key, ciphertext), 256) == message


def test_reference_encoder_is_oaep() -> None:
    """The encoder that builds the malformed cases below is right when not told otherwise:
    ``cryptography`` decrypts what it encodes, and so does the module."""
    key = _key(2048)
    encoded = _encode(b"reference", 256)
    assert key.decrypt(_raw_encrypt(key, encoded), _oaep()) == b"reference"
    assert oaep.decode(encoded, 256) == b"reference"


def _nonzero_padding(db: bytearray) -> None:
    db[HASH_BYTES + 3] = 0x02  # inside PS, before the separator


def _padding_ff(db: bytearray) -> None:
    db[HASH_BYTES] = 0xFF


def _flip_label_hash(db: bytearray) -> None:
    db[0] ^= 0x01


@pytest.mark.parametrize(
    "encoded",
    [
        pytest.param(lambda: _encode(b"m", 256, leading=1), id="leading-01"),
        pytest.param(lambda: _encode(b"m", 256, leading=0x80), id="leading-80"),
        pytest.param(lambda: _encode(b"m", 256, tamper_db=_flip_label_hash), id="label-hash-bit"),
        pytest.param(
            lambda: _encode(b"m", 256, label_hash=hashlib.sha256(b"label").digest()),
            id="label-hash-of-another-label",
        ),
        pytest.param(lambda: _encode(b"m", 256, separator=b"\x00"), id="separator-00"),
        pytest.param(lambda: _encode(b"m", 256, separator=b"\x02"), id="separator-02"),
        pytest.param(lambda: _encode(b"", 256, separator=b"\x00"), id="no-separator-at-all"),
        pytest.param(lambda: _encode(b"m", 256, tamper_db=_nonzero_padding), id="padding-02"),
        pytest.param(lambda: _encode(b"m", 256, tamper_db=_padding_ff), id="padding-ff-first"),
        pytest.param(lambda: bytes(256), id="all-zero"),
        pytest.param(lambda: b"\xff" * 256, id="all-ff"),
    ],
)
def test_malformed_encodings_are_refused(encoded: Callable[[], bytes]) -> None:
    with pytest.raises(oaep.OaepError):
        oaep.decode(encoded(), 256)


def test_encryption_under_another_label_is_refused() -> None:
    key = _key(2048)
    ciphertext = key.public_key().encrypt(b"secret", _oaep(label=b"other label"))
    with pytest.raises(oaep.OaepError):
        oaep.decode(_raw_decrypt(key, ciphertext), 256)


def test_decryption_with_the_wrong_key_is_refused() -> None:
    ciphertext = _key(2048).public_key().encrypt(b"secret", _oaep())
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(oaep.OaepError):
        oaep.decode(_raw_decrypt(other, ciphertext), 256)


@pytest.mark.parametrize(
    ("length", "modulus_bytes"),
    [
        pytest.param(255, 256, id="one-octet-short"),
        pytest.param(257, 256, id="one-octet-long"),
        pytest.param(0, 256, id="empty"),
        pytest.param(256, 384, id="other-modulus"),
        pytest.param(2 * HASH_BYTES + 1, 2 * HASH_BYTES + 1, id="modulus-too-small"),
    ],
)
def test_wrong_lengths_are_refused(length: int, modulus_bytes: int) -> None:
    encoded = _encode(b"m", 256)
    # Cut or extend a valid 256-octet encoding (the modulus-too-small case is all of its own).
    candidate = (encoded + bytes(max(0, length - 256)))[:length]
    with pytest.raises(oaep.OaepError):
        oaep.decode(candidate, modulus_bytes)


def test_smallest_modulus_with_room_for_an_empty_message() -> None:
    k = 2 * HASH_BYTES + 2
    assert oaep.decode(_encode(b"", k), k) == b""
