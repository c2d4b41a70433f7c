"""The gateway's administrator RPCs (``mobilesign.v1.AdminService``)."""

from __future__ import annotations

import secrets
import time
from typing import Any

import grpc

import tickets
from grpc_host import access
from grpc_host.errors import ServiceError
from mobilesign.v1 import gateway_pb2, gateway_pb2_grpc
from server.hsm import HsmClient
from server.users import User, UserStore

SERVICE = "mobilesign.v1.AdminService"

POLICY = access.AccessPolicy(
    {
        "CreateUser": frozenset({"admin"}),
        "GetUser": frozenset({"admin"}),
        "IssueEnrollmentTicket": frozenset({"admin"}),
        # The cosigner verifies tickets with this key.
        "GetTicketKey": frozenset({"admin", "cosigner"}),
    }
)

_MIN_TTL = 60
_MAX_TTL = 7 * 86_400
_Context = grpc.aio.ServicerContext[Any, Any]


def _user(user: User) -> gateway_pb2.User:
    return gateway_pb2.User(
        user_id=user.user_id, display_name=user.display_name, created_at_unix=user.created_at
    )


class AdminServicer(gateway_pb2_grpc.AdminServiceServicer):
    """User registry and enrolment tickets."""

    def __init__(
        self, users: UserStore, hsm: HsmClient, ticket_key_label: str, default_ttl: int
    ) -> None:
        self._users = users
        self._hsm = hsm
        self._ticket_key_label = ticket_key_label
        self._default_ttl = default_ttl

    async def CreateUser(
        self, request: gateway_pb2.CreateUserRequest, context: _Context
    ) -> gateway_pb2.CreateUserResponse:
        user = await self._users.create(request.user_id, request.display_name, int(time.time()))
        return gateway_pb2.CreateUserResponse(user=_user(user))

    async def GetUser(
        self, request: gateway_pb2.GetUserRequest, context: _Context
    ) -> gateway_pb2.GetUserResponse:
        return gateway_pb2.GetUserResponse(user=_user(await self._users.get(request.user_id)))

    async def IssueEnrollmentTicket(
        self, request: gateway_pb2.IssueEnrollmentTicketRequest, context: _Context
    ) -> gateway_pb2.IssueEnrollmentTicketResponse:
        ttl = request.ttl_seconds or self._default_ttl
        if not _MIN_TTL <= ttl <= _MAX_TTL:
            raise ServiceError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "TTL_OUT_OF_RANGE",
                f"ttl_seconds must be {_MIN_TTL} to {_MAX_TTL}",
            )
        user = await self._users.get(request.user_id)
        now = int(time.time())
        claims = tickets.Claims(secrets.token_hex(16), user.user_id, now, now + ttl)
        encoded = tickets.encode(claims)
        key = await self._hsm.service_key(self._ticket_key_label)
        signature = await self._hsm.sign_ecdsa(key.key_id, tickets.signing_digest(encoded))
        await self._users.record_ticket(
            claims.ticket_id, claims.user_id, claims.issued_at, claims.expires_at
        )
        return gateway_pb2.IssueEnrollmentTicketResponse(
            ticket=tickets.assemble(encoded, signature),
            ticket_id=claims.ticket_id,
            expires_at_unix=claims.expires_at,
        )

    async def GetTicketKey(
        self, request: gateway_pb2.GetTicketKeyRequest, context: _Context
    ) -> gateway_pb2.GetTicketKeyResponse:
        key = await self._hsm.service_key(self._ticket_key_label)
        return gateway_pb2.GetTicketKeyResponse(public_key_spki=key.public_key_spki)
