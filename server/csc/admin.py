"""``mobilesign.v1.CscAdminService``: administrators register the applications that may call the
CSC endpoint (the gateway's internal listener, the ``admin`` identity only)."""

from __future__ import annotations

import time
from typing import Any

import grpc

from mobilesign.hosting import access
from mobilesign.v1 import csc_pb2, csc_pb2_grpc
from server.csc.applications import Application, Applications

SERVICE = "mobilesign.v1.CscAdminService"

_ADMIN = frozenset({"admin"})
POLICY = access.AccessPolicy(
    {"RegisterApplication": _ADMIN, "ListApplications": _ADMIN, "RevokeApplication": _ADMIN}
)

_Context = grpc.aio.ServicerContext[Any, Any]


def _message(application: Application) -> csc_pb2.Application:
    return csc_pb2.Application(
        client_id=application.client_id,
        name=application.name,
        grant_ids=list(application.grant_ids),
        created_unix=application.created_at,
        revoked=application.revoked,
    )


class CscAdminServicer(csc_pb2_grpc.CscAdminServiceServicer):
    """Registration, listing and revocation of CSC applications."""

    def __init__(self, applications: Applications) -> None:
        self._applications = applications

    async def RegisterApplication(
        self, request: csc_pb2.RegisterApplicationRequest, context: _Context
    ) -> csc_pb2.RegisterApplicationResponse:
        application, secret = await self._applications.register(
            request.name, list(request.grant_ids), int(time.time())
        )
        return csc_pb2.RegisterApplicationResponse(
            application=_message(application), client_secret=secret
        )

    async def ListApplications(
        self, request: csc_pb2.ListApplicationsRequest, context: _Context
    ) -> csc_pb2.ListApplicationsResponse:
        return csc_pb2.ListApplicationsResponse(
            applications=[_message(a) for a in await self._applications.list()]
        )

    async def RevokeApplication(
        self, request: csc_pb2.RevokeApplicationRequest, context: _Context
    ) -> csc_pb2.RevokeApplicationResponse:
        await self._applications.revoke(request.client_id)
        return csc_pb2.RevokeApplicationResponse()
