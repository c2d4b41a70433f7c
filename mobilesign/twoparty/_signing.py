"""Two-party FROST signing state machines (sans-I/O), one round trip per signature.

    phone                                        cosigner
    request(m)        -- SignRequest(m, D1, E1) -->       receive_request()
                                                            fresh nonces, z2, nonces wiped
    receive_response() <-- SignResponse(D2, E2, z2) --
      verify z2 (blames 2), z1, aggregate, verify,
      nonces wiped
                      -- SignatureReport(sig) -->          receive_report() -> Cosigned

A signer serves one key and handles one signature at a time, as many times as the
session lasts. Nonces are never persisted and are wiped on every path: success, any
error, :meth:`abort`. Any error also ends the signature in progress, leaving the
signer idle and ready for the next one.
"""

from __future__ import annotations

import secrets
from collections import deque
from dataclasses import dataclass

from mobilesign.twoparty._ciphersuite import Element, RandomSource, Scalar
from mobilesign.twoparty._errors import ProtocolError, Reason, attributed_to
from mobilesign.twoparty._frost import (
    Commitment,
    SigningContext,
    commit,
    derive_interpolating_value,
    encode_signature,
    share_is_valid,
    sign_share,
    signing_context,
)
from mobilesign.twoparty._keypackage import KeyPackage
from mobilesign.twoparty._messages import Cosigned, SignatureReport, SignRequest, SignResponse
from mobilesign.twoparty._scheme import (
    COSIGNER_IDENTIFIER,
    PARTICIPANTS,
    PHONE_IDENTIFIER,
    ciphersuite,
)
from mobilesign.twoparty._secret import hold, wipe

# Nonce commitments remembered per signer, own and peer's: a quick check within one session
# (a stuck random source, a replayed request). Small, because it is held per session for the
# session's life; the cosigner's durable record of every phone commitment catches the rest.
_RECENT_WINDOW = 64


def _unexpected(detail: str, culprit: int | None) -> ProtocolError:
    return ProtocolError(Reason.UNEXPECTED_MESSAGE, culprit, detail)


def _malformed(detail: str) -> ProtocolError:
    return ProtocolError(Reason.MALFORMED_MESSAGE, detail=detail)


class _Recent:
    """The last ``_RECENT_WINDOW`` hiding commitments seen, for reuse detection."""

    def __init__(self) -> None:
        self._members: set[bytes] = set()
        self._order: deque[bytes] = deque()

    def __contains__(self, item: bytes) -> bool:
        return item in self._members

    def add(self, item: bytes) -> bool:
        """Remember ``item``; False if it was already there."""
        if item in self._members:
            return False
        self._members.add(item)
        self._order.append(item)
        if len(self._order) > _RECENT_WINDOW:
            self._members.discard(self._order.popleft())
        return True


class _Signer:
    """Key material and precomputed constants shared by both roles."""

    def __init__(self, key_package: KeyPackage, role: int, random: RandomSource) -> None:
        if not isinstance(key_package, KeyPackage) or key_package.identifier != role:
            raise ProtocolError(Reason.INVALID_KEY_PACKAGE, detail="wrong role for this signer")
        self._kp = key_package
        self._cs = ciphersuite(key_package.scheme)
        self._random = random
        self._id = key_package.identifier
        self._peer = key_package.peer_identifier
        self._share = Scalar(key_package.signing_share)
        self._group_key = Element(key_package.group_public_key)
        self._peer_key = Element(key_package.peer_verifying_share)
        # Lagrange coefficients never change for a fixed pair of signers (RFC 9591 5.2).
        self._lambda = derive_interpolating_value(self._cs, PARTICIPANTS, self._id)
        self._peer_lambda = derive_interpolating_value(self._cs, PARTICIPANTS, self._peer)
        self._own_commitments = _Recent()

    @property
    def key_package(self) -> KeyPackage:
        """The key this signer signs with (its ``scheme`` is the session's scheme)."""
        return self._kp

    def _new_nonces(self) -> tuple[bytearray, Commitment]:
        """Fresh hedged nonces, held wipeable as ``hiding || binding``."""
        (hiding, binding), (d, e) = commit(self._cs, self._share, self._random)
        nonces = hold(hiding + binding)
        # Only a broken random source repeats; signing again would leak our share.
        if not self._own_commitments.add(d):
            wipe(nonces)
            raise ProtocolError(Reason.NONCE_REUSE, self._id, "random source repeated itself")
        return nonces, Commitment(self._id, d, e)

    def _pair(self, nonces: bytearray) -> tuple[Scalar, Scalar]:
        n = self._cs.scalar_len
        return Scalar(bytes(nonces[:n])), Scalar(bytes(nonces[n:]))

    def _context(
        self, commitments: list[Commitment], message: bytes, nonces: bytearray
    ) -> SigningContext:
        return signing_context(
            self._cs, self._group_key, commitments, message, (self._id, self._pair(nonces))
        )

    def _sign(self, ctx: SigningContext, nonces: bytearray) -> Scalar:
        pair = self._pair(nonces)
        return sign_share(self._cs, ctx, self._id, self._share, self._lambda, pair)

    def _peer_commitment(self, hiding: object, binding: object) -> Commitment:
        # The binding commitment's only use is its multiplication by the binding factor,
        # which validates it (before any share is computed from it).
        cs = self._cs
        return Commitment(
            self._peer, cs.deserialize_element(hiding), cs.deserialize_multiplicand(binding)
        )


