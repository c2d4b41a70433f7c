"""Health that follows the peers: with the HSM proxy stopped, the gateway, the cosigner and the RA
report their services NOT_SERVING (the whole server stays SERVING: the process is alive), and
SERVING again once it is back; the plaintext health port answers a caller without a
certificate, with the same statuses, and serves nothing else."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mobilesign.testing import Deployment
from mobilesign.testing.deployment import START_ORDER
from mobilesign.v1 import hsm_pb2, hsm_pb2_grpc

pytestmark = pytest.mark.integration

_SECTIONS = ("HSM_PROXY", "RA", "COSIGNER", "GATEWAY")
_SERVICES = {
    "hsm-proxy": ("mobilesign.v1.HsmService",),
    "ra": ("mobilesign.v1.AdminService", "mobilesign.v1.RegistrationService"),
    "cosigner": ("mobilesign.v1.CosignerService",),
    "gateway": ("mobilesign.v1.GatewayService",),
}
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """All four services, each with a plaintext health port (port 0: the run file says)."""
    deployment = Deployment(
        tmp_path_factory.mktemp("health"),
        extra_env={f"MOBILESIGN_{s}_HEALTH_LISTEN": "127.0.0.1:0" for s in _SECTIONS},
    )
    deployment.start_all()
    yield deployment
    deployment.stop_all()


def _status(deployment: Deployment, name: str, service: str) -> int:
    # Over the plaintext port: no certificate, as Kubernetes' grpc probe asks.
    with grpc.insecure_channel(deployment.address(name, "health")) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
    return int(reply.status)


def _until(deployment: Deployment, callers: list[str], wanted: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    pending = {(name, s) for name in callers for s in _SERVICES[name]}
    while pending:
        pending = {(n, s) for n, s in pending if _status(deployment, n, s) != wanted}
        if pending and time.monotonic() > deadline:
            raise AssertionError(f"still not {wanted}: {sorted(pending)}")
        time.sleep(0.2)


def test_the_plaintext_port_tells_what_the_mutual_tls_port_does(deployment: Deployment) -> None:
    for name in START_ORDER:
        assert _status(deployment, name, "") == _SERVING
        for service in _SERVICES[name]:
            assert _status(deployment, name, service) == _SERVING


def test_the_plaintext_port_serves_nothing_but_health(deployment: Deployment) -> None:
    with (
        grpc.insecure_channel(deployment.address("hsm-proxy", "health")) as channel,
        pytest.raises(grpc.RpcError) as info,
    ):
        hsm_pb2_grpc.HsmServiceStub(channel).ListKeys(hsm_pb2.ListKeysRequest(), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    with (
        grpc.insecure_channel(deployment.address("gateway", "health")) as channel,
        pytest.raises(grpc.RpcError) as info,
    ):
        health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5
        )
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_callers_go_not_serving_while_the_hsm_proxy_is_down(deployment: Deployment) -> None:
    callers = ["gateway", "cosigner", "ra"]
    deployment.stop("hsm-proxy")
    try:
        _until(deployment, callers, _NOT_SERVING)
        # Alive all the same: a liveness probe must not restart a caller for its callee.
        for name in callers:
            assert _status(deployment, name, "") == _SERVING
        # The mutual-TLS listener tells the same (one health servicer for every listener).
        cert, key, ca = deployment.credential("admin").read()
        creds = grpc.ssl_channel_credentials(ca, key, cert)
        options = [("grpc.ssl_target_name_override", "gateway")]
        with grpc.secure_channel(deployment.address("gateway"), creds, options=options) as ch:
            reply = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service="mobilesign.v1.GatewayService"), timeout=5
            )
        assert reply.status == _NOT_SERVING
    finally:
        deployment.start("hsm-proxy")
    _until(deployment, callers, _SERVING)
