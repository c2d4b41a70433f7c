"""One request id, set by the phone on its calls to the gateway, in the log of every service a
use of an organisation key crosses: the gateway forwards it to the HSM proxy and the cosigner
(and the RA when it asks it) without any call site passing it on."""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

import client
from mobilesign.hosting import devpki
from mobilesign.testing import Deployment
from mobilesign.v1 import gateway_pb2
from tests.integration import escrow

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """All four services."""
    deployment = Deployment(tmp_path_factory.mktemp("request-ids"))
    deployment.start_all()
    yield deployment
    deployment.stop_all()


class _WithRequestId(grpc.aio.UnaryUnaryClientInterceptor):
    """What a phone SDK does: one id of its choosing on each call."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        metadata = [*(details.metadata or ()), ("x-request-id", self.request_id)]
        return await continuation(details._replace(metadata=metadata), request)


def _rpc_lines(deployment: Deployment, name: str, request_id: str) -> list[dict[str, Any]]:
    lines = deployment.services[name].log.read_text().splitlines()
    entries = [json.loads(line) for line in lines if line.startswith("{")]
    return [e for e in entries if e.get("request_id") == request_id and e.get("msg") == "rpc"]


async def test_a_use_is_followed_by_one_id_through_every_service(deployment: Deployment) -> None:
    organisation = await escrow.organisation(deployment, "traced")
    phone = await escrow.phone(deployment, organisation, "traced")
    request_id = f"phone-{secrets.token_hex(6)}"
    ca = (devpki.ensure(deployment.state_dir) / "ca.pem").read_bytes()
    channel = grpc.aio.secure_channel(
        deployment.address("gateway", "public"),
        grpc.ssl_channel_credentials(root_certificates=ca),
        interceptors=[_WithRequestId(request_id)],
    )
    try:
        grant = await escrow.grant(
            deployment, phone.user_id, organisation.seal, [gateway_pb2.OPERATION_SIGN_DIGEST]
        )
        gateway = client.GatewaySession(channel, phone.keystore)
        await gateway.login()
        await gateway.use_key(
            phone.signing,
            grant_id=grant.grant_id,
            operation=gateway_pb2.OPERATION_SIGN_DIGEST,
            data=hashlib.sha256(b"followed").digest(),
            purpose="tests",
            trust=organisation.trust,
        )
    finally:
        await channel.close()
        await phone.close()

    gateway_methods = {e["method"] for e in _rpc_lines(deployment, "gateway", request_id)}
    assert {"PrepareOperation", "ExecuteOperation"} <= gateway_methods
    # The gateway's own calls: the key used next to the record, the checkpoint witnessed.
    hsm_calls = {
        (e["method"], e["caller"]) for e in _rpc_lines(deployment, "hsm-proxy", request_id)
    }
    assert ("SignDigest", "gateway") in hsm_calls
    # The phone never sent this id to the cosigner: the gateway did, asking for the
    # attestation of a key it had not seen before.
    cosigner_calls = {
        (e["method"], e["caller"]) for e in _rpc_lines(deployment, "cosigner", request_id)
    }
    assert ("GetKey", "gateway") in cosigner_calls
    # Whatever the RA was asked on the way carries it too, and nothing else does.
    for entry in _rpc_lines(deployment, "ra", request_id):
        assert entry["caller"] in ("gateway", "cosigner"), entry


def _spans(text: str) -> list[dict[str, Any]]:
    """The spans the console exporter wrote (indented JSON objects among the log lines)."""
    decoder = json.JSONDecoder()
    spans = []
    index = text.find("{")
    while index != -1:
        try:
            value, end = decoder.raw_decode(text, index)
        except ValueError:
            end = index + 1
        else:
            if isinstance(value, dict) and "context" in value and "name" in value:
                spans.append(value)
        index = text.find("{", end)
    return spans


def test_spans_follow_a_use_across_services(tmp_path_factory: pytest.TempPathFactory) -> None:
    deployment = Deployment(
        tmp_path_factory.mktemp("traced"),
        extra_env={"OTEL_TRACES_EXPORTER": "console", "OTEL_BSP_SCHEDULE_DELAY": "200"},
    )
    deployment.start_all()
    try:

        async def use() -> None:
            organisation = await escrow.organisation(deployment, "spans")
            phone = await escrow.phone(deployment, organisation, "spans")
            try:
                grant = await escrow.grant(
                    deployment,
                    phone.user_id,
                    organisation.seal,
                    [gateway_pb2.OPERATION_SIGN_DIGEST],
                )
                await phone.gateway.use_key(
                    phone.signing,
                    grant_id=grant.grant_id,
                    operation=gateway_pb2.OPERATION_SIGN_DIGEST,
                    data=hashlib.sha256(b"spanned").digest(),
                    purpose="tests",
                    trust=organisation.trust,
                )
            finally:
                await phone.close()

        asyncio.run(use())
    finally:
        # Stopping flushes every process's spans.
        deployment.stop_all()
    spans = {
        name: _spans(deployment.services[name].log.read_text()) for name in ("gateway", "hsm-proxy")
    }
    execute = [
        s for s in spans["gateway"] if s["name"] == "mobilesign.v1.GatewayService/ExecuteOperation"
    ]
    assert len(execute) == 1
    trace_id = execute[0]["context"]["trace_id"]
    in_trace = {
        name: [s for s in found if s["context"]["trace_id"] == trace_id]
        for name, found in spans.items()
    }
    names = {name: {s["name"] for s in found} for name, found in in_trace.items()}
    # The gateway's call, the proxy's serving of it (its child, through traceparent), the
    # token operation and the database transactions on either side.
    assert "mobilesign.v1.HsmService/SignDigest" in names["gateway"]
    assert {"mobilesign.v1.HsmService/SignDigest", "hsm.sign", "db.run"} <= names["hsm-proxy"]
    assert "db.run" in names["gateway"]
    client_span = next(
        s
        for s in in_trace["gateway"]
        if s["name"] == "mobilesign.v1.HsmService/SignDigest" and s["kind"] == "SpanKind.CLIENT"
    )
    server_span = next(
        s for s in in_trace["hsm-proxy"] if s["name"] == "mobilesign.v1.HsmService/SignDigest"
    )
    assert server_span["parent_id"] == client_span["context"]["span_id"]
