"""After the HSM proxy restarts, the gateway serves again at once: while the proxy is down a
use gets a clear UNAVAILABLE ``HSM_UNAVAILABLE`` (never INTERNAL), and the first use after the
proxy reports SERVING succeeds within half a second (gRPC's default reconnection back-off kept
the gateway answering HSM_UNAVAILABLE for seconds)."""

from __future__ import annotations

import asyncio
import hashlib
import signal
import time
from collections.abc import Iterator

import pytest

import client
from mobilesign.errors import Kind
from mobilesign.testing import Deployment
from mobilesign.v1 import gateway_pb2
from tests.integration import escrow

pytestmark = pytest.mark.integration
#: How long the proxy stays down while phones keep asking (the back-off grows meanwhile).
DOWN_S = 3.0
PROMPT_S = 0.5


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """All four services."""
    deployment = Deployment(tmp_path_factory.mktemp("proxy-restart"))
    deployment.start_all()
    yield deployment
    deployment.stop_all()


async def test_the_gateway_reconnects_promptly_after_an_hsm_proxy_restart(
    deployment: Deployment,
) -> None:
    organisation = await escrow.organisation(deployment, "restartco")
    phone = await escrow.phone(deployment, organisation, "restart")
    grant = await escrow.grant(
        deployment,
        phone.user_id,
        organisation.seal,
        [gateway_pb2.OPERATION_SIGN_DIGEST],
        quota_total=1_000,
        quota_daily=1_000,
    )
    n = 0

    async def use() -> client.Use:
        nonlocal n
        n += 1
        return await phone.gateway.use_key(
            phone.signing,
            grant_id=grant.grant_id,
            operation=gateway_pb2.OPERATION_SIGN_DIGEST,
            data=hashlib.sha256(n.to_bytes(8, "big")).digest(),
            trust=organisation.trust,
        )

    try:
        await use()
        deployment.stop("hsm-proxy", signal.SIGTERM)
        refusals: list[tuple[str, Kind]] = []
        deadline = time.monotonic() + DOWN_S
        while time.monotonic() < deadline:
            with pytest.raises(client.ClientError) as caught:
                await use()
            refusals.append((caught.value.reason, caught.value.kind))
            await asyncio.sleep(0.05)
        assert refusals
        assert set(refusals) == {("HSM_UNAVAILABLE", Kind.UNAVAILABLE)}
        deployment.start("hsm-proxy")
        serving = time.monotonic()
        after: list[tuple[str, Kind]] = []
        while True:
            try:
                await use()
                break
            except client.ClientError as exc:
                after.append((exc.reason, exc.kind))
                assert time.monotonic() - serving < 10
        elapsed = time.monotonic() - serving
        assert set(after) <= {("HSM_UNAVAILABLE", Kind.UNAVAILABLE)}
        assert elapsed < PROMPT_S, f"first use {elapsed:.2f} s after SERVING ({len(after)} refused)"
    finally:
        await phone.close()
