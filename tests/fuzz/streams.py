"""Broken KeyGen, Sign and WatchChanges streams, driven step by step with hypothesis'
interactive draws.

Each example is one stream: at every step it draws the honest next step (computed with the real
``twoparty`` state machines, so that later steps are reached), a broken one (invalid, small-order
or non-canonical points, the identity, random scalars and signatures, unknown schemes), a
mutated raw message, a replay of an earlier step, or an early end (half-close or cancel). Every
message goes as bytes through a generic stream call, so that even unparseable ones are sent.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import grpc
from hypothesis import strategies as st

from mobilesign import deviceauth, twoparty
from mobilesign.rpc import wire
from mobilesign.v1 import cosigner_pb2 as pb
from mobilesign.v1 import ra_pb2
from tests.fuzz import messages
from tests.fuzz.harness import CALL_TIMEOUT, HOSTS, TALLY, Flagged, Fuzz, suppressed_write_errors
from tests.integration.two_party import (
    ORDER,
    PIN,
    SCHEME,
    new_device_key,
    plus_one,
    scalar_bytes,
    verifier_for,
)

_SERVICE = "mobilesign.v1.CosignerService"
_LIMIT = HOSTS[_SERVICE][1]
_SIZES = messages.Sizes(_LIMIT)
#: Stream callers: the phone-facing edge and two internal identities.
STREAM_CALLERS = ("public", "public", "admin", "gateway")

#: 32-byte values that are not points the cosigner may accept, or not ours.
_POINTS = st.one_of(
    st.sampled_from(messages.BAD_POINTS),
    st.binary(min_size=32, max_size=32),
    st.binary(max_size=64),
)
_SCALARS = st.one_of(
    st.sampled_from((scalar_bytes(0), scalar_bytes(ORDER), b"\xff" * 32, scalar_bytes(1))),
    st.binary(min_size=32, max_size=32),
    st.binary(max_size=64),
)
_SCHEMES = st.sampled_from((0, SCHEME, SCHEME + 1, 99, 2**31 - 1))


@dataclass
class Material:
    """What the streams need from the deployment: fresh tickets, an enrolled key."""

    tickets: list[bytes]
    keystore: Any
    spare_ticket: Any = None
    #: (hiding, binding) of commitments the cosigner has already answered, for replays.
    seen_commitments: list[tuple[bytes, bytes]] = field(default_factory=list)


@dataclass
class _Stream:
    fuzz: Fuzz
    data: Any
    call: Any
    sent: list[bytes] = field(default_factory=list)
    largest: int = 0
    closed_writing: bool = False
    error: grpc.aio.AioRpcError | None = None
    ended: bool = False
    completed: bool = False
    #: A write failed because the cosigner had already ended the stream: grpc's client then
    #: reports its own failure to send (INTERNAL "Internal error from Core") instead of the
    #: cosigner's status, so only the state can be judged.
    write_failed: bool = False
    #: A step that may complete the protocol was sent without its answer being read (a
    #: "broken" confirm that was in fact valid, then a cancel): the cosigner may still be
    #: storing its result, so the state is read afresh a moment later.
    maybe_completed: bool = False
    #: The response type and the step that ends the protocol.
    last: tuple[Any, str] | None = None

    async def write(self, message: bytes) -> None:
        if self.closed_writing or self.ended or self.call.done():
            return
        self.sent.append(message)
        self.largest = max(self.largest, len(message))
        try:
            await self.call.write(message)
        except (asyncio.InvalidStateError, grpc.aio.AioRpcError):
            self.write_failed = True

    async def read(self) -> bytes | None:
        """The next response, or None when the stream ended (``error`` says how)."""
        if self.ended:
            return None
        try:
            response = await self.call.read()
        except grpc.aio.AioRpcError as exc:
            self.error, self.ended = exc, True
            return None
        if response is grpc.aio.EOF:
            # A stream that ends with an error raises above; EOF is the end with OK.
            self.ended = True
            return None
        assert isinstance(response, bytes)
        return response

    async def half_close(self) -> None:
        if not self.closed_writing and not self.ended:
            self.closed_writing = True
            with suppressed_write_errors():
                await self.call.done_writing()

    async def drain(self) -> None:
        """Half-close and read until the cosigner ends the stream (noting a completion among
        the answers: a "broken" step may have been a valid one)."""
        await self.half_close()
        while (response := await self.read()) is not None:
            self.completed |= self.completes(response)

    def completes(self, response: bytes) -> bool:
        """True when ``response`` is the protocol's last answer (``last`` names it)."""
        if self.last is None:
            return False
        message_type, step = self.last
        return bool(message_type.FromString(response).WhichOneof("step") == step)

    async def mutated(self, descriptor: Any) -> None:
        await self.write(self.data.draw(messages.message_bytes(descriptor, _SEEDS, _SIZES)))

    async def replay(self) -> None:
        # An index, not sampled_from(self.sent): what was sent depends on the cosigner's
        # answers, and hypothesis needs the same draws for the same choices.
        index = self.data.draw(st.integers(0, 7))
        if self.sent:
            await self.write(self.sent[index % len(self.sent)])


