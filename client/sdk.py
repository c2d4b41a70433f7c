"""Enrolment and signing against the cosigner, over its public (server-authenticated TLS) edge.

The SDK checks what it receives: the DKG state machine validates every element and proof, the
signer verifies the cosigner's share and the final signature before anything is returned.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Self

import grpc
from cryptography.hazmat.primitives.asymmetric import ec

from client.errors import ClientError
from client.keystore import Keystore
from mobilesign import deviceauth, twoparty
from mobilesign.errors import Kind
from mobilesign.rpc import wire
from mobilesign.rpc.status import kind_of, message_in, reason_in, reason_of, retry_delay_in
from mobilesign.v1 import cosigner_pb2 as pb
from mobilesign.v1 import cosigner_pb2_grpc

SCHEME = twoparty.Scheme.FROST_ED25519_SHA512
_STEP_TIMEOUT = 30.0


def _pin_verifier(pin: str, device_spki: bytes) -> bytes:
    try:
        return deviceauth.pin_verifier(pin, device_spki)
    except ValueError as exc:
        raise ClientError("PIN_INVALID", str(exc)) from None


async def _read(call: Any, expected: str) -> Any:
    """The next response, which must be the ``expected`` step."""
    try:
        response = await asyncio.wait_for(call.read(), _STEP_TIMEOUT)
    except grpc.aio.AioRpcError as exc:
        raise ClientError.from_rpc(exc) from None
    except TimeoutError:
        call.cancel()
        raise ClientError("STEP_TIMEOUT", f"no {expected} from the cosigner") from None
    if response is grpc.aio.EOF:
        raise await _ended(call, f"before {expected}")
    step = response.WhichOneof("step")
    if step != expected:
        call.cancel()
        raise ClientError("UNEXPECTED_STEP", f"expected {expected}, got {step}")
    return getattr(response, expected)


async def _write(call: Any, message: Any) -> None:
    try:
        await call.write(message)
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.INTERNAL and reason_of(exc) is None:
            # grpc's own failure to send on a stream the cosigner ended meanwhile ("Internal
            # error from Core"): not the cosigner's answer, and not an internal error of ours.
            raise _stream_ended("while sending") from None
        raise ClientError.from_rpc(exc) from None
    except asyncio.InvalidStateError:
        raise await _ended(call, "") from None


def _stream_ended(when: str) -> ClientError:
    return ClientError(
        "STREAM_ENDED", f"the cosigner ended the stream {when}".strip(), Kind.UNAVAILABLE
    )


async def _ended(call: Any, when: str) -> ClientError:
    """The error for a stream the cosigner ended (a crash, or idle past its step timeout): the
    call's status with its reason, or ``STREAM_ENDED`` when it ended without one."""
    code = await call.code()
    if code == grpc.StatusCode.OK:
        return _stream_ended(when)
    trailing = await call.trailing_metadata()
    reason = reason_in(trailing)
    return ClientError(
        reason or code.name,
        message_in(reason, await call.details()),
        kind_of(code),
        retry_delay_in(trailing),
    )


async def enrol(
    channel: grpc.aio.Channel,
    ticket: bytes,
    pin: str,
    device_key: ec.EllipticCurvePrivateKey | None = None,
) -> Keystore:
    """Enrol a new key with the cosigner: DKG, PIN registration, device binding.

    Returns the keystore to save on the phone. The cosigner has stored its share durably when
    this returns.
    """
    device_key = device_key or ec.generate_private_key(ec.SECP256R1())
    device_spki = deviceauth.device_key_spki(device_key)
    machine = twoparty.PhoneKeyGen(scheme=SCHEME)
    call = cosigner_pb2_grpc.CosignerServiceStub(channel).KeyGen()
    try:
        await _write(
            call,
            pb.KeyGenRequest(
                start=pb.KeyGenStart(
                    scheme=wire.scheme_to_proto(SCHEME),
                    ticket=ticket,
                    device_public_key=device_spki,
                    pin_verifier=_pin_verifier(pin, device_spki),
                    commitment=wire.commitment_to_proto(machine.start()),
                )
            ),
        )
        peer_round1 = await _read(call, "commitment")
        own_round2 = machine.receive_round1(wire.commitment_from_proto(peer_round1))
        await _write(
            call,
            pb.KeyGenRequest(
                secret_share=pb.KeyGenSecretShare(secret_share=own_round2.secret_share)
            ),
        )
        peer_round2 = await _read(call, "secret_share")
        confirm, package = machine.receive_round2(
            twoparty.DkgRound2(
                secret_share=peer_round2.secret_share,
                group_public_key=peer_round2.group_public_key,
            )
        )
        transcript = deviceauth.enrol_transcript(ticket, confirm.group_public_key, device_spki)
        await _write(
            call,
            pb.KeyGenRequest(
                confirm=pb.KeyGenConfirm(
                    group_public_key=confirm.group_public_key,
                    device_signature=deviceauth.sign(device_key, transcript),
                )
            ),
        )
        done = await _read(call, "done")
        await call.done_writing()
    except twoparty.ProtocolError as exc:
        call.cancel()
        raise ClientError(exc.reason.value, str(exc)) from None
    finally:
        machine.abort()
    if done.key_id != package.group_public_key.hex():
        raise ClientError("KEY_MISMATCH", "the cosigner stored another key")
    return Keystore(done.key_id, done.user_id, package, device_key)


