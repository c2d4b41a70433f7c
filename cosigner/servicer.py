"""gRPC servicer of the cosigner: moves stream messages to the protocol handlers."""

from __future__ import annotations

import time
from typing import Any

import grpc

from cosigner import certification, enrolment, signing
from cosigner.context import Cosigner
from cosigner.errors import CosignerError
from cosigner.stream import StepStream
from mobilesign import ids, records
from mobilesign.errors import Kind
from mobilesign.hosting import access
from mobilesign.rpc import wire
from mobilesign.v1 import cosigner_pb2 as pb
from mobilesign.v1 import cosigner_pb2_grpc

SERVICE = "mobilesign.v1.CosignerService"

POLICY = access.AccessPolicy(
    {
        # Phones have no client certificate: they prove themselves inside the protocol.
        "KeyGen": access.ANYONE,
        "Sign": access.ANYONE,
        # The joint CSR's signature and the ticket are the proof; the RA checks them again.
        "RequestPersonalCertificate": access.ANYONE,
        "GetKey": frozenset({"gateway", "admin"}),
        "UnlockKey": frozenset({"admin"}),
    }
)

_Context = grpc.aio.ServicerContext[Any, Any]


class CosignerServicer(cosigner_pb2_grpc.CosignerServiceServicer):
    """Implements ``mobilesign.v1.CosignerService``."""

    def __init__(self, cosigner: Cosigner, first_message_timeout: float) -> None:
        self._cosigner = cosigner
        self._first_message_timeout = first_message_timeout

    def _stream(self, context: _Context) -> StepStream[Any, Any]:
        return StepStream(context, self._cosigner.step_timeout, self._first_message_timeout)

    # Streams use explicit context.read()/write(), which grpc.aio supports; the generated base
    # class only knows iterator-returning handlers, hence the ignores.
    async def KeyGen(self, request_iterator: Any, context: _Context) -> None:  # type: ignore[override]
        await enrolment.enrol(self._cosigner, self._stream(context))

    async def Sign(self, request_iterator: Any, context: _Context) -> None:  # type: ignore[override]
        await signing.sign(self._cosigner, self._stream(context))

    async def GetKey(self, request: pb.GetKeyRequest, context: _Context) -> pb.GetKeyResponse:
        ids.USER_KEY_ID.check(request.key_id)
        key = await self._cosigner.store.get(request.key_id)
        if key is None:
            raise CosignerError(Kind.NOT_FOUND, "KEY_NOT_FOUND", "no such key")
        return pb.GetKeyResponse(
            key_id=key.key_id,
            user_id=key.user_id,
            scheme=wire.scheme_to_proto(wire.scheme_from_name(key.scheme)),
            locked=key.locked,
            failed_pin_attempts=key.failed_pin_attempts,
            device_public_key=key.device_public_key,
            enrolment_ticket_id=key.ticket_id,
            attestation=await self._cosigner.sealer.seal(
                records.KeyAttestation(key.key_id, key.user_id, key.ticket_id).encode(),
                records.KEY_ATTESTATION_AAD,
            ),
        )

    async def RequestPersonalCertificate(
        self, request: pb.RequestPersonalCertificateRequest, context: _Context
    ) -> pb.RequestPersonalCertificateResponse:
        return await certification.request_certificate(self._cosigner, request, int(time.time()))

    async def UnlockKey(
        self, request: pb.UnlockKeyRequest, context: _Context
    ) -> pb.UnlockKeyResponse:
        ids.USER_KEY_ID.check(request.key_id)
        if not await self._cosigner.store.unlock(request.key_id):
            raise CosignerError(Kind.NOT_FOUND, "KEY_NOT_FOUND", "no such key")
        return pb.UnlockKeyResponse()
