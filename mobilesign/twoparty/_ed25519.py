"""FROST(Ed25519, SHA-512) ciphersuite (RFC 9591 section 6.1) on libsodium through PyNaCl.

Elements are kept in their 32-byte compressed encoding: libsodium's point API works
on encodings, and every encoding it outputs is canonical, so equality of elements
is equality of bytes. Secret-dependent scalar arithmetic goes through libsodium's
constant-time ``crypto_core_ed25519_scalar_*`` rather than Python integers.
"""

from __future__ import annotations

import hashlib
import hmac

from nacl import bindings as _na
from nacl.exceptions import BadSignatureError
from nacl.exceptions import RuntimeError as NaclRuntimeError

from mobilesign.twoparty._ciphersuite import Element, RandomSource, Scalar, random_bytes
from mobilesign.twoparty._errors import ProtocolError, Reason

ORDER = 2**252 + 27742317777372353535851937790883648493
_ZERO = bytes(32)
# Canonical encoding of the neutral element (x = 0, y = 1).
_IDENTITY = Element(b"\x01" + bytes(31))


def _is_zero(k: bytes) -> bool:
    return hmac.compare_digest(k, _ZERO)


class Ed25519Sha512:
    """The FROST(Ed25519, SHA-512) ciphersuite; use the ``ED25519_SHA512`` instance."""

    context_string = b"FROST-ED25519-SHA512-v1"
    scalar_len = 32
    element_len = 32
    signature_len = 64
    identity = _IDENTITY

    def __init__(self) -> None:
        ctx = self.context_string
        self._prefix_rho = ctx + b"rho"
        self._prefix_nonce = ctx + b"nonce"
        self._prefix_msg = ctx + b"msg"
        self._prefix_com = ctx + b"com"
        self._prefix_dkg = ctx + b"dkg"

    # Scalars ---------------------------------------------------------------------------
    def scalar_from_int(self, value: int) -> Scalar:
        return Scalar((value % ORDER).to_bytes(32, "little"))

    def scalar_add(self, a: Scalar, b: Scalar) -> Scalar:
        return Scalar(_na.crypto_core_ed25519_scalar_add(a, b))

    def scalar_sub(self, a: Scalar, b: Scalar) -> Scalar:
        return Scalar(_na.crypto_core_ed25519_scalar_sub(a, b))

    def scalar_mul(self, a: Scalar, b: Scalar) -> Scalar:
        return Scalar(_na.crypto_core_ed25519_scalar_mul(a, b))

    def scalar_invert(self, a: Scalar) -> Scalar:
        if _is_zero(a):
            raise ValueError("zero has no inverse")
        return Scalar(_na.crypto_core_ed25519_scalar_invert(a))

    def random_scalar(self, random: RandomSource) -> Scalar:
        # 64 bytes reduced mod L: bias below 2^-250.
        return self._reduce(random_bytes(random, 64))

    def serialize_scalar(self, s: Scalar) -> bytes:
        return bytes(s)

    def deserialize_scalar(self, buf: object) -> Scalar:
        if not isinstance(buf, bytes) or len(buf) != 32:
            raise ProtocolError(Reason.MALFORMED_MESSAGE, detail="scalar must be 32 bytes")
        buf = bytes(buf)
        # Canonical iff reducing it changes nothing; constant time, since shares pass here.
        if not hmac.compare_digest(_na.crypto_core_ed25519_scalar_reduce(buf + _ZERO), buf):
            raise ProtocolError(Reason.NON_CANONICAL_SCALAR, detail="scalar is not below the order")
        return Scalar(buf)

    # Group -----------------------------------------------------------------------------
    # libsodium's noclamp multiplications refuse to return the identity (and a zero
    # scalar or identity input always gives it), so those cases are answered here.
    def base_mult(self, k: Scalar) -> Element:
        if _is_zero(k):
            return _IDENTITY
        return Element(_na.crypto_scalarmult_ed25519_base_noclamp(k))

    def mult(self, k: Scalar, p: Element) -> Element:
        # libsodium refuses a p that is non-canonical, off the curve, of small order or
        # outside the prime-order subgroup (the checks of deserialize_element), which is what
        # lets deserialize_multiplicand leave them to this call. From a p in the subgroup, a
        # non-zero scalar below L cannot reach the identity.
        if p == _IDENTITY:
            return _IDENTITY
        if _is_zero(k):
            self._check_point(p)
            return _IDENTITY
        try:
            return Element(_na.crypto_scalarmult_ed25519_noclamp(k, p))
        except NaclRuntimeError:
            raise ProtocolError(Reason.INVALID_ELEMENT, detail="invalid group element") from None

    def add(self, p: Element, q: Element) -> Element:
        return Element(_na.crypto_core_ed25519_add(p, q))

    def sub(self, p: Element, q: Element) -> Element:
        return Element(_na.crypto_core_ed25519_sub(p, q))

    def serialize_element(self, p: Element) -> bytes:
        if p == _IDENTITY:
            raise ProtocolError(Reason.IDENTITY_ELEMENT, detail="cannot serialize the identity")
        return bytes(p)

    def deserialize_element(self, buf: object) -> Element:
        if not isinstance(buf, bytes) or len(buf) != 32:
            raise ProtocolError(Reason.MALFORMED_MESSAGE, detail="element must be 32 bytes")
        buf = bytes(buf)
        if buf == _IDENTITY:
            raise ProtocolError(Reason.IDENTITY_ELEMENT, detail="element is the identity")
        self._check_point(buf)
        return Element(buf)

    def deserialize_multiplicand(self, buf: object) -> Element:
        """``deserialize_element`` for an element whose only use is :meth:`mult` (and
        hashing its encoding): the same refusals, but the point checks are the
        multiplication's own, so that they are not paid twice (a peer's binding
        commitment). The caller multiplies it before anything derived from it is released."""
        if not isinstance(buf, bytes) or len(buf) != 32:
            raise ProtocolError(Reason.MALFORMED_MESSAGE, detail="element must be 32 bytes")
        buf = bytes(buf)
        if buf == _IDENTITY:
            raise ProtocolError(Reason.IDENTITY_ELEMENT, detail="element is the identity")
        return Element(buf)

    @staticmethod
    def _check_point(buf: bytes) -> None:
        # is_valid_point rejects: y >= p (non-canonical), every small-order encoding
        # (identity included, canonical or not, either sign bit), points off the curve
        # and points outside the prime-order subgroup ([L]P != identity).
        if not _na.crypto_core_ed25519_is_valid_point(buf):
            raise ProtocolError(Reason.INVALID_ELEMENT, detail="invalid group element")

    # Hashes (RFC 9591 section 6.1) -------------------------------------------------------
    @staticmethod
    def _reduce(digest64: bytes) -> Scalar:
        return Scalar(_na.crypto_core_ed25519_scalar_reduce(digest64))

    def h1(self, m: bytes) -> Scalar:
        return self._reduce(hashlib.sha512(self._prefix_rho + m).digest())

    def h2(self, m: bytes) -> Scalar:
        # No domain separator: this is the RFC 8032 challenge, for plain Ed25519 verifiers.
        return self._reduce(hashlib.sha512(m).digest())

    def h3(self, m: bytes) -> Scalar:
        return self._reduce(hashlib.sha512(self._prefix_nonce + m).digest())

    def h4(self, m: bytes) -> bytes:
        return hashlib.sha512(self._prefix_msg + m).digest()

    def h5(self, m: bytes) -> bytes:
        return hashlib.sha512(self._prefix_com + m).digest()

    def hdkg(self, m: bytes) -> Scalar:
        return self._reduce(hashlib.sha512(self._prefix_dkg + m).digest())

    def verify_signature(self, public_key: Element, message: bytes, signature: bytes) -> bool:
        """RFC 8032 verification by libsodium.

        libsodium checks the cofactorless equation (and rejects S >= L, small-order R
        and A). RFC 9591 asks for the cofactored one; they agree whenever A and R are in
        the prime-order subgroup, which holds for every key and group commitment here.
        """
        if len(signature) != self.signature_len:
            return False
        try:
            _na.crypto_sign_open(bytes(signature) + bytes(message), bytes(public_key))
        except BadSignatureError:
            return False
        return True


ED25519_SHA512 = Ed25519Sha512()
