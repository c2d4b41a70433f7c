"""What a signer of PKIX structures must provide."""

from __future__ import annotations

import enum
from typing import Protocol


class SignatureAlgorithm(enum.Enum):
    """Signature algorithms the builders can name, with their asn1crypto identifiers."""

    ECDSA_SHA256 = "sha256_ecdsa"
    RSA_PKCS1_SHA256 = "sha256_rsa"
    ED25519 = "ed25519"


class Signer(Protocol):
    """Signs to-be-signed DER and returns the signature as X.509 carries it: DER
    ``ECDSA-Sig-Value`` for ECDSA, the raw octets for RSA PKCS#1 v1.5 and Ed25519."""

    @property
    def algorithm(self) -> SignatureAlgorithm:
        """The algorithm ``sign`` uses."""
        ...

    async def sign(self, data: bytes) -> bytes:
        """The signature over ``data`` (the signer hashes as its algorithm requires)."""
        ...
