"""The gateway's public RPCs (``mobilesign.v1.GatewayService``): phone sessions, service records,
the approvals registered applications ask for, and the audit log, and the RA's certificates, CRL
and organisation keys republished as the RA gave them."""

from __future__ import annotations

from typing import Any

import grpc

from mobilesign import grants, ids
from mobilesign.errors import Kind
from mobilesign.hosting import access
from mobilesign.v1 import gateway_pb2, gateway_pb2_grpc
from server.audit import AuditLog
from server.csc.approvals import Approvals
from server.errors import GatewayError
from server.operations import Operations
from server.ra_client import Registry
from server.sessions import Sessions

SERVICE = "mobilesign.v1.GatewayService"

POLICY = access.AccessPolicy(
    {
        "GetPersonalCertificate": access.ANYONE,
        "GetCaCertificate": access.ANYONE,
        "GetOrganisationKey": access.ANYONE,
        "GetCrl": access.ANYONE,
        "GetCertificateStatus": access.ANYONE,
        # Phones authenticate inside: device challenge, then a bearer session token.
        "StartSession": access.ANYONE,
        "FinishSession": access.ANYONE,
        "ListMyGrants": access.ANYONE,
        "PrepareOperation": access.ANYONE,
        "ExecuteOperation": access.ANYONE,
        "GetCheckpoint": access.ANYONE,
        "GetInclusionProof": access.ANYONE,
        "GetConsistencyProof": access.ANYONE,
        "GetLogEntry": access.ANYONE,
        "GetLogPublicKey": access.ANYONE,
        "ListApprovals": access.ANYONE,
        "Approve": access.ANYONE,
        "Decline": access.ANYONE,
    }
)

_Context = grpc.aio.ServicerContext[Any, Any]


