"""The cosigner's use of the HSM proxy: sealing and unsealing secrets with a key in the token.

The cosigner's identity only allows Seal and Unseal; its key shares and PIN verifiers exist in
plaintext only in memory, for the length of a protocol run."""

from __future__ import annotations

import grpc

from cosigner.errors import CosignerError
from mobilesign.errors import Kind
from mobilesign.rpc import retry
from mobilesign.rpc.status import reason_of
from mobilesign.v1 import hsm_pb2, hsm_pb2_grpc


class Sealer:
    """Seals and unseals small secrets through the HSM proxy, trying again while a restarted
    proxy is not reachable yet (both calls may be repeated)."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = hsm_pb2_grpc.HsmServiceStub(channel)

    async def seal(self, secret: bytes, associated_data: bytes) -> bytes:
        """The sealed blob of ``secret``, bound to ``associated_data``."""
        try:
            # Sealing again only makes another blob of the same secret: safe to repeat.
            reply = await retry.idempotent(
                lambda: self._stub.Seal(
                    hsm_pb2.SealRequest(plaintext=secret, associated_data=associated_data),
                    timeout=10,
                )
            )
        except grpc.aio.AioRpcError:
            raise _unavailable() from None
        return reply.sealed

    async def unseal(self, sealed: bytes, associated_data: bytes) -> bytes:
        """The secret inside ``sealed``; INTERNAL when the stored blob no longer opens."""
        try:
            reply = await retry.idempotent(
                lambda: self._stub.Unseal(
                    hsm_pb2.UnsealRequest(sealed=sealed, associated_data=associated_data),
                    timeout=10,
                )
            )
        except grpc.aio.AioRpcError as exc:
            if reason_of(exc) == "SEALED_BLOB_INVALID":
                raise CosignerError(
                    Kind.INTERNAL, "STORED_SECRET_INVALID", "a stored secret is damaged"
                ) from None
            raise _unavailable() from None
        return reply.plaintext


def _unavailable() -> CosignerError:
    return CosignerError(Kind.UNAVAILABLE, "HSM_UNAVAILABLE", "the HSM proxy cannot be reached")
