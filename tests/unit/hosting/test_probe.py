"""The health probe against a real mutual-TLS server on a free port: SERVING exits 0, any other
answer or failure exits 1 with one line and no traceback, a usage error exits 2."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from mobilesign.hosting import devpki, probe
from mobilesign.rpc import channels


class _Server:
    """A health server on 127.0.0.1 that requires a client certificate of the internal CA."""

    def __init__(self, credential: channels.Credential) -> None:
        cert, key, ca = credential.read()
        self.health = health.HealthServicer()
        # Synchronous server on its own threads: the probe runs its own event loop.
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        creds = grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=ca, require_client_auth=True
        )
        self.port = self._server.add_secure_port("127.0.0.1:0", creds)
        self._server.start()

    def stop(self) -> None:
        self._server.stop(None)


@pytest.fixture
def state(tmp_path: Path) -> Path:
    devpki.ensure(tmp_path)
    return tmp_path


@pytest.fixture
def server(state: Path) -> Iterator[_Server]:
    running = _Server(devpki.credential(state, "gateway"))
    yield running
    running.stop()


def _args(state: Path, address: str, *extra: str, identity: str = "admin") -> list[str]:
    pki = state / "pki"
    return [
        "--address",
        address,
        "--cert",
        str(pki / f"{identity}.pem"),
        "--key",
        str(pki / f"{identity}.key"),
        "--ca",
        str(pki / "ca.pem"),
        "--timeout",
        "3",
        *extra,
    ]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_serving_exits_0(state: Path, server: _Server, capsys: pytest.CaptureFixture[str]) -> None:
    server.health.set("", health_pb2.HealthCheckResponse.SERVING)
    argv = _args(state, f"127.0.0.1:{server.port}", "--server-name", "gateway")
    assert probe.main(argv) == 0
    assert capsys.readouterr().out == "SERVING\n"


def test_a_service_not_serving_exits_1(
    state: Path, server: _Server, capsys: pytest.CaptureFixture[str]
) -> None:
    server.health.set("", health_pb2.HealthCheckResponse.SERVING)
    server.health.set("mobilesign.v1.GatewayService", health_pb2.HealthCheckResponse.NOT_SERVING)
    address = f"127.0.0.1:{server.port}"
    argv = _args(state, address, "--service", "mobilesign.v1.GatewayService")
    assert probe.main(argv) == 1
    assert capsys.readouterr().out == "NOT_SERVING\n"


def test_a_server_with_another_name_is_refused(
    state: Path, server: _Server, capsys: pytest.CaptureFixture[str]
) -> None:
    server.health.set("", health_pb2.HealthCheckResponse.SERVING)
    argv = _args(state, f"127.0.0.1:{server.port}", "--server-name", "hsm-proxy")
    assert probe.main(argv) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: UNAVAILABLE: ")
    assert captured.err.count("\n") == 1


def test_an_unreachable_address_exits_1_with_one_line(
    state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert probe.main(_args(state, f"127.0.0.1:{_free_port()}")) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: UNAVAILABLE: ")
    assert captured.err.count("\n") == 1


def test_a_missing_certificate_exits_1_with_one_line_and_no_traceback(
    state: Path, server: _Server
) -> None:
    server.health.set("", health_pb2.HealthCheckResponse.SERVING)
    argv = _args(state, f"127.0.0.1:{server.port}")
    argv[argv.index("--cert") + 1] = str(state / "pki" / "missing.pem")
    # As the orchestrator runs it: the real command line, its exit status and all it prints.
    result = subprocess.run(
        [sys.executable, "-m", "mobilesign.hosting.probe", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("error: cannot read credential: ")
    assert "missing.pem" in result.stderr
    assert result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--address", "127.0.0.1:1"],
        ["--address", "127.0.0.1:1", "--cert", "c", "--key", "k", "--ca", "a", "--timeout", "0"],
    ],
)
def test_a_usage_error_exits_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        probe.main(argv)
    assert info.value.code == 2
