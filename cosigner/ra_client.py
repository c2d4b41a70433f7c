"""What the cosigner asks the RA (mutual TLS, server identity ``ra``): the public key that
verifies enrolment tickets (fetched once and kept), whether a key's personal certificate was
revoked (asked at the start of every signing session; fails closed), and the certification of
a joint key it holds a share of."""

from __future__ import annotations

import asyncio

import grpc
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cosigner.errors import CosignerError
from mobilesign.errors import Kind
from mobilesign.rpc import retry
from mobilesign.rpc.status import relayed
from mobilesign.v1 import ra_pb2, ra_pb2_grpc


def _unreachable(what: str) -> CosignerError:
    return CosignerError(Kind.UNAVAILABLE, "RA_UNAVAILABLE", f"the RA cannot be reached {what}")


class Registry:
    """The cosigner's client of the RA's RegistrationService."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = ra_pb2_grpc.RegistrationServiceStub(channel)
        self._ticket_key: ec.EllipticCurvePublicKey | None = None
        self._lock = asyncio.Lock()

    async def ticket_key(self) -> ec.EllipticCurvePublicKey:
        """The ticket verification key."""
        async with self._lock:
            if self._ticket_key is None:
                try:
                    reply = await retry.idempotent(
                        lambda: self._stub.GetTicketKey(ra_pb2.GetTicketKeyRequest(), timeout=10)
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
            reply = await retry.idempotent(
                lambda: self._stub.GetKeyStatus(
                    ra_pb2.GetKeyStatusRequest(key_id=key_id), timeout=10
                )
            )
        except grpc.aio.AioRpcError:
            raise _unreachable("to check the key's certificate") from None
        return reply.revoked

    async def certify(self, request: ra_pb2.CertifyUserKeyRequest) -> ra_pb2.CertifyUserKeyResponse:
        """The RA's certificate for a joint key; its refusals come back as they are (never
        retried: a repeat of an application the RA granted would be TICKET_USED)."""
        try:
            return await self._stub.CertifyUserKey(request, timeout=30)
        except grpc.aio.AioRpcError as exc:
            raise relayed(exc, CosignerError, "RA", "RA_UNAVAILABLE") from None
