"""Configuration of the gateway (section ``[gateway]``, env ``MOBILESIGN_GATEWAY_*``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mobilesign.hosting import config


@dataclass(frozen=True)
class GatewayConfig:
    """Settings of the signing gateway."""

    #: Internal listener (mutual TLS): administrators and internal services.
    listen: str = "127.0.0.1:50053"
    #: Public listener (server TLS): phones.
    public_listen: str = "127.0.0.1:8443"
    hsm_proxy: str = "127.0.0.1:50051"
    cosigner: str = "127.0.0.1:50052"
    ra: str = "127.0.0.1:50054"
    max_message_bytes: int = 256 * 1024
    #: Calls in flight on the internal listener.
    max_concurrent_rpcs: int = 1024
    #: Calls in flight on the public listener: its own server, so a flood there leaves the
    #: internal listener's capacity alone.
    public_max_concurrent_rpcs: int = 1024
    #: Calls in flight from one address (IPv4, or IPv6 /64) on the public listener; beyond it
    #: RESOURCE_EXHAUSTED TOO_MANY_RPCS_FROM_PEER.
    public_max_rpcs_per_peer: int = 32
    #: Seconds a call on the public listener may wait for its request message; then
    #: DEADLINE_EXCEEDED FIRST_MESSAGE_TIMEOUT.
    first_message_timeout_seconds: float = 5.0
    #: The CSC API v2 endpoint (HTTPS, ``HOST:PORT``) for registered applications; empty:
    #: none. It presents the public listener's certificate.
    csc_listen: str = ""
    #: Seconds ``credentials/authorize`` waits for the user's answer before it answers 202
    #: with a ``responseID`` to poll (``credentials/authorizeCheck``).
    csc_wait_seconds: float = 30.0
    #: Seconds the user has to approve a request on the phone.
    csc_approval_seconds: int = 120
    #: Longest lifetime of a SAD, in seconds (never beyond its records' lifetime).
    csc_sad_seconds: int = 60
    #: Lifetime of an OAuth 2.0 access token, in seconds.
    csc_token_seconds: int = 3600
    #: Most hashes one authorisation may name (``multisign``).
    csc_max_signatures: int = 16
    #: Largest CSC request body, in bytes.
    csc_max_request_bytes: int = 64 * 1024
    #: CSC requests in flight from one address (IPv4, or IPv6 /64); beyond it HTTP 429
    #: TOO_MANY_RPCS_FROM_PEER. Behind a balancer every request comes from its address.
    csc_max_requests_per_peer: int = 32
    #: Seconds a login challenge (StartSession) may be answered (FinishSession).
    session_challenge_seconds: int = 60
    #: File of the key that authenticates the records this gateway prepares (32 random bytes,
    #: made at the first start); empty means ``<state>/gateway/record.key``. Gateways that
    #: share a database share this file.
    record_key_file: str = ""
    #: File of the key that authenticates the login challenges this gateway issues (32 random
    #: bytes, made at the first start); empty means ``<state>/gateway/challenge.key``. Gateways
    #: that share a database share this file, so that a phone may answer at any of them.
    challenge_key_file: str = ""
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


def load(document: dict[str, Any]) -> GatewayConfig:
    """Read ``[gateway]`` from the configuration document and the environment."""
    return config.load_section(GatewayConfig, "gateway", document)