def _commitment_list(a: Commitment, b: Commitment) -> list[Commitment]:
    return sorted((a, b), key=lambda c: c.identifier)


@dataclass
class _PhonePending:
    message: bytes
    nonces: bytearray
    commitment: Commitment


class PhoneSigner(_Signer):
    """The phone's side of signing (identifier 1): it starts each signature and aggregates.

    ``random`` supplies nonce randomness (default ``secrets.token_bytes``); it is
    injectable only so tests can reproduce vectors and watch for reuse.
    """

    def __init__(
        self, key_package: KeyPackage, *, random: RandomSource = secrets.token_bytes
    ) -> None:
        super().__init__(key_package, PHONE_IDENTIFIER, random)
        self._pending: _PhonePending | None = None

    @property
    def pending(self) -> bool:
        """Whether a signature is in progress (nonces exist)."""
        return self._pending is not None

    def abort(self) -> None:
        """Abandon the signature in progress, if any, wiping its nonces."""
        if self._pending is not None:
            wipe(self._pending.nonces)
            self._pending = None

    def request(self, message: bytes) -> SignRequest:
        """Start signing ``message``: fresh nonces, and the request for the cosigner."""
        if self._pending is not None:
            self.abort()
            raise _unexpected("a signature is already in progress; it was aborted", None)
        if not isinstance(message, bytes):
            raise _malformed("message must be bytes")
        nonces, commitment = self._new_nonces()
        self._pending = _PhonePending(bytes(message), nonces, commitment)
        cs = self._cs
        return SignRequest(
            message=bytes(message),
            hiding_commitment=cs.serialize_element(commitment.hiding),
            binding_commitment=cs.serialize_element(commitment.binding),
        )

    def receive_response(self, response: SignResponse) -> SignatureReport:
        """Add our share to the cosigner's and check the signature; return it as a report.

        Raises ProtocolError naming the cosigner (2) for any fault in its response. The
        nonces are wiped whatever happens.
        """
        pending = self._pending
        if pending is None:
            raise _unexpected("no signature in progress", self._peer)
        try:
            with attributed_to(self._peer):
                return self._finish(pending, response)
        finally:
            self.abort()

    def _finish(self, pending: _PhonePending, response: object) -> SignatureReport:
        cs = self._cs
        if not isinstance(response, SignResponse):
            raise _malformed("expected SignResponse")
        peer = self._peer_commitment(response.hiding_commitment, response.binding_commitment)
        peer_share = cs.deserialize_scalar(response.signature_share)
        ctx = self._context(
            _commitment_list(pending.commitment, peer), pending.message, pending.nonces
        )
        own_share = self._sign(ctx, pending.nonces)
        signature = encode_signature(cs, ctx.group_commitment, cs.scalar_add(own_share, peer_share))
        # The signature is verified first, the cosigner's share only when it fails, to say
        # whose fault it is (RFC 9591 5.3): nothing unverified ever leaves the phone, and a
        # valid signature costs one verification instead of two.
        if cs.verify_signature(self._group_key, pending.message, signature):
            return SignatureReport(signature=signature)
        if not share_is_valid(cs, ctx, self._peer, self._peer_key, self._peer_lambda, peer_share):
            raise ProtocolError(Reason.INVALID_SIGNATURE_SHARE, detail="cosigner share invalid")
        # Unreachable with a valid key package and a valid peer share.
        raise ProtocolError(Reason.INVALID_SIGNATURE, self._id, "own share is wrong")


