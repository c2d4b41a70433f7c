"""The gateway's client of the cosigner's internal listener (mutual TLS, identity ``gateway``)."""

from __future__ import annotations

import grpc

from mobilesign.errors import Kind
from mobilesign.v1 import cosigner_pb2, cosigner_pb2_grpc
from server.errors import GatewayError


class CosignerClient:
    """Asks the cosigner about enrolled keys."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = cosigner_pb2_grpc.CosignerServiceStub(channel)

    async def key(self, key_id: str) -> cosigner_pb2.GetKeyResponse | None:
        """The cosigner's record of a key it holds a share of, or None when it holds none."""
        try:
            return await self._stub.GetKey(cosigner_pb2.GetKeyRequest(key_id=key_id), timeout=10)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise GatewayError(
                Kind.UNAVAILABLE,
                "COSIGNER_UNAVAILABLE",
                "the cosigner cannot be reached to check the key",
            ) from None
