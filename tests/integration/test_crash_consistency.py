"""Nothing acknowledged is lost: the gateway is killed (SIGKILL) at random points while phones
use an organisation key; after each restart the log still verifies from its first entry, every
use whose result reached a phone is in it, and no quota was consumed without a logged record.
(tests/integration/test_kill_every_service.py kills each of the four services.)"""

from __future__ import annotations

import asyncio
import random
import signal
from collections.abc import Iterator

import pytest

from mobilesign.testing import Deployment
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
CYCLES = 4


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """All four services."""
    deployment = Deployment(tmp_path_factory.mktemp("crash"))
    deployment.start_all()
    yield deployment
    deployment.stop_all()


async def _traffic(
    phone: escrow.Phone,
    grant_id: str,
    seen: list[Acknowledged],
    in_flight: list[tuple[escrow.Phone, InFlight]],
    index: int,
) -> None:
    """Use the key step by step until the gateway dies; keep what reached the phone, and the
    record that was co-signed but not answered (to execute again after the restart)."""
    n = 0
    while await use_once(phone, grant_id, datum(index, n), seen, in_flight):
        n += 1


async def test_killing_the_gateway_loses_nothing_acknowledged(deployment: Deployment) -> None:
    chance = random.Random(20261125)
    organisation = await escrow.organisation(deployment, "crashco")
    phones = [await escrow.phone(deployment, organisation, f"crash{i}") for i in range(2)]
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
    seen: list[Acknowledged] = []
    outcomes: list[str] = []
    try:
        for cycle in range(CYCLES):
            in_flight: list[tuple[escrow.Phone, InFlight]] = []
            workers = [
                asyncio.create_task(_traffic(p, g, seen, in_flight, 16 * cycle + i))
                for i, (p, g) in enumerate(zip(phones, grants, strict=True))
            ]
            await asyncio.sleep(chance.uniform(0.2, 1.5))
            deployment.stop("gateway", signal.SIGKILL)
            await asyncio.wait_for(asyncio.gather(*workers), timeout=30)
            deployment.start("gateway")
            for p in phones:
                await reconnect(deployment, p)
            for p, flight in in_flight:
                await retry(p, flight, seen, outcomes)
        assert len(seen) >= CYCLES  # traffic did flow between the kills
        assert set(outcomes) <= RETRY_OUTCOMES
        await check_log(deployment, organisation, seen, grants)
    finally:
        for p in phones:
            await p.close()
