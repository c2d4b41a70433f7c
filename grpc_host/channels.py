"""Client channels: mutual TLS for internal calls, server-authenticated TLS for the public edge."""

from __future__ import annotations

import grpc

from grpc_host import devpki
from grpc_host.serve import server_options


def mutual_tls(
    address: str,
    credential: devpki.Credential,
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
    options = [
        *server_options(max_message_bytes),
        ("grpc.ssl_target_name_override", server_identity),
    ]
    return grpc.aio.secure_channel(address, creds, options=options)


def server_tls(
    address: str, ca_pem: bytes, max_message_bytes: int = 4 * 1024 * 1024
) -> grpc.aio.Channel:
    """A channel that authenticates the server against ``ca_pem`` and presents no certificate."""
    creds = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    return grpc.aio.secure_channel(address, creds, options=server_options(max_message_bytes))
