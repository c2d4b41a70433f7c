"""The gateway keeps the RA's answers between uses, and no revocation outlives what it kept: a
revocation the RA has acknowledged is refused by the gateway's very next answer, and an RA that
was killed and started again is asked afresh."""

from __future__ import annotations

import json
import signal
from collections import Counter
from collections.abc import Iterator

import grpc
import pytest

import client
from mobilesign.rpc.status import reason_of
from mobilesign.testing import Deployment
from mobilesign.v1 import gateway_pb2, ra_pb2, ra_pb2_grpc
from tests.integration import escrow

pytestmark = pytest.mark.integration

SIGN = gateway_pb2.OPERATION_SIGN_DIGEST
#: What the gateway asks the RA about a use (ListGrants, the phone's listing, is not kept).
KEPT = ("GetKeyStatus", "GetGrant", "GetOrganisationKey")


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """Four services of its own: one test kills the RA."""
    deployment = Deployment(tmp_path_factory.mktemp("ra-answers"))
    deployment.start_all()
    yield deployment
    deployment.stop_all()


def _asked_by_gateway(deployment: Deployment) -> Counter[str]:
    """RegistrationService calls the RA answered for the gateway, by method."""
    asked: Counter[str] = Counter()
    for line in (deployment.state_dir / "ra.log").read_text().splitlines():
        entry = json.loads(line)
        if entry.get("msg") == "rpc" and entry.get("caller") == "gateway":
            asked[entry["method"].rsplit("/", 1)[-1]] += 1
    return asked


async def _use(phone: escrow.Phone, organisation: escrow.Organisation, grant_id: str) -> None:
    await phone.gateway.use_key(
        phone.signing,
        grant_id=grant_id,
        operation=SIGN,
        data=b"\x01" * 32,
        purpose="kept answers",
        trust=organisation.trust,
    )


async def _refused_with(
    phone: escrow.Phone, organisation: escrow.Organisation, grant_id: str
) -> str:
    with pytest.raises(client.ClientError) as caught:
        await _use(phone, organisation, grant_id)
    return caught.value.reason


async def test_uses_after_the_first_ask_the_ra_nothing_and_revocations_hold_at_once(
    deployment: Deployment,
) -> None:
    organisation = await escrow.organisation(deployment, "kept")
    phone = await escrow.phone(deployment, organisation, "kept")
    try:
        grant = await escrow.grant(deployment, phone.user_id, organisation.seal, [SIGN])
        await _use(phone, organisation, grant.grant_id)
        before = _asked_by_gateway(deployment)
        assert min(before[m] for m in KEPT) >= 1  # the first use asked each
        for _ in range(5):
            await _use(phone, organisation, grant.grant_id)
        after = _asked_by_gateway(deployment)
        assert {m: after[m] - before[m] for m in KEPT} == dict.fromkeys(KEPT, 0)

        async with deployment.channel("ra") as channel:
            await escrow.admin(channel).RevokeGrant(
                ra_pb2.RevokeGrantRequest(grant_id=grant.grant_id)
            )
        assert await _refused_with(phone, organisation, grant.grant_id) == "GRANT_REVOKED"

        other = await escrow.grant(deployment, phone.user_id, organisation.seal, [SIGN])
        await _use(phone, organisation, other.grant_id)
        async with deployment.channel("ra") as channel:
            await escrow.admin(channel).RevokeCertificate(
                ra_pb2.RevokeCertificateRequest(
                    serial=phone.certificate_serial,
                    reason=gateway_pb2.REVOCATION_REASON_KEY_COMPROMISE,
                )
            )
        assert await _refused_with(phone, organisation, other.grant_id) == "CERTIFICATE_REVOKED"
    finally:
        await phone.close()


async def test_after_the_ra_is_killed_nothing_kept_is_used(deployment: Deployment) -> None:
    organisation = await escrow.organisation(deployment, "killed")
    phone = await escrow.phone(deployment, organisation, "killed")
    try:
        grant = await escrow.grant(deployment, phone.user_id, organisation.seal, [SIGN])
        await _use(phone, organisation, grant.grant_id)  # the gateway keeps the answers
        deployment.stop("ra", signal.SIGKILL)
        # Without the RA the gateway has nothing it may use: it says the RA is unreachable
        # (the phone kept the grant and the key, so it goes straight to PrepareOperation).
        assert await _refused_with(phone, organisation, grant.grant_id) == "RA_UNAVAILABLE"
        deployment.start("ra")
        async with deployment.channel("ra") as channel:
            await escrow.admin(channel).RevokeGrant(
                ra_pb2.RevokeGrantRequest(grant_id=grant.grant_id)
            )
        assert await _refused_with(phone, organisation, grant.grant_id) == "GRANT_REVOKED"
    finally:
        await phone.close()


@pytest.mark.parametrize("identity", ["cosigner", "hsm-proxy", "admin"])
async def test_only_the_gateway_may_watch_the_ras_changes(
    deployment: Deployment, identity: str
) -> None:
    """Another service's credentials (or an administrator's) open no change feed."""
    async with deployment.channel("ra", identity) as channel:
        call = ra_pb2_grpc.RegistrationServiceStub(channel).WatchChanges(timeout=10)
        await call.write(ra_pb2.WatchChangesRequest(acknowledged=0))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call.read()
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert reason_of(caught.value) == "CALLER_NOT_AUTHORISED"
