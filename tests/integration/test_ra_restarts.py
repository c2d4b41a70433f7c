"""The RA killed at any point: what it acknowledged holds, and a revocation it stored but could
not yet push to the HSM proxy reaches the proxy when the RA starts again."""

from __future__ import annotations

import secrets
import signal
import sqlite3
import time
from collections.abc import Iterator

import grpc
import pytest

from mobilesign.rpc.status import reason_of
from mobilesign.testing import Deployment
from mobilesign.v1 import gateway_pb2, ra_pb2, ra_pb2_grpc
from tests.integration import escrow

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """The HSM proxy and the RA (the only services these tests need)."""
    deployment = Deployment(tmp_path_factory.mktemp("ra-restarts"))
    deployment.start("hsm-proxy")
    deployment.start("ra")
    yield deployment
    deployment.stop_all()


def _revoked_at_the_proxy(deployment: Deployment, kind: str, subject: str) -> bool:
    path = deployment.state_dir / "hsm" / "authorisations.db"
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        row = connection.execute(
            "SELECT 1 FROM revocations WHERE kind = ? AND subject = ?", (kind, subject)
        ).fetchone()
    finally:
        connection.close()
    return row is not None


async def _grant(deployment: Deployment) -> str:
    now = int(time.time())
    async with deployment.channel("ra") as channel:
        admin = ra_pb2_grpc.AdminServiceStub(channel)
        user = f"restart-{secrets.token_hex(4)}"
        await admin.CreateUser(ra_pb2.CreateUserRequest(user_id=user))
        await admin.CreateOrganisation(
            ra_pb2.CreateOrganisationRequest(organisation_id=user, name="Restart Ltd")
        )
        key = (
            await admin.CreateOrganisationKey(
                ra_pb2.CreateOrganisationKeyRequest(
                    organisation_id=user,
                    label=f"{user}-seal",
                    algorithm=gateway_pb2.ORGANISATION_KEY_ALGORITHM_EC_P256,
                )
            )
        ).key
        grant = (
            await admin.CreateGrant(
                ra_pb2.CreateGrantRequest(
                    user_id=user,
                    key_id=key.key_id,
                    operations=[gateway_pb2.OPERATION_SIGN_DIGEST],
                    not_before_unix=now - 60,
                    not_after_unix=now + 3600,
                    quota_total=10,
                    quota_daily=10,
                )
            )
        ).grant
    return grant.grant_id


async def test_an_acknowledged_revocation_is_at_the_proxy_before_the_answer(
    deployment: Deployment,
) -> None:
    grant_id = await _grant(deployment)
    async with deployment.channel("ra") as channel:
        await escrow.admin(channel).RevokeGrant(ra_pb2.RevokeGrantRequest(grant_id=grant_id))
    # Killed right after answering: the proxy already has it.
    deployment.stop("ra", signal.SIGKILL)
    assert _revoked_at_the_proxy(deployment, "grant", grant_id)
    deployment.start("ra")


async def test_a_revocation_the_proxy_missed_reaches_it_at_the_next_start(
    deployment: Deployment,
) -> None:
    grant_id = await _grant(deployment)
    deployment.stop("hsm-proxy")
    async with deployment.channel("ra") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await escrow.admin(channel).RevokeGrant(
                ra_pb2.RevokeGrantRequest(grant_id=grant_id), timeout=15
            )
    # Not acknowledged: the administrator is told the proxy could not be reached.
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert reason_of(info.value) == "HSM_UNAVAILABLE"
    # The RA is killed before anyone retries; the proxy comes back first.
    deployment.stop("ra", signal.SIGKILL)
    deployment.start("hsm-proxy")
    assert not _revoked_at_the_proxy(deployment, "grant", grant_id)
    deployment.start("ra")
    assert _revoked_at_the_proxy(deployment, "grant", grant_id)
    # And the RA itself shows the grant revoked.
    async with deployment.channel("ra") as channel:
        listed = await escrow.admin(channel).ListGrants(ra_pb2.ListGrantsRequest())
    assert {g.grant_id: g.revoked for g in listed.grants}[grant_id] is True
