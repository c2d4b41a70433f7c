"""Client channels: mutual TLS for internal calls, server-authenticated TLS for the public edge."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc


@dataclass(frozen=True)
class Credential:
    """Paths of one identity's certificate and private key, and of the CA that issued it."""

    name: str
    cert: Path
    key: Path
    ca: Path

    def read(self) -> tuple[bytes, bytes, bytes]:
        """Return (certificate chain PEM, private key PEM, CA certificate PEM)."""
        return self.cert.read_bytes(), self.key.read_bytes(), self.ca.read_bytes()


def options(max_message_bytes: int) -> list[tuple[str, int]]:
    """Channel options (client and server alike) bounding message sizes and keeping idle
    connections healthy."""
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.http2.max_pings_without_data", 0),
    ]


#: Reconnection after a peer restarts: gRPC's defaults back off from 1 s up to 120 s, so a
#: caller kept answering UNAVAILABLE for seconds after its callee was serving again. Peers are
#: on loopback or a local network, so a retry every quarter second at most costs nothing. The
#: minimum is gRPC's connection timeout too: a TLS handshake with a busy peer may take longer
#: than the first back-off.
RECONNECT_OPTIONS: list[tuple[str, int]] = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 2_000),
    ("grpc.max_reconnect_backoff_ms", 250),
]


def mutual_tls(
    address: str,
    credential: Credential,
    server_identity: str,
    max_message_bytes: int = 4 * 1024 * 1024,
) -> grpc.aio.Channel:
    """A channel presenting ``credential``, trusting only the internal CA, and accepting only a
    server whose certificate names ``server_identity`` (so that one internal service cannot pose
    as another: every certificate of the internal CA is otherwise valid for 127.0.0.1)."""
    cert, key, ca = credential.read()
    creds = grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=cert
    )
    channel_options = [
        *options(max_message_bytes),
        *RECONNECT_OPTIONS,
        ("grpc.ssl_target_name_override", server_identity),
    ]
    return grpc.aio.secure_channel(address, creds, options=channel_options)


def server_tls(
    address: str, ca_pem: bytes, max_message_bytes: int = 4 * 1024 * 1024
) -> grpc.aio.Channel:
    """A channel that authenticates the server against ``ca_pem`` and presents no certificate."""
    creds = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    channel_options = [*options(max_message_bytes), *RECONNECT_OPTIONS]
    return grpc.aio.secure_channel(address, creds, options=channel_options)
