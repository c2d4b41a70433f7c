"""Two-party Pedersen DKG state machines (sans-I/O).

Message flow, phone (identifier 1) initiating::

    phone                                   cosigner
    start()            -- DkgRound1 -->     receive_round1()
    receive_round1()   <-- DkgRound1 --
                       -- DkgRound2 -->     receive_round2()
    receive_round2()   <-- DkgRound2 (+ cosigner's group key) --
      -> KeyPackage    -- DkgConfirm -->    receive_confirm() -> KeyPackage

Each party's polynomial is degree 1 (2-of-2). Coefficients live only until both
evaluations are computed; every received value is validated before use; any error,
or input out of order, ends the machine (FAILED) and wipes its secrets.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum, auto

from mobilesign.twoparty._ciphersuite import Element, RandomSource
from mobilesign.twoparty._dkg import (
    compute_proof_of_knowledge,
    derive_group_info,
    polynomial_evaluate,
    sum_commitments,
    verify_proof_of_knowledge,
    vss_commit,
    vss_verify,
)
from mobilesign.twoparty._errors import ProtocolError, Reason, attributed_to
from mobilesign.twoparty._keypackage import KeyPackage
from mobilesign.twoparty._messages import DkgConfirm, DkgRound1, DkgRound2
from mobilesign.twoparty._scheme import (
    COSIGNER_IDENTIFIER,
    PARTICIPANTS,
    PHONE_IDENTIFIER,
    Scheme,
    ciphersuite,
    parse_scheme,
)
from mobilesign.twoparty._secret import hold, use, wipe

_DEGREE = 1  # 2-of-2: polynomials of degree threshold - 1


class _State(Enum):
    START = auto()
    AWAIT_ROUND1 = auto()
    AWAIT_SHARE = auto()
    AWAIT_CONFIRM = auto()
    DONE = auto()
    FAILED = auto()


def _malformed(detail: str) -> ProtocolError:
    return ProtocolError(Reason.MALFORMED_MESSAGE, detail=detail)


class _DkgParty:
    """What both roles do; the subclasses only order the steps."""

    def __init__(self, identifier: int, scheme: Scheme, random: RandomSource) -> None:
        self._scheme = parse_scheme(scheme)
        self._cs = ciphersuite(self._scheme)
        self._random = random
        self._id = identifier
        self._peer = next(i for i in PARTICIPANTS if i != identifier)
        self._state = _State.START
        self._coefficients: list[bytearray] = []
        self._own_share = bytearray()  # f_self(self)
        self._share_for_peer = bytearray()  # f_self(peer)
        self._own_commitment: list[Element] = []
        self._peer_commitment: list[Element] = []

    @property
    def scheme(self) -> Scheme:
        """The scheme this DKG produces a key for."""
        return self._scheme

    def abort(self) -> None:
        """Abandon the DKG: wipe every secret; later input raises UNEXPECTED_MESSAGE."""
        wipe(*self._coefficients, self._own_share, self._share_for_peer)
        self._coefficients = []
        self._state = _State.FAILED

    @contextmanager
    def _step(self, expected: _State, culprit: int | None) -> Iterator[None]:
        try:
            with attributed_to(culprit):
                if self._state is not expected:
                    raise ProtocolError(
                        Reason.UNEXPECTED_MESSAGE, detail=f"not expected in {self._state.name}"
                    )
                yield
        except BaseException:
            self.abort()
            raise

    def _make_round1(self) -> DkgRound1:
        cs = self._cs
        coefficients = [cs.random_scalar(self._random) for _ in range(_DEGREE + 1)]
        self._coefficients = [hold(a) for a in coefficients]
        self._own_commitment = vss_commit(cs, coefficients)
        r, mu = compute_proof_of_knowledge(
            cs, self._id, coefficients[0], self._own_commitment[0], self._random
        )
        return DkgRound1(
            identifier=self._id,
            commitment=tuple(cs.serialize_element(c) for c in self._own_commitment),
            proof_r=cs.serialize_element(r),
            proof_mu=cs.serialize_scalar(mu),
        )

    def _accept_round1(self, msg: object) -> None:
        cs = self._cs
        if not isinstance(msg, DkgRound1):
            raise _malformed("expected DkgRound1")
        if type(msg.identifier) is not int or msg.identifier != self._peer:
            raise _malformed("wrong identifier")
        if not isinstance(msg.commitment, tuple | list) or len(msg.commitment) != _DEGREE + 1:
            raise _malformed("commitment must hold exactly 2 elements")
        commitment = [cs.deserialize_element(c) for c in msg.commitment]
        r = cs.deserialize_element(msg.proof_r)
        mu = cs.deserialize_scalar(msg.proof_mu)
        if not verify_proof_of_knowledge(cs, self._peer, commitment[0], r, mu):
            raise ProtocolError(Reason.INVALID_PROOF, detail="proof of knowledge fails")
        self._peer_commitment = commitment

    def _evaluate_and_forget_polynomial(self) -> None:
        coefficients = [use(a) for a in self._coefficients]
        self._own_share = hold(polynomial_evaluate(self._cs, self._id, coefficients))
        self._share_for_peer = hold(polynomial_evaluate(self._cs, self._peer, coefficients))
        wipe(*self._coefficients)
        self._coefficients = []

    def _release_share_for_peer(self) -> bytes:
        out = bytes(self._share_for_peer)
        wipe(self._share_for_peer)
        return out

    def _accept_share(self, secret_share: object) -> KeyPackage:
        cs = self._cs
        share = cs.deserialize_scalar(secret_share)
        if not vss_verify(cs, self._id, share, self._peer_commitment):
            raise ProtocolError(Reason.INVALID_SHARE, detail="share does not match commitment")
        signing_share = cs.scalar_add(use(self._own_share), share)
        wipe(self._own_share)
        group_commitment = sum_commitments(cs, [self._own_commitment, self._peer_commitment])
        group_key, verifying_shares = derive_group_info(cs, PARTICIPANTS, group_commitment)
        return KeyPackage(
            scheme=self._scheme,
            identifier=self._id,
            signing_share=cs.serialize_scalar(signing_share),
            verifying_share=cs.serialize_element(verifying_shares[self._id]),
            peer_verifying_share=cs.serialize_element(verifying_shares[self._peer]),
            group_public_key=cs.serialize_element(group_key),
        )


class PhoneKeyGen(_DkgParty):
    """The phone's side of the DKG (identifier 1); it sends the first message.

    Call :meth:`start`, then feed the cosigner's messages to :meth:`receive_round1` and
    :meth:`receive_round2`. Any ProtocolError ends the machine.
    """

    def __init__(
        self,
        *,
        scheme: Scheme = Scheme.FROST_ED25519_SHA512,
        random: RandomSource = secrets.token_bytes,
    ) -> None:
        super().__init__(PHONE_IDENTIFIER, scheme, random)

    def start(self) -> DkgRound1:
        """Sample the polynomial; return the phone's round-1 message."""
        with self._step(_State.START, None):
            msg = self._make_round1()
            self._state = _State.AWAIT_ROUND1
            return msg

    def receive_round1(self, msg: DkgRound1) -> DkgRound2:
        """Check the cosigner's commitment and proof; return the share ``f_1(2)`` for it."""
        with self._step(_State.AWAIT_ROUND1, self._peer):
            self._accept_round1(msg)
            self._evaluate_and_forget_polynomial()
            out = DkgRound2(secret_share=self._release_share_for_peer())
            self._state = _State.AWAIT_SHARE
            return out

    def receive_round2(self, msg: DkgRound2) -> tuple[DkgConfirm, KeyPackage]:
        """Check the cosigner's share and group key; return the confirmation and our keys."""
        with self._step(_State.AWAIT_SHARE, self._peer):
            if not isinstance(msg, DkgRound2):
                raise _malformed("expected DkgRound2")
            cosigner_view = self._cs.deserialize_element(msg.group_public_key)
            key_package = self._accept_share(msg.secret_share)
            if key_package.group_public_key != cosigner_view:
                raise ProtocolError(Reason.GROUP_KEY_MISMATCH, detail="cosigner's key differs")
            self._state = _State.DONE
            return DkgConfirm(group_public_key=key_package.group_public_key), key_package