_SEEDS = messages.Seeds()


def _open(fuzz: Fuzz, caller: str, method: str) -> Any:
    channel = fuzz.channel("cosigner", caller)
    multi: Any = channel.stream_stream(
        f"/{_SERVICE}/{method}", request_serializer=None, response_deserializer=None
    )
    return multi(timeout=CALL_TIMEOUT)


async def _finish(fuzz: Fuzz, stream: _Stream, rpc: str, before: Any, what: str) -> None:
    if not stream.ended:
        await stream.drain()
    error = stream.error
    if error is not None and stream.write_failed and _client_side(error):
        if stream.completed or stream.maybe_completed:
            TALLY.ran[rpc] += 1  # completed first: the state moved on legitimately
            fuzz.changed()
        else:
            await fuzz.judge_state(rpc, before, what)
        return
    if error is not None and error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
        TALLY.ran[rpc] += 1
        TALLY.flagged[rpc] += 1
        fuzz.changed()
        raise Flagged(f"{rpc} ({what}): the stream did not end after the client half-closed")
    unsure = stream.maybe_completed and not stream.completed
    if unsure:
        # Cancelled after a step that may complete: the cosigner may still be storing.
        await asyncio.sleep(2.0)
    # After a completed step (a stored key, a recorded signature) the state may have moved on
    # even if the stream then ended with a refusal.
    await fuzz.judge(
        rpc,
        before,
        error,
        stream.largest,
        _LIMIT,
        what,
        check_state=not (stream.completed or unsure),
    )
    if stream.completed or unsure:
        fuzz.changed()


def _client_side(error: grpc.aio.AioRpcError) -> bool:
    """The client's own failure to send on a stream the server had closed."""
    return error.code() == grpc.StatusCode.INTERNAL and "execute_batch" in (
        error.debug_error_string() or ""
    )


# KeyGen ---------------------------------------------------------------------------------------


def _broken_start(data: Any, ticket: bytes, machine: twoparty.PhoneKeyGen) -> bytes:
    device_key = new_device_key()
    spki = deviceauth.device_key_spki(device_key)
    start = pb.KeyGenStart(
        scheme=SCHEME,
        ticket=ticket,
        device_public_key=spki,
        pin_verifier=deviceauth.pin_verifier(PIN, spki),
        commitment=wire.commitment_to_proto(twoparty.PhoneKeyGen().start()),
    )
    what = data.draw(
        st.sampled_from(
            (
                "point",
                "proof_r",
                "proof_mu",
                "count",
                "identifier",
                "scheme",
                "ticket",
                "spki",
                "verifier",
            )
        )
    )
    commitment = start.commitment
    if what == "point":
        index = data.draw(st.integers(0, len(commitment.coefficient_commitments) - 1))
        commitment.coefficient_commitments[index] = data.draw(_POINTS)
    elif what == "proof_r":
        commitment.proof_r = data.draw(_POINTS)
    elif what == "proof_mu":
        commitment.proof_mu = data.draw(st.one_of(_SCALARS, st.just(plus_one(commitment.proof_mu))))
    elif what == "count":
        count = data.draw(st.sampled_from((0, 1, 3, 40)))
        points = list(commitment.coefficient_commitments)
        del commitment.coefficient_commitments[:]
        commitment.coefficient_commitments.extend((points * 40)[:count])
    elif what == "identifier":
        commitment.identifier = data.draw(st.sampled_from((0, 2, 3, 2**32 - 1)))
    elif what == "scheme":
        start.scheme = data.draw(_SCHEMES)
    elif what == "ticket":
        start.ticket = data.draw(st.one_of(st.binary(max_size=300), st.just(ticket[:-1])))
    elif what == "spki":
        start.device_public_key = data.draw(st.binary(max_size=120))
    else:
        start.pin_verifier = data.draw(st.binary(max_size=64))
    machine.abort()
    return pb.KeyGenRequest(start=start).SerializeToString()