class SigningSession:
    """An authenticated signing session: one round trip per signature.

    Use as ``async with SigningSession(channel, keystore, pin) as session: await
    session.sign(message)``.
    """

    def __init__(self, channel: grpc.aio.Channel, keystore: Keystore, pin: str) -> None:
        self._channel = channel
        self._keystore = keystore
        self._pin = pin
        self._call: Any = None
        self._signer: twoparty.PhoneSigner | None = None
        self.user_id = ""
        self.signed = 0

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            await self.close()
        else:
            self.abort()

    async def open(self) -> None:
        """Open the stream and prove the device and the PIN on the cosigner's challenge."""
        keystore = self._keystore
        self._call = cosigner_pb2_grpc.CosignerServiceStub(self._channel).Sign()
        await _write(
            self._call,
            pb.SignRequest(
                open=pb.SignOpen(scheme=wire.scheme_to_proto(SCHEME), key_id=keystore.key_id)
            ),
        )
        challenge = (await _read(self._call, "challenge")).challenge
        if len(challenge) != deviceauth.CHALLENGE_BYTES:
            self.abort()
            raise ClientError("MALFORMED_CHALLENGE", "the challenge is not 32 bytes")
        transcript = deviceauth.session_transcript(bytes.fromhex(keystore.key_id), challenge)
        device_spki = deviceauth.device_key_spki(keystore.device_key)
        verifier = _pin_verifier(self._pin, device_spki)
        await _write(
            self._call,
            pb.SignRequest(
                proof=pb.SignProof(
                    device_signature=deviceauth.sign(keystore.device_key, transcript),
                    pin_proof=deviceauth.pin_proof(verifier, transcript),
                )
            ),
        )
        ready = await _read(self._call, "ready")
        self.user_id = ready.user_id
        self._signer = twoparty.PhoneSigner(keystore.key_package)

    async def sign(self, message: bytes) -> bytes:
        """The joint Ed25519 signature (64 bytes) on ``message``, verified before returning."""
        if self._signer is None:
            raise ClientError("SESSION_NOT_OPEN", "open the session first")
        signer = self._signer
        try:
            request = signer.request(message)
            await _write(self._call, pb.SignRequest(commit=wire.sign_commit_to_proto(request)))
            share = await _read(self._call, "share")
            report = signer.receive_response(wire.sign_share_from_proto(share))
            # The report needs no answer: the next commit follows it on the same stream.
            await _write(
                self._call, pb.SignRequest(report=pb.SignReport(signature=report.signature))
            )
        except twoparty.ProtocolError as exc:
            self.abort()
            raise ClientError(exc.reason.value, str(exc)) from None
        except ClientError:
            self.abort()
            raise
        self.signed += 1
        return report.signature

    async def sign_many(self, messages: Sequence[bytes]) -> list[bytes]:
        """Sign each message in turn in this session."""
        return [await self.sign(message) for message in messages]

    async def close(self) -> int:
        """End the session; returns how many signatures the cosigner recorded."""
        if self._call is None:
            return 0
        try:
            await _write(self._call, pb.SignRequest(close=pb.SignClose()))
            closed = await _read(self._call, "closed")
        except ClientError:
            self.abort()  # the session is over either way; it says so from now on
            raise
        await self._call.done_writing()
        self._call = None
        self._signer = None
        if closed.signatures_recorded != self.signed:
            raise ClientError(
                "RECORD_MISMATCH",
                f"the cosigner recorded {closed.signatures_recorded} of {self.signed} signatures",
            )
        return int(closed.signatures_recorded)

    def abort(self) -> None:
        """Abandon the session (nonces wiped, stream cancelled)."""
        if self._signer is not None:
            self._signer.abort()
            self._signer = None
        if self._call is not None:
            self._call.cancel()
            self._call = None