@dataclass(frozen=True)
class _CosignerPending:
    message: bytes
    group_commitment: bytes


class CosignerSigner(_Signer):
    """The cosigner's side of signing (identifier 2).

    For each :class:`SignRequest` it makes fresh nonces, returns its share and wipes the
    nonces before returning. It then expects the phone's :class:`SignatureReport` and
    emits :class:`Cosigned` once the signature is valid and uses the group commitment
    it computed. Note that the share leaves before the report arrives: record the
    request when answering it if every share issued must be accounted for.
    """

    def __init__(
        self, key_package: KeyPackage, *, random: RandomSource = secrets.token_bytes
    ) -> None:
        super().__init__(key_package, COSIGNER_IDENTIFIER, random)
        self._pending: _CosignerPending | None = None
        # An honest phone never repeats nonce commitments: a repeat is a replay, or a
        # phone whose randomness broke; either way, taking part could leak its share.
        self._phone_commitments = _Recent()

    @property
    def pending(self) -> bool:
        """Whether a signature share was issued and its report is awaited."""
        return self._pending is not None

    def abort(self) -> None:
        """Abandon the signature in progress, if any."""
        self._pending = None

    def receive_request(self, request: SignRequest) -> SignResponse:
        """Validate the phone's request; return the cosigner's commitments and share."""
        if self._pending is not None:
            self.abort()
            raise _unexpected("a signature is already in progress; it was aborted", self._peer)
        with attributed_to(self._peer):
            return self._respond(request)

    def _respond(self, request: object) -> SignResponse:
        cs = self._cs
        if not isinstance(request, SignRequest):
            raise _malformed("expected SignRequest")
        if not isinstance(request.message, bytes):
            raise _malformed("message must be bytes")
        peer = self._peer_commitment(request.hiding_commitment, request.binding_commitment)
        if peer.hiding in self._phone_commitments:
            raise ProtocolError(Reason.REPLAYED_MESSAGE, detail="nonce commitment reused")
        nonces, own = self._new_nonces()
        try:
            ctx = self._context(_commitment_list(peer, own), bytes(request.message), nonces)
            share = self._sign(ctx, nonces)
        finally:
            wipe(nonces)
        # Remembered only once the request proved valid: a refused one changes nothing.
        self._phone_commitments.add(peer.hiding)
        self._pending = _CosignerPending(bytes(request.message), ctx.group_commitment)
        return SignResponse(
            hiding_commitment=cs.serialize_element(own.hiding),
            binding_commitment=cs.serialize_element(own.binding),
            signature_share=cs.serialize_scalar(share),
        )

    def receive_report(self, report: SignatureReport) -> Cosigned:
        """Check the phone's aggregate signature; return the event to record."""
        pending = self._pending
        if pending is None:
            raise _unexpected("no signature in progress", self._peer)
        self._pending = None  # whatever the outcome, this signature is over
        with attributed_to(self._peer):
            cs = self._cs
            if not isinstance(report, SignatureReport) or not isinstance(report.signature, bytes):
                raise _malformed("expected SignatureReport")
            signature = bytes(report.signature)
            if len(signature) != cs.signature_len:
                raise _malformed("signature has the wrong length")
            if signature[: cs.element_len] != pending.group_commitment:
                raise ProtocolError(Reason.INVALID_SIGNATURE, detail="not our group commitment")
            if not cs.verify_signature(self._group_key, pending.message, signature):
                raise ProtocolError(Reason.INVALID_SIGNATURE, detail="signature does not verify")
        return Cosigned(message=pending.message, signature=signature)