async def keygen(fuzz: Fuzz, material: Material, data: Any, caller: str) -> None:
    """One KeyGen stream, honest up to a point, then broken."""
    rpc = "CosignerService.KeyGen"
    before = await fuzz.before()
    ticket = material.tickets[-1]
    machine = twoparty.PhoneKeyGen()
    device_key = new_device_key()
    spki = deviceauth.device_key_spki(device_key)
    stream = _Stream(fuzz, data, _open(fuzz, caller, "KeyGen"))
    stream.last = (pb.KeyGenResponse, "done")
    stage = 0  # 0: start next, 1: secret share next, 2: confirm next, 3: confused
    group_key = b""
    actions: list[str] = []
    try:
        for _ in range(data.draw(st.integers(1, 5), label="steps")):
            action = data.draw(
                st.sampled_from(
                    ("honest", "honest", "broken", "mutated", "replay", "half-close", "cancel")
                )
            )
            actions.append(action)
            if stream.ended:
                break
            if action == "honest" and stage == 0:
                start = pb.KeyGenStart(
                    scheme=SCHEME,
                    ticket=ticket,
                    device_public_key=spki,
                    pin_verifier=deviceauth.pin_verifier(PIN, spki),
                    commitment=wire.commitment_to_proto(machine.start()),
                )
                await stream.write(pb.KeyGenRequest(start=start).SerializeToString())
                reply = await stream.read()
                if reply is None:
                    break
                response = pb.KeyGenResponse.FromString(reply)
                if response.WhichOneof("step") != "commitment":
                    stage = 3
                    continue
                own = machine.receive_round1(wire.commitment_from_proto(response.commitment))
                share_message = pb.KeyGenRequest(
                    secret_share=pb.KeyGenSecretShare(secret_share=own.secret_share)
                )
                stage = 1
            elif action == "honest" and stage == 1:
                await stream.write(share_message.SerializeToString())
                reply = await stream.read()
                if reply is None:
                    break
                response = pb.KeyGenResponse.FromString(reply)
                if response.WhichOneof("step") != "secret_share":
                    stage = 3
                    continue
                confirm, _ = machine.receive_round2(
                    twoparty.DkgRound2(
                        response.secret_share.secret_share, response.secret_share.group_public_key
                    )
                )
                group_key = confirm.group_public_key
                stage = 2
            elif action == "honest" and stage == 2:
                transcript = deviceauth.enrol_transcript(ticket, group_key, spki)
                confirm_message = pb.KeyGenRequest(
                    confirm=pb.KeyGenConfirm(
                        group_public_key=group_key,
                        device_signature=deviceauth.sign(device_key, transcript),
                    )
                )
                await stream.write(confirm_message.SerializeToString())
                reply = await stream.read()
                if reply is not None and pb.KeyGenResponse.FromString(reply).HasField("done"):
                    stream.completed = True
                stage = 3
            elif action in ("honest", "broken"):
                kind = data.draw(st.sampled_from(("start", "share", "confirm", "empty")))
                if kind == "start":
                    await stream.write(_broken_start(data, ticket, twoparty.PhoneKeyGen()))
                elif kind == "share":
                    share = pb.KeyGenSecretShare(secret_share=data.draw(_SCALARS))
                    await stream.write(pb.KeyGenRequest(secret_share=share).SerializeToString())
                elif kind == "confirm":
                    key = data.draw(st.one_of(_POINTS, st.just(group_key)))
                    signature = data.draw(
                        st.one_of(
                            st.binary(max_size=80),
                            st.just(
                                deviceauth.sign(
                                    device_key, deviceauth.enrol_transcript(ticket, key, spki)
                                )
                            ),
                        )
                    )
                    confirm_pb = pb.KeyGenConfirm(group_public_key=key, device_signature=signature)
                    stream.maybe_completed |= bool(group_key) and key == group_key
                    await stream.write(pb.KeyGenRequest(confirm=confirm_pb).SerializeToString())
                else:
                    await stream.write(b"")
                stage = 3
            elif action == "mutated":
                await stream.mutated(pb.KeyGenRequest.DESCRIPTOR)
                stage = 3
            elif action == "replay":
                await stream.replay()
                stream.maybe_completed |= stage == 2
                stage = 3
            elif action == "half-close":
                await stream.half_close()
                break
            else:
                stream.call.cancel()
                stream.ended = True
                stream.error = None
                break
        await _finish(fuzz, stream, rpc, before, f"{caller} {actions}")
    finally:
        machine.abort()
        if not stream.ended:
            stream.call.cancel()
        if (stream.completed or stream.maybe_completed) and material.tickets[-1:] == [ticket]:
            material.tickets.pop()  # used, or perhaps used: the next stream gets a fresh one
        if not material.tickets:
            material.tickets.append(await material.spare_ticket())


