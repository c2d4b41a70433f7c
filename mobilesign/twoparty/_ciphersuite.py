"""The boundary between protocol logic and one concrete group and hash (RFC 9591 section 6).

FROST maths and the two-party state machines only see this interface, so another
prime-order group can be added without touching them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NewType, Protocol

Scalar = NewType("Scalar", bytes)
"""A canonical scalar encoding (for Ed25519: 32 bytes, little-endian, below the group order)."""

Element = NewType("Element", bytes)
"""A group element in its canonical encoding; may be the identity (see ``serialize_element``)."""

RandomSource = Callable[[int], bytes]
"""Returns that many bytes from a cryptographically secure source (``secrets.token_bytes``)."""


def random_bytes(random: RandomSource, n: int) -> bytes:
    """Call an injected random source and insist on the length asked for."""
    out = random(n)
    if not isinstance(out, bytes) or len(out) != n:
        raise ValueError("random source returned the wrong number of bytes")
    return out


class Ciphersuite(Protocol):
    """A FROST ciphersuite: prime-order group, scalar field, H1..H5 and HDKG."""

    context_string: bytes
    scalar_len: int
    element_len: int
    signature_len: int
    identity: Element

    # Scalar field.
    def scalar_from_int(self, value: int) -> Scalar:
        """Map a small public integer (an identifier, a coefficient index) to a scalar."""
        ...

    def scalar_add(self, a: Scalar, b: Scalar) -> Scalar:
        """Return ``a + b``."""
        ...

    def scalar_sub(self, a: Scalar, b: Scalar) -> Scalar:
        """Return ``a - b``."""
        ...

    def scalar_mul(self, a: Scalar, b: Scalar) -> Scalar:
        """Return ``a * b``."""
        ...

    def scalar_invert(self, a: Scalar) -> Scalar:
        """Return ``1 / a`` (``a`` must be non-zero)."""
        ...

    def random_scalar(self, random: RandomSource) -> Scalar:
        """Return a uniformly random scalar."""
        ...

    def serialize_scalar(self, s: Scalar) -> bytes:
        """SerializeScalar."""
        ...

    def deserialize_scalar(self, buf: object) -> Scalar:
        """DeserializeScalar; raises ProtocolError on a bad length or a non-canonical value."""
        ...

    # Group.
    def base_mult(self, k: Scalar) -> Element:
        """Return ``k * G``."""
        ...

    def mult(self, k: Scalar, p: Element) -> Element:
        """Return ``k * p``."""
        ...

    def add(self, p: Element, q: Element) -> Element:
        """Return ``p + q``."""
        ...

    def sub(self, p: Element, q: Element) -> Element:
        """Return ``p - q``."""
        ...

    def serialize_element(self, p: Element) -> bytes:
        """SerializeElement; raises ProtocolError(IDENTITY_ELEMENT) for the identity."""
        ...

    def deserialize_element(self, buf: object) -> Element:
        """DeserializeElement with every RFC 9591 validation; raises ProtocolError."""
        ...

    def deserialize_multiplicand(self, buf: object) -> Element:
        """DeserializeElement for an element used only in :meth:`mult`, which then makes the
        validations (refusing with ProtocolError) instead of this call."""
        ...

    # Hashes.
    def h1(self, m: bytes) -> Scalar:
        """H1, binding factors."""
        ...

    def h2(self, m: bytes) -> Scalar:
        """H2, the signature challenge."""
        ...

    def h3(self, m: bytes) -> Scalar:
        """H3, nonce generation."""
        ...

    def h4(self, m: bytes) -> bytes:
        """H4, message hash."""
        ...

    def h5(self, m: bytes) -> bytes:
        """H5, commitment list hash."""
        ...

    def hdkg(self, m: bytes) -> Scalar:
        """HDKG, the DKG proof-of-knowledge challenge (as in ZF frost-core)."""
        ...

    def verify_signature(self, public_key: Element, message: bytes, signature: bytes) -> bool:
        """Verify a single-signer signature as the ciphersuite specifies."""
        ...
