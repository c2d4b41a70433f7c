"""Every service as a process: health, reflection, SIGTERM within the grace period, logs, and
internal clients that accept only the server they meant to reach."""

from __future__ import annotations

import asyncio
import json
import signal
import ssl
import time
from collections.abc import Iterator

import grpc
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from mobilesign.rpc import channels
from mobilesign.testing import Deployment
from mobilesign.testing.deployment import START_ORDER
from mobilesign.v1 import hsm_pb2, hsm_pb2_grpc

pytestmark = pytest.mark.integration

#: The mobilesign services each process serves (the RA's administrator interface is the RA's
#: alone: the gateway no longer serves it).
_SERVICES = {
    "hsm-proxy": ("mobilesign.v1.HsmService",),
    "ra": ("mobilesign.v1.AdminService", "mobilesign.v1.RegistrationService"),
    "cosigner": ("mobilesign.v1.CosignerService",),
    "gateway": ("mobilesign.v1.GatewayService", "mobilesign.v1.CscAdminService"),
}


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """All four services, with a short grace period."""
    deployment = Deployment(
        tmp_path_factory.mktemp("lifecycle"),
        extra_env={
            f"MOBILESIGN_{section}_GRACE_SECONDS": "2"
            for section in ("HSM_PROXY", "RA", "COSIGNER", "GATEWAY")
        },
    )
    deployment.start_all()
    yield deployment
    deployment.stop_all()


@pytest.mark.parametrize("name", START_ORDER)
async def test_health_and_reflection(deployment: Deployment, name: str) -> None:
    async with deployment.channel(name) as channel:
        for service in _SERVICES[name]:
            health = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service)
            )
            assert health.status == health_pb2.HealthCheckResponse.SERVING
        call = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo()
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        reply = await call.read()
        await call.done_writing()
        listed = {s.name for s in reply.list_services_response.service}
        assert {s for s in listed if s.startswith("mobilesign.")} == set(_SERVICES[name])
        assert "grpc.health.v1.Health" in listed


async def test_clients_refuse_a_server_with_another_identity(deployment: Deployment) -> None:
    # The cosigner's certificate is valid for 127.0.0.1, but it is not the HSM proxy.
    credential = deployment.credential("gateway")
    async with channels.mutual_tls(
        deployment.address("cosigner"), credential, "hsm-proxy"
    ) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await hsm_pb2_grpc.HsmServiceStub(channel).ListKeys(
                hsm_pb2.ListKeysRequest(), timeout=5
            )
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_logs_are_json_with_request_ids(deployment: Deployment) -> None:
    async with deployment.channel("hsm-proxy") as channel:
        call = hsm_pb2_grpc.HsmServiceStub(channel).ListKeys(
            hsm_pb2.ListKeysRequest(), metadata=(("x-request-id", "trace-me-123"),)
        )
        await call
        assert ("x-request-id", "trace-me-123") in tuple(await call.initial_metadata())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = deployment.services["hsm-proxy"].log.read_text().splitlines()
        entries = [json.loads(line) for line in lines if line.startswith("{")]
        if any(e.get("request_id") == "trace-me-123" for e in entries):
            break
        await asyncio.sleep(0.1)
    entry = next(e for e in entries if e.get("request_id") == "trace-me-123")
    assert entry["method"] == "ListKeys"
    assert entry["caller"] == "admin"
    assert entry["code"] == "OK"


@pytest.mark.parametrize("name", ["cosigner", "gateway"])
def test_public_edge_has_its_own_server_only_certificate(deployment: Deployment, name: str) -> None:
    host, port = deployment.address(name, "public").rsplit(":", 1)
    pem = ssl.get_server_certificate((host, int(port)))
    certificate = x509.load_pem_x509_certificate(pem.encode())
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert [n.value for n in names] == [f"{name}-public"]
    usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.SERVER_AUTH]


def test_sigterm_stops_each_service_within_its_grace_period(deployment: Deployment) -> None:
    for name in reversed(START_ORDER):
        # Grace period (2 s) plus process exit; wait() raises TimeoutExpired past it.
        assert deployment.stop(name, signal.SIGTERM, timeout=5) == 0
        log = deployment.services[name].log.read_text()
        assert '"msg": "stopping"' in log
        assert '"msg": "stopped"' in log
        assert not (deployment.state_dir / "run" / f"{name}.json").exists()
