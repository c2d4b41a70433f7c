"""A long signing session keeps no per-signature state in the cosigner: however many
signatures one session makes, the number of tasks it retains stays flat."""

from __future__ import annotations

import asyncio
import gc
import secrets
from typing import cast

import pytest

from cosigner import signing
from cosigner.context import Cosigner
from cosigner.repository import StoredKey
from cosigner.stream import StepStream
from mobilesign import twoparty
from mobilesign.rpc import wire
from mobilesign.v1 import cosigner_pb2 as pb

SIGNATURES = 2_000


class _Store:
    """Only the two calls the per-signature loop makes."""

    def __init__(self) -> None:
        self.begun = 0
        self.completed: list[int] = []

    async def begin_signing(self, *_: object) -> int:
        self.begun += 1
        return self.begun

    def complete_signing(self, signing_id: int, *_: object) -> asyncio.Future[None]:
        # Done on a later turn of the loop, as a batch's commit would be.
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def done() -> None:
            self.completed.append(signing_id)
            future.set_result(None)

        asyncio.get_running_loop().call_soon(done)
        return future


class _Sealer:
    def __init__(self, package: twoparty.KeyPackage) -> None:
        self._package = package

    async def unseal(self, *_: object) -> bytes:
        return self._package.to_bytes()


class _Stream:
    """The phone's end in the same loop: two queues."""

    def __init__(self) -> None:
        self.to_cosigner: asyncio.Queue[pb.SignRequest] = asyncio.Queue()
        self.to_phone: asyncio.Queue[pb.SignResponse] = asyncio.Queue()

    async def read(self, *expected: str) -> tuple[str, pb.SignRequest]:
        message = await self.to_cosigner.get()
        step = message.WhichOneof("step")
        assert step in expected
        return step, message

    async def write(self, message: pb.SignResponse) -> None:
        await self.to_phone.put(message)


def _tasks() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, asyncio.Task))


def _keys() -> tuple[twoparty.KeyPackage, twoparty.KeyPackage]:
    phone = twoparty.PhoneKeyGen()
    cosigner = twoparty.CosignerKeyGen()
    c2 = cosigner.receive_round2(phone.receive_round1(cosigner.receive_round1(phone.start())))
    confirm, phone_package = phone.receive_round2(c2)
    return phone_package, cosigner.receive_confirm(confirm)


async def test_a_long_session_retains_no_task_per_signature(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    phone_package, cosigner_package = _keys()
    key_id = secrets.token_hex(16)
    key = StoredKey(
        key_id,
        "user",
        twoparty.Scheme.FROST_ED25519_SHA512.value,
        b"",
        b"",
        b"",
        0,
        False,
        "ticket",
        0,
    )

    async def found(*_: object) -> StoredKey:
        return key

    async def authenticated(*_: object) -> None:
        return None

    # Only the loop after the PIN check is under test; the key lookup and proofs have theirs.
    monkeypatch.setattr(signing, "_key", found)
    monkeypatch.setattr(signing, "_authenticate", authenticated)
    store = _Store()
    cosigner = cast(Cosigner, type("C", (), {"store": store, "sealer": _Sealer(cosigner_package)}))
    stream = _Stream()
    session = asyncio.create_task(
        signing.sign(cosigner, cast(StepStream[pb.SignRequest, pb.SignResponse], stream))
    )
    await stream.to_cosigner.put(
        pb.SignRequest(
            open=pb.SignOpen(
                key_id=key_id, scheme=wire.scheme_to_proto(twoparty.Scheme.FROST_ED25519_SHA512)
            )
        )
    )
    assert (await stream.to_phone.get()).WhichOneof("step") == "ready"
    phone = twoparty.PhoneSigner(phone_package)
    retained: list[int] = []
    for n in range(SIGNATURES):
        request = phone.request(n.to_bytes(8, "big"))
        await stream.to_cosigner.put(pb.SignRequest(commit=wire.sign_commit_to_proto(request)))
        share = (await stream.to_phone.get()).share
        report = phone.receive_response(wire.sign_share_from_proto(share))
        await stream.to_cosigner.put(
            pb.SignRequest(report=pb.SignReport(signature=report.signature))
        )
        if n in (99, SIGNATURES - 1):
            retained.append(_tasks())
    await stream.to_cosigner.put(pb.SignRequest(close=pb.SignClose()))
    closed = await stream.to_phone.get()
    await session
    assert closed.closed.signatures_recorded == SIGNATURES
    # Every report is on disk when the session closes, in order ...
    assert store.completed == list(range(1, SIGNATURES + 1))
    # ... yet the session held as many tasks after 2,000 signatures as after 100.
    assert retained[1] <= retained[0], retained
