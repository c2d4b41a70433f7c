"""Shared set-up for the CSC endpoint's tests (and the demo's and bench's shape of it): a
registered application, and a simulated phone that approves what the application asks for."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpc

from client import csc_seal
from client.approver import Approver
from client.gateway_client import Approved
from client.sdk import SigningSession
from mobilesign import deviceauth
from mobilesign.hosting import devpki
from mobilesign.testing import Deployment
from mobilesign.v1 import csc_pb2, csc_pb2_grpc, gateway_pb2, gateway_pb2_grpc
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


async def authorize_later(
    session: aiohttp.ClientSession,
    app: App,
    token: str,
    grant_id: str,
    digests: list[bytes],
    description: str = "",
) -> str:
    """Ask for signatures of ``digests`` in the asynchronous form; the approval's id (the
    responseID that credentials/authorizeCheck takes)."""
    body = {
        "credentialID": grant_id,
        "numSignatures": len(digests),
        "hashes": [b64(d) for d in digests],
        "hashAlgorithmOID": csc_seal.SHA256,
        "operationMode": "A",
        "description": description,
    }
    status, answer = await post(session, app, "credentials/authorize", body, token)
    assert status == 202, answer
    return str(answer["responseID"])


@dataclasses.dataclass(frozen=True)
class ByHand:
    """A phone's calls to the gateway as a test builds them: the public stub, the phone's
    session token and its signing session (which co-signs whatever it is given)."""

    stub: gateway_pb2_grpc.GatewayServiceAsyncStub
    token: str
    signing: SigningSession

    @property
    def metadata(self) -> tuple[tuple[str, str]]:
        """The session's call metadata."""
        return (("authorization", f"Bearer {self.token}"),)

    async def cosigned(
        self, grant_id: str, digest: bytes, purpose: str
    ) -> gateway_pb2.CoSignedRecord:
        """A record the gateway prepares for signing ``digest``, co-signed by the user."""
        prepared = await self.stub.PrepareOperation(
            gateway_pb2.PrepareOperationRequest(
                grant_id=grant_id,
                operation=gateway_pb2.OPERATION_SIGN_DIGEST,
                input=digest,
                purpose=purpose,
            ),
            metadata=self.metadata,
            timeout=30,
        )
        return gateway_pb2.CoSignedRecord(
            record_id=prepared.record_id,
            record=prepared.record,
            user_signature=await self.signing.sign(prepared.record),
        )

    async def approve(
        self, approval_id: str, cosigned: list[gateway_pb2.CoSignedRecord]
    ) -> gateway_pb2.ApproveResponse:
        """Answer ``approval_id`` with ``cosigned`` as they are."""
        return await self.stub.Approve(
            gateway_pb2.ApproveRequest(approval_id=approval_id, records=cosigned),
            metadata=self.metadata,
            timeout=30,
        )

    async def decline(self, approval_id: str) -> gateway_pb2.DeclineResponse:
        """Refuse ``approval_id``."""
        return await self.stub.Decline(
            gateway_pb2.DeclineRequest(approval_id=approval_id),
            metadata=self.metadata,
            timeout=10,
        )

    async def pending(self) -> list[str]:
        """The ids of the user's pending approvals."""
        listed = await self.stub.ListApprovals(
            gateway_pb2.ListApprovalsRequest(), metadata=self.metadata, timeout=10
        )
        return [a.approval_id for a in listed.approvals]


async def by_hand(channel: grpc.aio.Channel, phone: escrow.Phone) -> ByHand:
    """``phone``'s calls by hand over ``channel`` (the gateway's public listener), in a session
    of their own opened with the phone's device key."""
    stub = gateway_pb2_grpc.GatewayServiceStub(channel)
    key_id = phone.keystore.key_id
    started = await stub.StartSession(gateway_pb2.StartSessionRequest(key_id=key_id), timeout=10)
    transcript = deviceauth.gateway_session_transcript(bytes.fromhex(key_id), started.challenge)
    finished = await stub.FinishSession(
        gateway_pb2.FinishSessionRequest(
            key_id=key_id,
            challenge=started.challenge,
            device_signature=deviceauth.sign(phone.keystore.device_key, transcript),
        ),
        timeout=10,
    )
    return ByHand(stub, finished.session_token, phone.signing)