# Sign -----------------------------------------------------------------------------------------


async def sign(fuzz: Fuzz, material: Material, data: Any, caller: str) -> None:
    """One Sign stream on the enrolled key, honest up to a point, then broken."""
    rpc = "CosignerService.Sign"
    keystore = material.keystore
    verifier = verifier_for(keystore)
    before = await fuzz.before()
    stream = _Stream(fuzz, data, _open(fuzz, caller, "Sign"))
    stream.last = (pb.SignResponse, "closed")
    signer = twoparty.PhoneSigner(keystore.key_package)
    stage = 0  # 0: open next, 1: proof next, 2: commit next, 3: report next, 4: confused
    challenge = b""
    pending: Any = None
    actions: list[str] = []
    try:
        for _ in range(data.draw(st.integers(1, 7), label="steps")):
            action = data.draw(
                st.sampled_from(
                    (
                        "honest",
                        "honest",
                        "honest",
                        "broken",
                        "mutated",
                        "replay",
                        "half-close",
                        "cancel",
                    )
                )
            )
            actions.append(action)
            if stream.ended:
                break
            if action == "honest" and stage == 0:
                opening = pb.SignOpen(scheme=SCHEME, key_id=keystore.key_id)
                await stream.write(pb.SignRequest(open=opening).SerializeToString())
                reply = await stream.read()
                if reply is None:
                    break
                response = pb.SignResponse.FromString(reply)
                if response.WhichOneof("step") != "challenge":
                    stage = 4
                    continue
                challenge = response.challenge.challenge
                stage = 1
            elif action == "honest" and stage == 1:
                transcript = deviceauth.session_transcript(
                    bytes.fromhex(keystore.key_id), challenge
                )
                proof = pb.SignProof(
                    device_signature=deviceauth.sign(keystore.device_key, transcript),
                    pin_proof=deviceauth.pin_proof(verifier, transcript),
                )
                await stream.write(pb.SignRequest(proof=proof).SerializeToString())
                reply = await stream.read()
                if reply is None:
                    break
                stage = 2 if pb.SignResponse.FromString(reply).HasField("ready") else 4
            elif action == "honest" and stage == 2:
                message = data.draw(st.binary(max_size=64))
                pending = signer.request(message)
                commit = wire.sign_commit_to_proto(pending)
                await stream.write(pb.SignRequest(commit=commit).SerializeToString())
                reply = await stream.read()
                if reply is None:
                    break
                response = pb.SignResponse.FromString(reply)
                if response.WhichOneof("step") != "share":
                    stage = 4
                    continue
                material.seen_commitments.append(
                    (commit.hiding_commitment, commit.binding_commitment)
                )
                del material.seen_commitments[:-8]
                report = signer.receive_response(wire.sign_share_from_proto(response.share))
                pending = report
                stage = 3
            elif action == "honest" and stage == 3:
                signature = pb.SignReport(signature=pending.signature)
                await stream.write(pb.SignRequest(report=signature).SerializeToString())
                stage = 2
            elif action in ("honest", "broken"):
                await stream.write(_broken_sign_step(data, keystore.key_id, material))
                stage = 4
            elif action == "mutated":
                await stream.mutated(pb.SignRequest.DESCRIPTOR)
                stage = 4
            elif action == "replay":
                await stream.replay()
                stage = 4
            elif action == "half-close":
                await stream.half_close()
                break
            else:
                stream.call.cancel()
                stream.ended = True
                break
        if not stream.ended and stage in (2, 3) and data.draw(st.booleans()):
            # A clean close after the steps so far.
            await stream.write(pb.SignRequest(close=pb.SignClose()).SerializeToString())
            reply = await stream.read()
            if reply is not None and pb.SignResponse.FromString(reply).HasField("closed"):
                stream.completed = True
        await _finish(fuzz, stream, rpc, before, f"{caller} {actions}")
    finally:
        signer.abort()
        if not stream.ended:
            stream.call.cancel()
        await material_unlock(fuzz, material, stream.error)


