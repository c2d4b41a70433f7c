"""Wire messages and output events of the two-party protocols.

Every field is a plain ``bytes``/``int`` already in its RFC 9591 encoding (32-byte
compressed points, 32-byte little-endian scalars), so the gRPC layer copies fields one
to one. The scheme is not repeated in every message: it is fixed when a state machine
is created (from the key, or from the message that opens the stream). Values are
validated by the state machine that receives them, not here: a message object may
hold anything the network sent.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DkgRound1:
    """DKG round 1, sent by each party: polynomial commitment and proof of knowledge.

    ``commitment`` is ``(C_0, C_1)`` = ``(a_0 * G, a_1 * G)``; ``(proof_r, proof_mu)``
    is the Schnorr proof of knowledge of ``a_0``.
    """

    identifier: int
    commitment: tuple[bytes, ...]
    proof_r: bytes
    proof_mu: bytes


@dataclass(frozen=True)
class DkgRound2:
    """DKG round 2: the sender's polynomial evaluated at the receiver's identifier.

    Secret: must travel only over a confidential, authenticated channel.
    ``group_public_key`` is empty from the phone and carries the cosigner's view of the
    group key from the cosigner.
    """

    secret_share: bytes
    group_public_key: bytes = b""

    def __repr__(self) -> str:
        return f"DkgRound2(secret_share=<redacted>, group_public_key={self.group_public_key!r})"


@dataclass(frozen=True)
class DkgConfirm:
    """DKG end, phone to cosigner: the phone's view of the group key, which must match."""

    group_public_key: bytes


@dataclass(frozen=True)
class SignRequest:
    """Phone to cosigner: message to sign and the phone's nonce commitments ``(D_1, E_1)``."""

    message: bytes
    hiding_commitment: bytes
    binding_commitment: bytes


@dataclass(frozen=True)
class SignResponse:
    """Cosigner to phone: the cosigner's nonce commitments ``(D_2, E_2)`` and its share ``z_2``."""

    hiding_commitment: bytes
    binding_commitment: bytes
    signature_share: bytes


@dataclass(frozen=True)
class SignatureReport:
    """Phone to cosigner: the aggregate signature (64-byte RFC 8032 encoding ``R || z``)."""

    signature: bytes


@dataclass(frozen=True)
class Cosigned:
    """Cosigner-side event: ``signature`` is a valid joint signature on ``message``.

    The cosigner records it; nothing is sent.
    """

    message: bytes
    signature: bytes
