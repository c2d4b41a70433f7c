"""What the cosigner asks the gateway (mutual TLS, server identity ``gateway``): the public key
that verifies enrolment tickets (fetched once and kept) and whether a key's personal
certificate was revoked (asked at the start of every signing session; fails closed)."""

from __future__ import annotations

import asyncio

import grpc
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cosigner.errors import CosignerError
from mobilesign.errors import Kind
from mobilesign.v1 import gateway_pb2, gateway_pb2_grpc


def _unreachable(what: str) -> CosignerError:
    return CosignerError(
        Kind.UNAVAILABLE, "GATEWAY_UNAVAILABLE", f"the gateway cannot be reached {what}"
    )


class Gateway:
    """The cosigner's client of the gateway's internal AdminService."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = gateway_pb2_grpc.AdminServiceStub(channel)
        self._ticket_key: ec.EllipticCurvePublicKey | None = None
        self._lock = asyncio.Lock()

    async def ticket_key(self) -> ec.EllipticCurvePublicKey:
        """The ticket verification key."""
        async with self._lock:
            if self._ticket_key is None:
                try:
                    reply = await self._stub.GetTicketKey(
                        gateway_pb2.GetTicketKeyRequest(), timeout=10
                    )
                except grpc.aio.AioRpcError:
                    raise _unreachable("to check the ticket") from None
                key = serialization.load_der_public_key(reply.public_key_spki)
                if not isinstance(key, ec.EllipticCurvePublicKey):
                    raise CosignerError(
                        Kind.INTERNAL, "TICKET_KEY_INVALID", "unexpected ticket key"
                    )
                self._ticket_key = key
            return self._ticket_key

    async def key_revoked(self, key_id: str) -> bool:
        """True when the personal certificate of ``key_id`` has been revoked."""
        try:
            reply = await self._stub.GetKeyStatus(
                gateway_pb2.GetKeyStatusRequest(key_id=key_id), timeout=10
            )
        except grpc.aio.AioRpcError:
            raise _unreachable("to check the key's certificate") from None
        return reply.revoked
