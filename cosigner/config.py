"""Configuration of the cosigner (section ``[cosigner]``, env ``MOBILESIGN_COSIGNER_*``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mobilesign.hosting import config


@dataclass(frozen=True)
class CosignerConfig:
    """Settings of the cosigner."""

    #: Internal listener (mutual TLS): gateway and administrators.
    listen: str = "127.0.0.1:50052"
    #: Public listener (server TLS): phones.
    public_listen: str = "127.0.0.1:9443"
    hsm_proxy: str = "127.0.0.1:50051"
    #: The RA: the key that verifies enrolment tickets, certificate status, certification.
    ra: str = "127.0.0.1:50054"
    #: Seconds the cosigner waits for each protocol step before ending the stream.
    step_timeout_seconds: float = 30.0
    #: Seconds a new stream (never more than the step timeout), or a unary call on the public
    #: listener, may wait for its first message; then DEADLINE_EXCEEDED FIRST_MESSAGE_TIMEOUT.
    first_message_timeout_seconds: float = 5.0
    #: Consecutive wrong PIN proofs after which a key is locked until an operator unlocks it.
    max_pin_attempts: int = 5
    max_message_bytes: int = 128 * 1024
    #: Calls in flight on the internal listener.
    max_concurrent_rpcs: int = 1024
    #: Calls in flight on the public listener: its own server, so a flood there leaves the
    #: internal listener's capacity alone.
    public_max_concurrent_rpcs: int = 1024
    #: Calls in flight from one address (IPv4, or IPv6 /64) on the public listener; beyond it
    #: RESOURCE_EXHAUSTED TOO_MANY_RPCS_FROM_PEER.
    public_max_rpcs_per_peer: int = 32
    #: Where the service keeps its state: empty for SQLite files under the state directory, or
    #: a ``postgresql://`` URL for a database of its own (each store a schema in it; replicas
    #: of the service may share it).
    database: str = ""
    #: Prometheus metrics over plain HTTP (``HOST:PORT``); empty: none. Keep it on loopback or
    #: a monitoring network: it is not authenticated.
    metrics_listen: str = ""
    #: A plaintext gRPC health listener (``HOST:PORT``, health service only) for probes that
    #: present no client certificate, such as Kubernetes' ``grpc`` probe; empty: none.
    health_listen: str = ""
    grace_seconds: float = 5.0
    log_level: str = "info"


def load(document: dict[str, Any]) -> CosignerConfig:
    """Read ``[cosigner]`` from the configuration document and the environment."""
    return config.load_section(CosignerConfig, "cosigner", document)
