"""The RA's administrator RPCs (``mobilesign.v1.AdminService``)."""

from __future__ import annotations

import secrets
import time
from typing import Any

import grpc

from mobilesign import activation, grants, ids, tickets
from mobilesign.ca import CertificateAuthority
from mobilesign.errors import Kind
from mobilesign.hosting import access
from mobilesign.v1 import gateway_pb2, hsm_pb2, ra_pb2, ra_pb2_grpc
from ra.certification import RegistrationAuthority
from ra.errors import RaError
from ra.grants import GrantIssuer
from ra.hsm_proxy_client import HsmClient
from ra.organisations import OrganisationStore, key_message
from ra.users import User, UserStore

SERVICE = "mobilesign.v1.AdminService"

POLICY = access.AccessPolicy(
    {
        "CreateUser": frozenset({"admin"}),
        "GetUser": frozenset({"admin"}),
        "IssueEnrolmentTicket": frozenset({"admin"}),
        "CreateOrganisation": frozenset({"admin"}),
        "CreateOrganisationKey": frozenset({"admin"}),
        "ListOrganisationKeys": frozenset({"admin"}),
        "RevokeCertificate": frozenset({"admin"}),
        "CreateGrant": frozenset({"admin"}),
        # The gateway lists a phone's grants for it.
        "ListGrants": frozenset({"admin", "gateway"}),
        "RevokeGrant": frozenset({"admin"}),
    }
)

_ALGORITHMS = {
    gateway_pb2.ORGANISATION_KEY_ALGORITHM_EC_P256: hsm_pb2.KEY_ALGORITHM_EC_P256,
    gateway_pb2.ORGANISATION_KEY_ALGORITHM_RSA_2048: hsm_pb2.KEY_ALGORITHM_RSA_2048,
    gateway_pb2.ORGANISATION_KEY_ALGORITHM_RSA_3072: hsm_pb2.KEY_ALGORITHM_RSA_3072,
}
_REASONS = {
    gateway_pb2.REVOCATION_REASON_KEY_COMPROMISE: "key_compromise",
    gateway_pb2.REVOCATION_REASON_CA_COMPROMISE: "ca_compromise",
    gateway_pb2.REVOCATION_REASON_AFFILIATION_CHANGED: "affiliation_changed",
    gateway_pb2.REVOCATION_REASON_SUPERSEDED: "superseded",
    gateway_pb2.REVOCATION_REASON_CESSATION_OF_OPERATION: "cessation_of_operation",
    gateway_pb2.REVOCATION_REASON_PRIVILEGE_WITHDRAWN: "privilege_withdrawn",
}

_MIN_TTL = 60
_MAX_TTL = 7 * 86_400
_Context = grpc.aio.ServicerContext[Any, Any]


def _user(user: User) -> ra_pb2.User:
    return ra_pb2.User(
        user_id=user.user_id, display_name=user.display_name, created_at_unix=user.created_at
    )


