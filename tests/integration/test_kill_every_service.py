"""Nothing acknowledged is lost whichever service dies: each of the HSM proxy, the RA, the
gateway and the cosigner is killed (SIGKILL) at a random point while phones sign with their
personal keys and use an organisation key concurrently, then started again. Afterwards every
use whose result reached a phone is in the log and its receipt verifies, every signature the
cosigner released is recorded (with its signature, once the session was closed), the log
verifies from entry 0 and extends every checkpoint seen, and the quotas (the RA's and the HSM
proxy's count) are exactly the logged records.

``MOBILESIGN_CRASH_ROUNDS`` (default 1) sets how many times each service is killed."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import os
import random
import signal
import sqlite3
from collections.abc import Iterator

import pytest

from mobilesign.testing import Deployment
from mobilesign.testing.deployment import START_ORDER
from mobilesign.v1 import gateway_pb2
from tests.integration import escrow
from tests.integration.crashes import (
    RETRY_OUTCOMES,
    Acknowledged,
    InFlight,
    check_log,
    datum,
    reconnect,
    retry,
    use_once,
)

pytestmark = pytest.mark.integration
ROUNDS = int(os.environ.get("MOBILESIGN_CRASH_ROUNDS", "1"))
PHONES = 3


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """All four services."""
    deployment = Deployment(tmp_path_factory.mktemp("kill-every"))
    deployment.start_all()
    yield deployment
    deployment.stop_all()


@dataclasses.dataclass
class _Signed:
    """A personal signature the phone received (so the cosigner released its share)."""

    key_id: str
    message_sha256: bytes
    signature: bytes


async def _traffic(
    phone: escrow.Phone,
    grant_id: str,
    index: int,
    stop: asyncio.Event,
    seen: list[Acknowledged],
    in_flight: list[tuple[escrow.Phone, InFlight]],
    signed: list[_Signed],
) -> None:
    """Alternate a personal signature and an organisation-key use until told to stop or
    until a call fails (a service died)."""
    n = 0
    with contextlib.suppress(Exception):  # whichever way a dead service shows, traffic ends
        while not stop.is_set():
            message = datum(index, n) + b"personal"
            signature = await phone.signing.sign(message)
            signed.append(
                _Signed(phone.keystore.key_id, hashlib.sha256(message).digest(), signature)
            )
            if not await use_once(phone, grant_id, datum(index, n), seen, in_flight):
                return
            n += 1


def _signings(deployment: Deployment) -> dict[tuple[str, bytes], list[bytes | None]]:
    db = deployment.state_dir / "cosigner" / "cosigner.db"
    found: dict[tuple[str, bytes], list[bytes | None]] = {}
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as connection:
        for key_id, digest, signature in connection.execute(
            "SELECT key_id, message_sha256, signature FROM signings"
        ):
            found.setdefault((key_id, bytes(digest)), []).append(
                None if signature is None else bytes(signature)
            )
    return found


async def _checkpoint(deployment: Deployment) -> bytes:
    async with deployment.public_channel("gateway") as channel:
        reply = await escrow.public(channel).GetCheckpoint(gateway_pb2.GetCheckpointRequest())
    return reply.checkpoint


async def test_killing_any_service_loses_nothing_acknowledged(deployment: Deployment) -> None:
    chance = random.Random(20261202)
    organisation = await escrow.organisation(deployment, "killco")
    phones = [await escrow.phone(deployment, organisation, f"kill{i}") for i in range(PHONES)]
    grants = [
        (
            await escrow.grant(
                deployment,
                p.user_id,
                organisation.seal,
                [gateway_pb2.OPERATION_SIGN_DIGEST],
                quota_total=100_000,
                quota_daily=100_000,
            )
        ).grant_id
        for p in phones
    ]
    victims = [name for _ in range(ROUNDS) for name in chance.sample(START_ORDER, 4)]
    seen: list[Acknowledged] = []
    signed: list[_Signed] = []
    outcomes: list[str] = []
    checkpoints: list[bytes] = []
    killed: list[str] = []
    try:
        for cycle, victim in enumerate(victims):
            stop = asyncio.Event()
            in_flight: list[tuple[escrow.Phone, InFlight]] = []
            before = len(seen)
            workers = [
                asyncio.create_task(
                    _traffic(p, g, PHONES * cycle + i, stop, seen, in_flight, signed)
                )
                for i, (p, g) in enumerate(zip(phones, grants, strict=True))
            ]
            await asyncio.sleep(chance.uniform(0.3, 1.2))
            deployment.stop(victim, signal.SIGKILL)
            killed.append(victim)
            await asyncio.sleep(0.3)  # traffic runs into the dead service
            stop.set()
            await asyncio.wait_for(asyncio.gather(*workers), timeout=60)
            assert len(seen) > before, f"no use between the kills (cycle {cycle}, {victim})"
            deployment.start(victim)
            for p in phones:
                await reconnect(deployment, p)
            for p, flight in in_flight:
                await retry(p, flight, seen, outcomes)
            checkpoints.append(await _checkpoint(deployment))
        assert sorted(set(killed)) == sorted(START_ORDER)
        assert set(outcomes) <= RETRY_OUTCOMES, outcomes
        # A session closed now: the cosigner acknowledges every signature of it as recorded.
        closing: list[_Signed] = []
        for p in phones:
            for n in range(3):
                message = f"closing {n}".encode()
                signature = await p.signing.sign(message)
                closing.append(
                    _Signed(p.keystore.key_id, hashlib.sha256(message).digest(), signature)
                )
            assert await p.signing.close() == 3
        await check_log(deployment, organisation, seen, grants, checkpoints)
        recorded = _signings(deployment)
        for s in signed:
            # Recorded before the share was released; the signature too unless the cosigner
            # died before it was written (its session was never closed).
            stored = recorded.get((s.key_id, s.message_sha256), [])
            assert stored, "a released signature share was not recorded"
            assert any(v in (None, s.signature) for v in stored)
        for s in closing:
            assert s.signature in recorded[(s.key_id, s.message_sha256)]
    finally:
        for p in phones:
            await p.close()
