"""Shared set-up for the CSC endpoint's tests (and the demo's and bench's shape of it): a
registered application, and a simulated phone that approves what the application asks for."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from client import csc_seal
from client.approver import Approver
from client.gateway_client import Approved
from mobilesign.hosting import devpki
from mobilesign.testing import Deployment
from mobilesign.v1 import csc_pb2, csc_pb2_grpc
from tests.integration import escrow


@dataclasses.dataclass(frozen=True)
class App:
    """A registered application and the endpoint's base URL."""

    client_id: str
    secret: str
    base_url: str


async def register(deployment: Deployment, name: str, grant_ids: list[str]) -> App:
    """Register ``name`` for ``grant_ids`` as an administrator."""
    async with deployment.channel("gateway") as channel:
        reply = await csc_pb2_grpc.CscAdminServiceStub(channel).RegisterApplication(
            csc_pb2.RegisterApplicationRequest(name=name, grant_ids=grant_ids)
        )
    return App(reply.application.client_id, reply.client_secret, base_url(deployment))


def base_url(deployment: Deployment) -> str:
    """The CSC endpoint of the deployment's gateway."""
    return f"https://{deployment.address('gateway', 'csc')}"


def http(deployment: Deployment) -> aiohttp.ClientSession:
    """An HTTP client trusting the deployment's TLS CA."""
    return csc_seal.http_session(str(devpki.ensure(deployment.state_dir) / "ca.pem"))


def b64(data: bytes) -> str:
    """Standard base64, as CSC has it."""
    return base64.b64encode(data).decode()


async def post(
    session: aiohttp.ClientSession, app: App, method: str, body: Any, token: str = ""
) -> tuple[int, dict[str, Any]]:
    """POST to a CSC method; (status, JSON answer) whatever the status."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = f"{app.base_url}/csc/v2/{method}"
    kwargs: dict[str, Any] = {"data": body} if isinstance(body, bytes | str) else {"json": body}
    async with session.post(url, headers=headers, **kwargs) as response:
        return response.status, await response.json(content_type=None)


@contextlib.asynccontextmanager
async def approving(
    phone: escrow.Phone, organisation: escrow.Organisation, decline: bool = False
) -> AsyncIterator[list[Approved]]:
    """The simulated phone approving (or declining) every approval while the block runs; the
    records it co-signed are collected in the yielded list."""
    approver = Approver(phone.gateway, phone.signing, organisation.trust, lambda _: not decline)
    async with approver.running():
        yield approver.approved
    assert approver.failed == []