class AdminServicer(ra_pb2_grpc.AdminServiceServicer):
    """User registry, enrolment tickets, organisations and their keys, grants, revocation."""

    def __init__(
        self,
        *,
        users: UserStore,
        organisations: OrganisationStore,
        hsm: HsmClient,
        ca: CertificateAuthority,
        ra: RegistrationAuthority,
        issuer: GrantIssuer,
        ticket_key: hsm_pb2.KeyInfo,
        default_ttl: int,
    ) -> None:
        self._users = users
        self._organisations = organisations
        self._hsm = hsm
        self._ca = ca
        self._ra = ra
        self._grants = issuer
        self._ticket_key = ticket_key
        self._default_ttl = default_ttl

    async def CreateUser(
        self, request: ra_pb2.CreateUserRequest, context: _Context
    ) -> ra_pb2.CreateUserResponse:
        user = await self._users.create(request.user_id, request.display_name, int(time.time()))
        return ra_pb2.CreateUserResponse(user=_user(user))

    async def GetUser(
        self, request: ra_pb2.GetUserRequest, context: _Context
    ) -> ra_pb2.GetUserResponse:
        return ra_pb2.GetUserResponse(user=_user(await self._users.get(request.user_id)))

    async def IssueEnrolmentTicket(
        self, request: ra_pb2.IssueEnrolmentTicketRequest, context: _Context
    ) -> ra_pb2.IssueEnrolmentTicketResponse:
        ttl = request.ttl_seconds or self._default_ttl
        if not _MIN_TTL <= ttl <= _MAX_TTL:
            raise RaError(
                Kind.INVALID,
                "TTL_OUT_OF_RANGE",
                f"ttl_seconds must be {_MIN_TTL} to {_MAX_TTL}",
            )
        user = await self._users.get(request.user_id)
        now = int(time.time())
        claims = tickets.Claims(
            secrets.token_hex(16), user.user_id, now, now + ttl, request.additional_key
        )
        encoded = tickets.encode(claims)
        signature = await self._hsm.sign_digest(
            self._ticket_key.key_id,
            hsm_pb2.SIGNATURE_MECHANISM_ECDSA_SHA256,
            tickets.signing_digest(encoded),
        )
        code = secrets.token_bytes(activation.CODE_BYTES)
        await self._users.record_ticket(claims, code)
        return ra_pb2.IssueEnrolmentTicketResponse(
            ticket=tickets.assemble(encoded, signature),
            ticket_id=claims.ticket_id,
            expires_at_unix=claims.expires_at,
            activation_code=code,
        )

    async def CreateOrganisation(
        self, request: ra_pb2.CreateOrganisationRequest, context: _Context
    ) -> ra_pb2.CreateOrganisationResponse:
        organisation = await self._organisations.create(
            request.organisation_id, request.name, int(time.time())
        )
        return ra_pb2.CreateOrganisationResponse(
            organisation=ra_pb2.Organisation(
                organisation_id=organisation.organisation_id, name=organisation.name
            )
        )

    async def CreateOrganisationKey(
        self, request: ra_pb2.CreateOrganisationKeyRequest, context: _Context
    ) -> ra_pb2.CreateOrganisationKeyResponse:
        algorithm = _ALGORITHMS.get(request.algorithm)
        if algorithm is None:
            raise RaError(
                Kind.INVALID,
                "ALGORITHM_REQUIRED",
                "a key algorithm is required",
            )
        ids.KEY_LABEL.check(request.label)
        key, issued, csr = await self._ra.create_organisation_key(
            request.organisation_id, request.label, algorithm
        )
        return ra_pb2.CreateOrganisationKeyResponse(
            key=key_message(key, issued.der, issued.serial), csr=csr
        )

    async def ListOrganisationKeys(
        self, request: ra_pb2.ListOrganisationKeysRequest, context: _Context
    ) -> ra_pb2.ListOrganisationKeysResponse:
        await self._organisations.get(request.organisation_id)
        listed = []
        for key in await self._organisations.keys(request.organisation_id):
            record = await self._ca.current_for_key(key.key_id)
            listed.append(
                key_message(key, record.der if record else b"", record.serial if record else "")
            )
        return ra_pb2.ListOrganisationKeysResponse(keys=listed)

    async def RevokeCertificate(
        self, request: ra_pb2.RevokeCertificateRequest, context: _Context
    ) -> ra_pb2.RevokeCertificateResponse:
        ids.CERTIFICATE_SERIAL.check(request.serial)
        reason = _REASONS.get(request.reason)
        if reason is None:
            raise RaError(
                Kind.INVALID,
                "REASON_REQUIRED",
                "a revocation reason is required",
            )
        await self._ra.revoke(request.serial, reason)
        return ra_pb2.RevokeCertificateResponse()

    async def CreateGrant(
        self, request: ra_pb2.CreateGrantRequest, context: _Context
    ) -> ra_pb2.CreateGrantResponse:
        grant = await self._grants.create(
            user_id=request.user_id,
            key_id=request.key_id,
            operations=[grants.operation_name(op) for op in request.operations],
            not_before=request.not_before_unix,
            not_after=request.not_after_unix,
            quota_total=request.quota_total,
            quota_daily=request.quota_daily,
            purpose=request.purpose,
            now=int(time.time()),
        )
        return ra_pb2.CreateGrantResponse(grant=grant)

    async def ListGrants(
        self, request: ra_pb2.ListGrantsRequest, context: _Context
    ) -> ra_pb2.ListGrantsResponse:
        if request.user_id:
            ids.USER_ID.check(request.user_id)
        if request.key_id:
            ids.ORGANISATION_KEY_ID.check(request.key_id)
        return ra_pb2.ListGrantsResponse(
            grants=await self._grants.list(request.user_id, request.key_id)
        )

    async def RevokeGrant(
        self, request: ra_pb2.RevokeGrantRequest, context: _Context
    ) -> ra_pb2.RevokeGrantResponse:
        ids.GRANT_ID.check(request.grant_id)
        await self._grants.revoke(request.grant_id, int(time.time()))
        return ra_pb2.RevokeGrantResponse()
