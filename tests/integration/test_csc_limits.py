"""The CSC endpoint's per-address limit: requests in flight from one address beyond
``csc_max_requests_per_peer`` are refused at once in the CSC form (HTTP 429, with Retry-After),
touch nothing, and the address is served again once its requests end."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator

import pytest

from client import csc_seal
from mobilesign.testing import Deployment
from mobilesign.v1 import gateway_pb2
from tests.integration import csc, escrow

pytestmark = pytest.mark.integration

LIMIT = 3
WAIT_SECONDS = 3


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """Four services; the CSC endpoint takes 3 requests at a time from one address, and a
    synchronous authorisation waits 3 s for the user."""
    deployment = Deployment(
        tmp_path_factory.mktemp("csc-limits"),
        extra_env={
            "MOBILESIGN_GATEWAY_CSC_MAX_REQUESTS_PER_PEER": str(LIMIT),
            "MOBILESIGN_GATEWAY_CSC_WAIT_SECONDS": str(WAIT_SECONDS),
        },
    )
    deployment.start_all()
    yield deployment
    deployment.stop_all()


async def test_one_address_gets_at_most_the_limit_in_flight(deployment: Deployment) -> None:
    organisation = await escrow.organisation(deployment, "limits")
    phone = await escrow.phone(deployment, organisation, "limits")
    try:
        grant = await escrow.grant(
            deployment, phone.user_id, organisation.seal, [gateway_pb2.OPERATION_SIGN_DIGEST]
        )
        app = await csc.register(deployment, "Busy desk", [grant.grant_id])
        digest = hashlib.sha256(b"busy").digest()
        body = {
            "credentialID": grant.grant_id,
            "numSignatures": 1,
            "hashes": [csc.b64(digest)],
            "hashAlgorithmOID": csc_seal.SHA256,
        }
        async with csc.http(deployment) as http:
            token = await csc_seal.access_token(http, app.base_url, app.client_id, app.secret)
            # Synchronous authorisations nobody answers: each holds its place for 3 s.
            held = [
                asyncio.create_task(csc.post(http, app, "credentials/authorize", body, token))
                for _ in range(LIMIT)
            ]
            await asyncio.sleep(1)
            before = await phone.gateway.approvals()
            assert len(before) == LIMIT
            url = f"{app.base_url}/csc/v2/credentials/list"
            async with http.post(
                url, json={}, headers={"Authorization": f"Bearer {token}"}
            ) as response:
                refused = (response.status, await response.json(), response.headers)
            status, answer, headers = refused
            assert (status, answer["error"], answer["reason"]) == (
                429,
                "temporarily_unavailable",
                "TOO_MANY_RPCS_FROM_PEER",
            ), answer
            assert headers["Retry-After"] == "1"
            assert len(await phone.gateway.approvals()) == LIMIT  # nothing asked of the phone
            # The held ones end (202: the user did not answer); the address is served again.
            assert [s for s, _ in await asyncio.gather(*held)] == [202] * LIMIT
            status, listed = await csc.post(http, app, "credentials/list", {}, token)
            assert (status, listed) == (200, {"credentialIDs": [grant.grant_id]})
    finally:
        await phone.close()
