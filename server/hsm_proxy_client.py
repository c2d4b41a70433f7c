"""The gateway's client of the HSM proxy: organisation-key uses with their authorisation, and
the log's checkpoints."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

from mobilesign.rpc import retry
from mobilesign.rpc.status import relayed
from mobilesign.v1 import hsm_pb2, hsm_pb2_grpc
from server.errors import GatewayError

T = TypeVar("T")


def _failed(error: grpc.aio.AioRpcError) -> GatewayError:
    # The proxy's own refusal (e.g. QUOTA_EXCEEDED) is passed on as it came.
    return relayed(error, GatewayError, "HSM proxy", "HSM_UNAVAILABLE")


async def _idempotent(call: Callable[[], Awaitable[T]]) -> T:
    """``call`` with one retry if the proxy was unreachable: only for calls the proxy may
    repeat with the same outcome (reading the log state, signing a checkpoint for the same
    size and root; a repeat after it acted answers WITNESS_STATE_STALE). Organisation-key uses
    are never repeated here: the gateway cannot tell whether an unreachable proxy acted."""
    try:
        return await retry.idempotent(call)
    except grpc.aio.AioRpcError as exc:
        raise _failed(exc) from None


class HsmClient:
    """Calls the HSM proxy over a mutual-TLS channel as the ``gateway`` identity."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = hsm_pb2_grpc.HsmServiceStub(channel)

    async def sign_digest(
        self,
        key_id: str,
        mechanism: hsm_pb2.SignatureMechanism.ValueType,
        digest: bytes,
        authorisation: hsm_pb2.OrganisationKeyAuthorisation,
    ) -> bytes:
        """An organisation key's signature over a SHA-256 digest (DER for ECDSA), for the
        co-signed record's ``authorisation``."""
        try:
            reply = await self._stub.SignDigest(
                hsm_pb2.SignDigestRequest(
                    key_id=key_id, mechanism=mechanism, digest=digest, authorisation=authorisation
                ),
                timeout=10,
            )
        except grpc.aio.AioRpcError as exc:
            raise _failed(exc) from None
        return reply.signature

    async def decrypt(
        self, key_id: str, ciphertext: bytes, authorisation: hsm_pb2.OrganisationKeyAuthorisation
    ) -> bytes:
        """RSA-OAEP (SHA-256) decryption with an organisation key."""
        try:
            reply = await self._stub.Decrypt(
                hsm_pb2.DecryptRequest(
                    key_id=key_id,
                    mechanism=hsm_pb2.DECRYPT_MECHANISM_RSA_OAEP_SHA256,
                    ciphertext=ciphertext,
                    authorisation=authorisation,
                ),
                timeout=10,
            )
        except grpc.aio.AioRpcError as exc:
            raise _failed(exc) from None
        return reply.plaintext

    async def log_state(self) -> hsm_pb2.GetLogStateResponse:
        """The log key, the log's origin and the last checkpoint the proxy signed."""
        return await _idempotent(
            lambda: self._stub.GetLogState(hsm_pb2.GetLogStateRequest(), timeout=10)
        )

    async def sign_checkpoint(
        self, old_size: int, tree_size: int, root_hash: bytes, proof: list[bytes]
    ) -> bytes:
        """The proxy's signed note for a tree that extends the one of ``old_size`` entries."""
        request = hsm_pb2.SignCheckpointRequest(
            old_size=old_size, tree_size=tree_size, root_hash=root_hash, consistency_proof=proof
        )
        reply = await _idempotent(lambda: self._stub.SignCheckpoint(request, timeout=10))
        return reply.checkpoint