class GatewayServicer(gateway_pb2_grpc.GatewayServiceServicer):
    """Sessions, the prepare/execute exchange, approvals, the log, and the RA's public
    documents."""

    def __init__(
        self,
        *,
        registry: Registry,
        sessions: Sessions,
        operations: Operations,
        audit: AuditLog,
        approvals: Approvals,
    ) -> None:
        self._registry = registry
        self._sessions = sessions
        self._operations = operations
        self._audit = audit
        self._approvals = approvals

    async def GetPersonalCertificate(
        self, request: gateway_pb2.GetPersonalCertificateRequest, context: _Context
    ) -> gateway_pb2.GetPersonalCertificateResponse:
        ids.USER_KEY_ID.check(request.key_id)
        status = await self._registry.key_status(request.key_id)
        if not status.serial:
            raise GatewayError(
                Kind.NOT_FOUND, "CERTIFICATE_NOT_FOUND", "no certificate for this key"
            )
        return gateway_pb2.GetPersonalCertificateResponse(
            certificate=status.der, ca_certificate=await self._registry.ca_certificate()
        )

    async def GetCaCertificate(
        self, request: gateway_pb2.GetCaCertificateRequest, context: _Context
    ) -> gateway_pb2.GetCaCertificateResponse:
        return gateway_pb2.GetCaCertificateResponse(
            certificate=await self._registry.ca_certificate()
        )

    async def GetOrganisationKey(
        self, request: gateway_pb2.GetOrganisationKeyRequest, context: _Context
    ) -> gateway_pb2.GetOrganisationKeyResponse:
        ids.ORGANISATION_KEY_ID.check(request.key_id)
        return gateway_pb2.GetOrganisationKeyResponse(
            key=await self._registry.organisation_key(request.key_id)
        )

    async def GetCrl(
        self, request: gateway_pb2.GetCrlRequest, context: _Context
    ) -> gateway_pb2.GetCrlResponse:
        return gateway_pb2.GetCrlResponse(crl=await self._registry.crl())

    async def GetCertificateStatus(
        self, request: gateway_pb2.GetCertificateStatusRequest, context: _Context
    ) -> gateway_pb2.GetCertificateStatusResponse:
        ids.CERTIFICATE_SERIAL.check(request.serial)
        return await self._registry.certificate_status(request.serial)

    async def StartSession(
        self, request: gateway_pb2.StartSessionRequest, context: _Context
    ) -> gateway_pb2.StartSessionResponse:
        return gateway_pb2.StartSessionResponse(challenge=self._sessions.challenge(request.key_id))

    async def FinishSession(
        self, request: gateway_pb2.FinishSessionRequest, context: _Context
    ) -> gateway_pb2.FinishSessionResponse:
        token, expires_at, user_id = await self._sessions.finish(
            request.key_id, request.challenge, request.device_signature
        )
        return gateway_pb2.FinishSessionResponse(
            session_token=token, expires_at_unix=expires_at, user_id=user_id
        )

    async def ListMyGrants(
        self, request: gateway_pb2.ListMyGrantsRequest, context: _Context
    ) -> gateway_pb2.ListMyGrantsResponse:
        session = await self._sessions.authenticate(context)
        return gateway_pb2.ListMyGrantsResponse(
            grants=await self._registry.grants_of(session.user_id)
        )

    async def PrepareOperation(
        self, request: gateway_pb2.PrepareOperationRequest, context: _Context
    ) -> gateway_pb2.PrepareOperationResponse:
        session = await self._sessions.authenticate(context)
        record_id, record = await self._operations.prepare(
            session,
            grant_id=request.grant_id,
            operation=grants.operation_name(request.operation),
            data=request.input,
            purpose=request.purpose,
        )
        return gateway_pb2.PrepareOperationResponse(record_id=record_id, record=record)

    async def ExecuteOperation(
        self, request: gateway_pb2.ExecuteOperationRequest, context: _Context
    ) -> gateway_pb2.ExecuteOperationResponse:
        session = await self._sessions.authenticate(context)
        executed = await self._operations.execute(
            session,
            record_id=request.record_id,
            record=request.record,
            data=request.input,
            user_signature=request.user_signature,
        )
        return gateway_pb2.ExecuteOperationResponse(
            result=executed.result, receipt=executed.receipt
        )

    async def GetCheckpoint(
        self, request: gateway_pb2.GetCheckpointRequest, context: _Context
    ) -> gateway_pb2.GetCheckpointResponse:
        _, note = await self._audit.checkpoint()
        return gateway_pb2.GetCheckpointResponse(checkpoint=note)

    async def GetInclusionProof(
        self, request: gateway_pb2.GetInclusionProofRequest, context: _Context
    ) -> gateway_pb2.GetInclusionProofResponse:
        return gateway_pb2.GetInclusionProofResponse(
            proof=await self._audit.inclusion_proof(request.entry_index, request.tree_size)
        )

    async def GetConsistencyProof(
        self, request: gateway_pb2.GetConsistencyProofRequest, context: _Context
    ) -> gateway_pb2.GetConsistencyProofResponse:
        return gateway_pb2.GetConsistencyProofResponse(
            proof=await self._audit.consistency_proof(request.old_size, request.new_size)
        )

    async def GetLogEntry(
        self, request: gateway_pb2.GetLogEntryRequest, context: _Context
    ) -> gateway_pb2.GetLogEntryResponse:
        return gateway_pb2.GetLogEntryResponse(entry=await self._audit.entry(request.entry_index))

    async def GetLogPublicKey(
        self, request: gateway_pb2.GetLogPublicKeyRequest, context: _Context
    ) -> gateway_pb2.GetLogPublicKeyResponse:
        return gateway_pb2.GetLogPublicKeyResponse(
            public_key_spki=self._audit.public_key_spki, origin=self._audit.origin
        )

    async def ListApprovals(
        self, request: gateway_pb2.ListApprovalsRequest, context: _Context
    ) -> gateway_pb2.ListApprovalsResponse:
        session = await self._sessions.authenticate(context)
        return gateway_pb2.ListApprovalsResponse(approvals=await self._approvals.pending(session))

    async def Approve(
        self, request: gateway_pb2.ApproveRequest, context: _Context
    ) -> gateway_pb2.ApproveResponse:
        session = await self._sessions.authenticate(context)
        await self._approvals.approve(session, request.approval_id, list(request.records))
        return gateway_pb2.ApproveResponse()

    async def Decline(
        self, request: gateway_pb2.DeclineRequest, context: _Context
    ) -> gateway_pb2.DeclineResponse:
        session = await self._sessions.authenticate(context)
        await self._approvals.decline(session, request.approval_id)
        return gateway_pb2.DeclineResponse()
