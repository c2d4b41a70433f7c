"""EME-OAEP decoding (RFC 8017 section 7.1.2) with SHA-256 and MGF1-SHA-256, empty label.

Used when the PKCS#11 module cannot do ``CKM_RSA_PKCS_OAEP`` with SHA-256 (SoftHSM 2.6 accepts
SHA-1 only): the token performs the raw RSA private-key operation (``CKM_RSA_X_509``), so the
key never leaves it, and the padding is removed here. Every failure is the same
:class:`OaepError`, and the checks run to the end without early exits, so that the reply does not
say which check failed (Manger's attack needs that distinction).
"""

from __future__ import annotations

import hashlib
import hmac

_HASH_BYTES = 32
_EMPTY_LABEL_HASH = hashlib.sha256(b"").digest()


class OaepError(Exception):
    """The encoded message is not a valid OAEP encoding."""


def _mgf1(seed: bytes, length: int) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < length:
        out += hashlib.sha256(seed + counter.to_bytes(4, "big")).digest()
        counter += 1
    return bytes(out[:length])


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def decode(encoded: bytes, modulus_bytes: int) -> bytes:
    """Return the message inside ``encoded`` (the raw RSA output, ``modulus_bytes`` long)."""
    if len(encoded) != modulus_bytes or modulus_bytes < 2 * _HASH_BYTES + 2:
        raise OaepError
    y = encoded[0]
    masked_seed = encoded[1 : 1 + _HASH_BYTES]
    masked_db = encoded[1 + _HASH_BYTES :]
    seed = _xor(masked_seed, _mgf1(masked_db, _HASH_BYTES))
    db = _xor(masked_db, _mgf1(seed, len(masked_db)))
    good = hmac.compare_digest(db[:_HASH_BYTES], _EMPTY_LABEL_HASH) & (y == 0)
    # Find the 0x01 separator after the zero padding, scanning every byte.
    separator = 0
    looking = True
    bad_padding = False
    for index in range(_HASH_BYTES, len(db)):
        byte = db[index]
        is_one = byte == 1
        is_zero = byte == 0
        separator = index if (looking and is_one) else separator
        bad_padding = bad_padding | (looking and not is_one and not is_zero)
        looking = looking and not is_one
    if not good or looking or bad_padding:
        raise OaepError
    return db[separator + 1 :]