class CosignerKeyGen(_DkgParty):
    """The cosigner's side of the DKG (identifier 2); it answers the phone.

    Feed the phone's messages to :meth:`receive_round1`, :meth:`receive_round2` and
    :meth:`receive_confirm`; the key package is released only after the phone confirms
    the same group key. Any ProtocolError ends the machine.
    """

    def __init__(
        self,
        *,
        scheme: Scheme = Scheme.FROST_ED25519_SHA512,
        random: RandomSource = secrets.token_bytes,
    ) -> None:
        super().__init__(COSIGNER_IDENTIFIER, scheme, random)
        self._key_package: KeyPackage | None = None

    def abort(self) -> None:
        """Abandon the DKG: wipe every secret; later input raises UNEXPECTED_MESSAGE."""
        self._key_package = None
        super().abort()

    def receive_round1(self, msg: DkgRound1) -> DkgRound1:
        """Check the phone's commitment and proof; return the cosigner's round-1 message."""
        with self._step(_State.START, self._peer):
            self._accept_round1(msg)
            out = self._make_round1()
            self._evaluate_and_forget_polynomial()
            self._state = _State.AWAIT_SHARE
            return out

    def receive_round2(self, msg: DkgRound2) -> DkgRound2:
        """Check the phone's share; return ``f_2(1)`` and the cosigner's view of the group key."""
        with self._step(_State.AWAIT_SHARE, self._peer):
            if not isinstance(msg, DkgRound2):
                raise _malformed("expected DkgRound2")
            if msg.group_public_key != b"":
                raise _malformed("the phone sends its group key only in DkgConfirm")
            self._key_package = self._accept_share(msg.secret_share)
            out = DkgRound2(
                secret_share=self._release_share_for_peer(),
                group_public_key=self._key_package.group_public_key,
            )
            self._state = _State.AWAIT_CONFIRM
            return out

    @property
    def provisional_key_package(self) -> KeyPackage | None:
        """The key package :meth:`receive_confirm` will release if the phone confirms, between
        round two and the confirmation (else None): for work that keeps and uses nothing
        until then, such as sealing it ahead of the confirmation."""
        return self._key_package if self._state is _State.AWAIT_CONFIRM else None

    def receive_confirm(self, msg: DkgConfirm) -> KeyPackage:
        """Check the phone computed the same group key; return the cosigner's keys."""
        with self._step(_State.AWAIT_CONFIRM, self._peer):
            if not isinstance(msg, DkgConfirm):
                raise _malformed("expected DkgConfirm")
            phone_view = self._cs.deserialize_element(msg.group_public_key)
            key_package = self._key_package
            assert key_package is not None  # set on entering AWAIT_CONFIRM
            if key_package.group_public_key != phone_view:
                raise ProtocolError(Reason.GROUP_KEY_MISMATCH, detail="phone's key differs")
            self._key_package = None
            self._state = _State.DONE
            return key_package