def _broken_sign_step(data: Any, key_id: str, material: Material) -> bytes:
    kind = data.draw(
        st.sampled_from(("open", "proof", "commit", "replay", "report", "close", "empty"))
    )
    if kind == "open":
        opening = pb.SignOpen(
            scheme=data.draw(_SCHEMES),
            key_id=data.draw(st.sampled_from((key_id, "", "00" * 32, key_id.upper(), "x" * 70))),
        )
        return pb.SignRequest(open=opening).SerializeToString()
    if kind == "proof":
        proof = pb.SignProof(
            device_signature=data.draw(st.binary(max_size=80)),
            pin_proof=data.draw(st.binary(max_size=40)),
        )
        return pb.SignRequest(proof=proof).SerializeToString()
    if kind in ("commit", "replay"):
        index = data.draw(st.integers(0, 7))
        if kind == "replay" and material.seen_commitments:
            seen = material.seen_commitments
            hiding, binding = seen[index % len(seen)]
        else:
            hiding, binding = data.draw(_POINTS), data.draw(_POINTS)
        message = data.draw(st.one_of(st.binary(max_size=64), st.sampled_from((b"\x00" * 65_537,))))
        commit = pb.SignCommit(
            message=message, hiding_commitment=hiding, binding_commitment=binding
        )
        return pb.SignRequest(commit=commit).SerializeToString()
    if kind == "report":
        report = pb.SignReport(signature=data.draw(st.binary(max_size=80)))
        return pb.SignRequest(report=report).SerializeToString()
    if kind == "close":
        return pb.SignRequest(close=pb.SignClose()).SerializeToString()
    return b""


async def material_unlock(fuzz: Fuzz, material: Material, error: Any) -> None:
    """Wrong PINs lock the key: unlock it (as an administrator) so later examples go deeper."""
    from mobilesign.rpc.status import reason_of
    from mobilesign.v1 import cosigner_pb2_grpc

    if error is None or reason_of(error) not in ("WRONG_PIN", "KEY_LOCKED"):
        return
    stub = cosigner_pb2_grpc.CosignerServiceStub(fuzz.channel("cosigner", "admin"))
    await stub.UnlockKey(pb.UnlockKeyRequest(key_id=material.keystore.key_id))


# WatchChanges ---------------------------------------------------------------------------------

#: Who may ask the RA for its change feed (the gateway) and who may not.
WATCH_CALLERS = ("gateway", "gateway", "admin", "cosigner", "hsm-proxy")
_WATCH_LIMIT = HOSTS["mobilesign.v1.RegistrationService"][1]
_WATCH_SIZES = messages.Sizes(_WATCH_LIMIT)
_ACKNOWLEDGED = st.sampled_from((0, 1, 2, 2**32, 2**63 - 1, 2**64 - 1))


async def watch(fuzz: Fuzz, material: Material, data: Any, caller: str) -> None:
    """One watch of the RA's change feed: opened honestly or not, acknowledgements of changes
    never sent, raw and mutated messages, then a half-close or a cancel. A watch changes
    nothing, so the state is checked after every one."""
    rpc = "RegistrationService.WatchChanges"
    before = await fuzz.before()
    multi: Any = fuzz.channel("ra", caller).stream_stream(
        "/mobilesign.v1.RegistrationService/WatchChanges",
        request_serializer=None,
        response_deserializer=None,
    )
    stream = _Stream(fuzz, data, multi(timeout=CALL_TIMEOUT))
    actions: list[str] = []
    try:
        for _ in range(data.draw(st.integers(1, 4), label="steps")):
            action = data.draw(st.sampled_from(("honest", "ack", "raw", "mutated", "cancel")))
            actions.append(action)
            if action == "cancel":
                stream.call.cancel()
                stream.ended = True
                break
            if action == "honest":
                message = ra_pb2.WatchChangesRequest(acknowledged=0).SerializeToString()
            elif action == "ack":
                message = ra_pb2.WatchChangesRequest(
                    acknowledged=data.draw(_ACKNOWLEDGED)
                ).SerializeToString()
            elif action == "raw":
                message = data.draw(messages.raw_bytes(_WATCH_SIZES))
            else:
                descriptor = ra_pb2.WatchChangesRequest.DESCRIPTOR
                message = data.draw(messages.message_bytes(descriptor, _SEEDS, _WATCH_SIZES))
            await stream.write(message)
        if stream.ended:
            await fuzz.judge_state(rpc, before, f"{caller} {actions}")
            return
        await stream.drain()
        error = stream.error
        if error is not None and stream.write_failed and _client_side(error):
            await fuzz.judge_state(rpc, before, f"{caller} {actions}")
            return
        await fuzz.judge(rpc, before, error, stream.largest, _WATCH_LIMIT, f"{caller} {actions}")
    finally:
        if not stream.ended:
            stream.call.cancel()
