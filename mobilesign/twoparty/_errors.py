"""The one error type every protocol step raises."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum

from mobilesign.errors import Error, Kind


class Reason(StrEnum):
    """Stable, machine-readable reasons for a :class:`ProtocolError`.

    The values are part of the API: the gRPC layer maps them to error details and
    clients may match on them, so existing values never change meaning.
    """

    UNSUPPORTED_SCHEME = "UNSUPPORTED_SCHEME"
    """The scheme identifier is unknown, or not one this component implements."""
    MALFORMED_MESSAGE = "MALFORMED_MESSAGE"
    """Wrong field type or length, wrong identifier, wrong number of commitments."""
    INVALID_ELEMENT = "INVALID_ELEMENT"
    """A group element is non-canonical, off the curve or outside the prime-order subgroup."""
    IDENTITY_ELEMENT = "IDENTITY_ELEMENT"
    """A group element (received or computed) is the identity."""
    NON_CANONICAL_SCALAR = "NON_CANONICAL_SCALAR"
    """A scalar encoding is not the canonical encoding of a value below the group order."""
    INVALID_PROOF = "INVALID_PROOF"
    """A DKG proof of knowledge of the secret coefficient does not verify."""
    INVALID_SHARE = "INVALID_SHARE"
    """A DKG secret share does not match the sender's polynomial commitment."""
    GROUP_KEY_MISMATCH = "GROUP_KEY_MISMATCH"
    """The two parties computed different group public keys."""
    INVALID_SIGNATURE_SHARE = "INVALID_SIGNATURE_SHARE"
    """A signature share does not verify against the sender's verifying share."""
    INVALID_SIGNATURE = "INVALID_SIGNATURE"
    """An aggregate signature does not verify, or is not the one this party helped make."""
    UNEXPECTED_MESSAGE = "UNEXPECTED_MESSAGE"
    """Input arrived out of order, twice, or after the exchange ended."""
    REPLAYED_MESSAGE = "REPLAYED_MESSAGE"
    """A signing request reuses nonce commitments already seen by this signer."""
    NONCE_REUSE = "NONCE_REUSE"
    """This party's own random source produced nonces it already used; nothing was signed."""
    INVALID_KEY_PACKAGE = "INVALID_KEY_PACKAGE"
    """A stored key package is malformed or internally inconsistent."""


#: Reasons that are not the peer's bad input: out-of-order steps, and local faults.
_KINDS = {
    Reason.UNEXPECTED_MESSAGE: Kind.PRECONDITION,
    Reason.NONCE_REUSE: Kind.INTERNAL,
    Reason.INVALID_KEY_PACKAGE: Kind.INTERNAL,
}


class ProtocolError(Error):
    """A two-party protocol step failed.

    ``reason`` is one of the stable :class:`Reason` values; the kind follows from it (a peer's
    bad input is INVALID, an out-of-order step PRECONDITION, a local fault INTERNAL).
    ``culprit`` is the identifier of the party whose input caused the failure (identifiable
    abort), or ``None`` when the failure is local (misuse, corrupted storage). The text never
    contains secret values: only the reason, the culprit and a fixed description.
    """

    reason: Reason

    def __init__(self, reason: Reason, culprit: int | None = None, detail: str = "") -> None:
        blame = "" if culprit is None else f" (participant {culprit})"
        described = f": {detail}" if detail else ""
        super().__init__(_KINDS.get(reason, Kind.INVALID), reason.value, "")
        self.reason = reason
        self.culprit = culprit
        self.detail = detail
        self.message = f"{reason.value}{blame}{described}"

    def __str__(self) -> str:
        return self.message

    def blaming(self, culprit: int) -> ProtocolError:
        """Return this error attributed to ``culprit`` (decoders don't know the sender)."""
        return ProtocolError(self.reason, culprit, self.detail)


@contextmanager
def attributed_to(culprit: int | None) -> Iterator[None]:
    """Blame ``culprit`` for any ProtocolError raised without one inside the block.

    Decoders and checks don't know who sent their input; the state machine step that
    received the message does.
    """
    try:
        yield
    except ProtocolError as e:
        if e.culprit is None and culprit is not None:
            raise e.blaming(culprit) from None
        raise
