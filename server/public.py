"""The gateway's public RPCs (``mobilesign.v1.GatewayService``): certificates for phones and
relying parties."""

from __future__ import annotations

from typing import Any

import grpc

from ca import CertificateAuthority, Status
from grpc_host import access
from grpc_host.errors import ServiceError
from mobilesign.v1 import gateway_pb2, gateway_pb2_grpc
from server.admin import check_serial
from server.registration import RegistrationAuthority

SERVICE = "mobilesign.v1.GatewayService"

POLICY = access.AccessPolicy(
    {
        "RequestPersonalCertificate": access.ANYONE,
        "GetPersonalCertificate": access.ANYONE,
        "GetCaCertificate": access.ANYONE,
        "GetCrl": access.ANYONE,
        "GetCertificateStatus": access.ANYONE,
    }
)

_REASON_VALUES = {
    "key_compromise": gateway_pb2.REVOCATION_REASON_KEY_COMPROMISE,
    "ca_compromise": gateway_pb2.REVOCATION_REASON_CA_COMPROMISE,
    "affiliation_changed": gateway_pb2.REVOCATION_REASON_AFFILIATION_CHANGED,
    "superseded": gateway_pb2.REVOCATION_REASON_SUPERSEDED,
    "cessation_of_operation": gateway_pb2.REVOCATION_REASON_CESSATION_OF_OPERATION,
    "privilege_withdrawn": gateway_pb2.REVOCATION_REASON_PRIVILEGE_WITHDRAWN,
}
_Context = grpc.aio.ServicerContext[Any, Any]


class GatewayServicer(gateway_pb2_grpc.GatewayServiceServicer):
    """Certificate issuance for enrolled keys, and certificate publication."""

    def __init__(self, ca: CertificateAuthority, ra: RegistrationAuthority) -> None:
        self._ca = ca
        self._ra = ra

    async def RequestPersonalCertificate(
        self, request: gateway_pb2.RequestPersonalCertificateRequest, context: _Context
    ) -> gateway_pb2.RequestPersonalCertificateResponse:
        issued = await self._ra.request_personal_certificate(request.ticket, request.csr)
        return gateway_pb2.RequestPersonalCertificateResponse(
            certificate=issued.der, ca_certificate=self._ca.root_der
        )

    async def GetPersonalCertificate(
        self, request: gateway_pb2.GetPersonalCertificateRequest, context: _Context
    ) -> gateway_pb2.GetPersonalCertificateResponse:
        record = await self._ca.current_for_key(request.key_id)
        if record is None or record.kind != "personal":
            raise ServiceError(
                grpc.StatusCode.NOT_FOUND, "CERTIFICATE_NOT_FOUND", "no certificate for this key"
            )
        return gateway_pb2.GetPersonalCertificateResponse(
            certificate=record.der, ca_certificate=self._ca.root_der
        )

    async def GetCaCertificate(
        self, request: gateway_pb2.GetCaCertificateRequest, context: _Context
    ) -> gateway_pb2.GetCaCertificateResponse:
        return gateway_pb2.GetCaCertificateResponse(certificate=self._ca.root_der)

    async def GetCrl(
        self, request: gateway_pb2.GetCrlRequest, context: _Context
    ) -> gateway_pb2.GetCrlResponse:
        return gateway_pb2.GetCrlResponse(crl=await self._ca.crl())

    async def GetCertificateStatus(
        self, request: gateway_pb2.GetCertificateStatusRequest, context: _Context
    ) -> gateway_pb2.GetCertificateStatusResponse:
        check_serial(request.serial)
        status, record = await self._ca.status(request.serial)
        if status is Status.UNKNOWN:
            return gateway_pb2.GetCertificateStatusResponse(
                status=gateway_pb2.CERTIFICATE_STATUS_UNKNOWN
            )
        if status is Status.GOOD or record is None:
            return gateway_pb2.GetCertificateStatusResponse(
                status=gateway_pb2.CERTIFICATE_STATUS_GOOD
            )
        return gateway_pb2.GetCertificateStatusResponse(
            status=gateway_pb2.CERTIFICATE_STATUS_REVOKED,
            reason=_REASON_VALUES.get(
                record.revocation_reason or "", gateway_pb2.REVOCATION_REASON_UNSPECIFIED
            ),
            revoked_at_unix=record.revoked_at or 0,
        )
