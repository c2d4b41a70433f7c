"""The gateway's client of the HSM proxy: service keys and digest signatures."""

from __future__ import annotations

import asyncio

import grpc

from grpc_host.errors import ServiceError
from mobilesign.v1 import hsm_pb2, hsm_pb2_grpc


class HsmClient:
    """Calls the HSM proxy over a mutual-TLS channel as the ``gateway`` identity."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = hsm_pb2_grpc.HsmServiceStub(channel)
        self._lock = asyncio.Lock()

    async def service_key(self, label: str) -> hsm_pb2.KeyInfo:
        """The EC P-256 service key labelled ``label``, generated in the token on first use."""
        async with self._lock:
            try:
                listed = await self._stub.ListKeys(
                    hsm_pb2.ListKeysRequest(purpose=hsm_pb2.KEY_PURPOSE_SERVICE), timeout=10
                )
                for key in listed.keys:
                    if key.label == label:
                        return key
                reply = await self._stub.GenerateKeyPair(
                    hsm_pb2.GenerateKeyPairRequest(
                        label=label,
                        purpose=hsm_pb2.KEY_PURPOSE_SERVICE,
                        algorithm=hsm_pb2.KEY_ALGORITHM_EC_P256,
                    ),
                    timeout=30,
                )
            except grpc.aio.AioRpcError:
                raise _unavailable() from None
            return reply.key

    async def sign_ecdsa(self, key_id: str, digest: bytes) -> bytes:
        """A DER ECDSA signature over a SHA-256 digest."""
        try:
            reply = await self._stub.SignDigest(
                hsm_pb2.SignDigestRequest(
                    key_id=key_id,
                    mechanism=hsm_pb2.SIGNATURE_MECHANISM_ECDSA_SHA256,
                    digest=digest,
                ),
                timeout=10,
            )
        except grpc.aio.AioRpcError:
            raise _unavailable() from None
        return reply.signature


def _unavailable() -> ServiceError:
    return ServiceError(
        grpc.StatusCode.UNAVAILABLE, "HSM_UNAVAILABLE", "the HSM proxy cannot be reached"
    )
