"""The public key that verifies enrolment tickets, fetched from the gateway once and kept."""

from __future__ import annotations

import asyncio

import grpc
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from grpc_host.errors import ServiceError
from mobilesign.v1 import gateway_pb2, gateway_pb2_grpc


class TicketKey:
    """Asks the gateway (mutual TLS, server identity ``gateway``) for its ticket key."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = gateway_pb2_grpc.AdminServiceStub(channel)
        self._key: ec.EllipticCurvePublicKey | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> ec.EllipticCurvePublicKey:
        """The ticket verification key."""
        async with self._lock:
            if self._key is None:
                try:
                    reply = await self._stub.GetTicketKey(
                        gateway_pb2.GetTicketKeyRequest(), timeout=10
                    )
                except grpc.aio.AioRpcError:
                    raise ServiceError(
                        grpc.StatusCode.UNAVAILABLE,
                        "GATEWAY_UNAVAILABLE",
                        "the gateway cannot be reached to check the ticket",
                    ) from None
                key = serialization.load_der_public_key(reply.public_key_spki)
                if not isinstance(key, ec.EllipticCurvePublicKey):
                    raise ServiceError(
                        grpc.StatusCode.INTERNAL, "TICKET_KEY_INVALID", "unexpected ticket key"
                    )
                self._key = key
            return self._key
