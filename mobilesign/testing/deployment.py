"""Starts mobilesign services as separate processes on free loopback ports, with mutual TLS.

Ports are chosen once per deployment (free loopback ports), so every service knows the others'
addresses whatever the start order, and a restarted service comes back on the same ports. Each
service reports the addresses it bound in ``<state>/run/<name>.json``; the harness waits for that
file and for health SERVING.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mobilesign.hosting import devpki
from mobilesign.rpc import channels
from mobilesign.testing.postgres import PostgresServer

ROOT = Path(__file__).resolve().parents[2]
#: Order in which services start (and, reversed, stop): callees before callers.
START_ORDER = ("hsm-proxy", "ra", "gateway", "cosigner")

#: Module to run and listeners of each service.
SERVICES: dict[str, tuple[str, tuple[str, ...]]] = {
    "hsm-proxy": ("hsm_proxy", ("internal",)),
    "ra": ("ra", ("internal",)),
    "cosigner": ("cosigner", ("internal", "public")),
    "gateway": ("server", ("internal", "public", "csc")),
}
_ENV_SECTION = {"hsm-proxy": "HSM_PROXY", "ra": "RA", "cosigner": "COSIGNER", "gateway": "GATEWAY"}


#: The ports in each service's built-in configuration (``make run`` uses them).
DEFAULT_PORTS = {
    ("hsm-proxy", "internal"): 50051,
    ("ra", "internal"): 50054,
    ("cosigner", "internal"): 50052,
    ("cosigner", "public"): 9443,
    ("gateway", "internal"): 50053,
    ("gateway", "public"): 8443,
}
#: The configuration key of each listener (``MOBILESIGN_<SECTION>_<KEY>``).
_LISTEN_KEYS = {"internal": "LISTEN", "public": "PUBLIC_LISTEN", "csc": "CSC_LISTEN"}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Service:
    """A running (or stopped) service process and the addresses it bound."""

    name: str
    process: subprocess.Popen[bytes]
    addresses: dict[str, str]
    log: Path


@dataclass
class Deployment:
    """The services of one test deployment, all under one state directory.

    With ``postgres``, each service keeps its state in a database and role of its own on that
    server (``MOBILESIGN_<SERVICE>_DATABASE``, given to that service's processes only).
    :meth:`add_replica` adds a second process of a service (its own ports, the same state
    directory, database and key files).
    """

    state_dir: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    services: dict[str, Service] = field(default_factory=dict)
    ports: dict[tuple[str, str], int] = field(default_factory=dict)
    postgres: PostgresServer | None = None
    #: Each service's connection string, when on PostgreSQL.
    databases: dict[str, str] = field(default_factory=dict)
    #: Replica name -> (service, its own environment on top of the deployment's).
    replicas: dict[str, tuple[str, dict[str, str]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Several deployments may share one server: their roles and databases are their own.
        tag = secrets.token_hex(3)
        for name, (_, listeners) in SERVICES.items():
            for listener in listeners:
                self.ports.setdefault((name, listener), _free_port())
            if self.postgres is not None and name not in self.databases:
                role = f"mobilesign_{tag}_{name.replace('-', '_')}"
                self.databases[name] = self.postgres.create_service_database(role)

    def service_of(self, name: str) -> str:
        """The service a process name (a service, or a replica of one) runs."""
        return self.replicas[name][0] if name in self.replicas else name

    def add_replica(self, replica: str, service: str, env: dict[str, str] | None = None) -> None:
        """Declare ``replica``, a second process of ``service`` on ports of its own; ``env``
        overrides the deployment's environment for it (e.g. which cosigner it calls)."""
        self.replicas[replica] = (service, dict(env or {}))
        for listener in SERVICES[service][1]:
            self.ports.setdefault((replica, listener), _free_port())

    def _env(self, name: str) -> dict[str, str]:
        env = dict(os.environ)
        env["MOBILESIGN_STATE_DIR"] = str(self.state_dir)
        env["PYTHONPATH"] = str(ROOT)
        service = self.service_of(name)
        for listener in SERVICES[service][1]:
            env[f"MOBILESIGN_{_ENV_SECTION[service]}_{_LISTEN_KEYS[listener]}"] = (
                f"127.0.0.1:{self.ports[(name, listener)]}"
            )
        if service in self.databases:
            env[f"MOBILESIGN_{_ENV_SECTION[service]}_DATABASE"] = self.databases[service]
        if name != service:
            env["MOBILESIGN_INSTANCE"] = name
        internal = {name: f"127.0.0.1:{self.ports[(name, 'internal')]}" for name in SERVICES}
        env["MOBILESIGN_RA_HSM_PROXY"] = internal["hsm-proxy"]
        env["MOBILESIGN_COSIGNER_HSM_PROXY"] = internal["hsm-proxy"]
        env["MOBILESIGN_COSIGNER_RA"] = internal["ra"]
        env["MOBILESIGN_GATEWAY_HSM_PROXY"] = internal["hsm-proxy"]
        env["MOBILESIGN_GATEWAY_COSIGNER"] = internal["cosigner"]
        env["MOBILESIGN_GATEWAY_RA"] = internal["ra"]
        env.update(self.extra_env)
        env.update(self.replicas.get(name, ("", {}))[1])
        return env

    def start(self, name: str, timeout: float = 30.0) -> Service:
        """Start ``name`` (a service or a replica, again) and wait until it reports SERVING."""
        module = SERVICES[self.service_of(name)][0]
        run_file = self.state_dir / "run" / f"{name}.json"
        run_file.unlink(missing_ok=True)
        log = self.state_dir / f"{name}.log"
        with open(log, "ab") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", module],
                cwd=ROOT,
                env=self._env(name),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while not run_file.exists():
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}: {log.read_text()}")
            if time.monotonic() > deadline:
                process.kill()
                raise TimeoutError(f"{name} did not start: {log.read_text()}")
            time.sleep(0.05)
        addresses = json.loads(run_file.read_text())["listeners"]
        service = Service(name, process, addresses, log)
        self.services[name] = service
        self._wait_serving(name, deadline)
        return service

    def _wait_serving(self, name: str, deadline: float) -> None:
        # Synchronous gRPC: start() is also called from inside async tests.
        cert, key, ca = self.credential("admin").read()
        creds = grpc.ssl_channel_credentials(ca, key, cert)
        options = [("grpc.ssl_target_name_override", self.service_of(name))]
        with grpc.secure_channel(self.address(name), creds, options=options) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    if time.monotonic() > deadline:
                        raise
                time.sleep(0.05)

    def address(self, name: str, listener: str = "internal") -> str:
        """The bound address of one listener of a service."""
        return self.services[name].addresses[listener]

    def credential(self, identity: str) -> channels.Credential:
        """A client credential from the deployment's development PKI."""
        return devpki.credential(self.state_dir, identity)

    def channel(self, name: str, identity: str = "admin") -> grpc.aio.Channel:
        """A mutual-TLS channel to the internal listener of ``name``, as ``identity``."""
        return channels.mutual_tls(
            self.address(name), self.credential(identity), self.service_of(name)
        )

    def public_channel(self, name: str) -> grpc.aio.Channel:
        """A server-authenticated TLS channel to the public listener of ``name``."""
        ca = (devpki.ensure(self.state_dir) / "ca.pem").read_bytes()
        return channels.server_tls(self.address(name, "public"), ca)

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Signal ``name`` and wait for it to exit; return its exit status."""
        process = self.services[name].process
        if process.poll() is None:
            process.send_signal(sig)
        return process.wait(timeout)

    def start_all(self) -> None:
        """Start every service, then every replica."""
        for name in (*START_ORDER, *self.replicas):
            self.start(name)

    def stop_all(self) -> None:
        """Stop every service and replica, the callers before the HSM proxy."""
        order = [*START_ORDER]
        for replica, (service, _) in self.replicas.items():
            order.insert(order.index(service) + 1, replica)
        for name in reversed(order):
            if name in self.services and self.services[name].process.poll() is None:
                try:
                    self.stop(name)
                except subprocess.TimeoutExpired:
                    self.services[name].process.kill()
