"""What the RA tells the other services (``mobilesign.v1.RegistrationService``): the ticket key,
certificates and their status, organisation keys, grants, and the certification of a joint key
the cosigner forwards."""

from __future__ import annotations

from typing import Any

import grpc

from mobilesign import activation, ids
from mobilesign.ca import CertificateAuthority, Status
from mobilesign.errors import Kind
from mobilesign.hosting import access
from mobilesign.v1 import gateway_pb2, hsm_pb2, ra_pb2, ra_pb2_grpc
from ra.certification import RegistrationAuthority
from ra.changes import ChangeFeed
from ra.errors import RaError
from ra.grants import GrantIssuer
from ra.organisations import OrganisationStore, key_message

SERVICE = "mobilesign.v1.RegistrationService"

_READERS = frozenset({"gateway", "cosigner", "admin"})
POLICY = access.AccessPolicy(
    {
        # The cosigner verifies tickets with this key.
        "GetTicketKey": frozenset({"cosigner", "admin"}),
        # The cosigner asks before every signing session, the gateway at every login.
        "GetKeyStatus": _READERS,
        # Only the cosigner can vouch that a joint key is one it holds a share of.
        "CertifyUserKey": frozenset({"cosigner"}),
        "GetGrant": frozenset({"gateway", "admin"}),
        "GetCaCertificate": _READERS,
        "GetOrganisationKey": _READERS,
        "GetCrl": _READERS,
        "GetCertificateStatus": _READERS,
        # The gateway keeps the RA's answers while it watches for their changes.
        "WatchChanges": frozenset({"gateway"}),
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


class RegistryServicer(ra_pb2_grpc.RegistrationServiceServicer):
    """Answers the gateway and the cosigner; certifies joint keys for the cosigner."""

    def __init__(
        self,
        *,
        ca: CertificateAuthority,
        ra: RegistrationAuthority,
        organisations: OrganisationStore,
        issuer: GrantIssuer,
        ticket_key: hsm_pb2.KeyInfo,
        changes: ChangeFeed,
    ) -> None:
        self._ca = ca
        self._changes = changes
        self._ra = ra
        self._organisations = organisations
        self._grants = issuer
        self._ticket_key = ticket_key

    async def GetTicketKey(
        self, request: ra_pb2.GetTicketKeyRequest, context: _Context
    ) -> ra_pb2.GetTicketKeyResponse:
        return ra_pb2.GetTicketKeyResponse(public_key_spki=self._ticket_key.public_key_spki)

    async def GetKeyStatus(
        self, request: ra_pb2.GetKeyStatusRequest, context: _Context
    ) -> ra_pb2.GetKeyStatusResponse:
        # A user key (the joint key, 64 hex digits) or an organisation key (HSM id, 32).
        if not (
            ids.USER_KEY_ID.matches(request.key_id)
            or ids.ORGANISATION_KEY_ID.matches(request.key_id)
        ):
            raise ids.IdError(
                "MALFORMED_KEY_ID", "a key id is 64 (user key) or 32 (organisation key) hex digits"
            )
        current = await self._ca.current_for_key(request.key_id)
        return ra_pb2.GetKeyStatusResponse(
            revoked=await self._ca.key_revoked(request.key_id),
            certificate_serial=current.serial if current else "",
            certificate=current.der if current else b"",
        )

    async def CertifyUserKey(
        self, request: ra_pb2.CertifyUserKeyRequest, context: _Context
    ) -> ra_pb2.CertifyUserKeyResponse:
        issued, code = await self._ra.request_personal_certificate(
            request.ticket, request.csr, request.attestation, request.application_proof
        )
        grant_key = self._grants.public_key_spki
        return ra_pb2.CertifyUserKeyResponse(
            certificate=issued.der,
            ca_certificate=self._ca.root_der,
            grant_key_spki=grant_key,
            answer_proof=activation.answer_proof(code, issued.der, self._ca.root_der, grant_key),
        )

    async def GetGrant(
        self, request: ra_pb2.GetGrantRequest, context: _Context
    ) -> ra_pb2.GetGrantResponse:
        ids.GRANT_ID.check(request.grant_id)
        return ra_pb2.GetGrantResponse(grant=await self._grants.get(request.grant_id))

    async def GetCaCertificate(
        self, request: gateway_pb2.GetCaCertificateRequest, context: _Context
    ) -> gateway_pb2.GetCaCertificateResponse:
        return gateway_pb2.GetCaCertificateResponse(certificate=self._ca.root_der)

    async def GetOrganisationKey(
        self, request: gateway_pb2.GetOrganisationKeyRequest, context: _Context
    ) -> gateway_pb2.GetOrganisationKeyResponse:
        ids.ORGANISATION_KEY_ID.check(request.key_id)
        key = await self._organisations.key(request.key_id)
        record = await self._ca.current_for_key(request.key_id)
        if key is None or record is None or record.kind != "organisation":
            raise RaError(Kind.NOT_FOUND, "ORGANISATION_KEY_NOT_FOUND", "no such organisation key")
        return gateway_pb2.GetOrganisationKeyResponse(
            key=key_message(key, record.der, record.serial)
        )

    async def GetCrl(
        self, request: gateway_pb2.GetCrlRequest, context: _Context
    ) -> gateway_pb2.GetCrlResponse:
        return gateway_pb2.GetCrlResponse(crl=await self._ca.crl())

    async def GetCertificateStatus(
        self, request: gateway_pb2.GetCertificateStatusRequest, context: _Context
    ) -> gateway_pb2.GetCertificateStatusResponse:
        ids.CERTIFICATE_SERIAL.check(request.serial)
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

    # A stream with explicit context.read()/write(), which grpc.aio supports; the generated
    # base class only knows iterator-returning handlers, hence the ignore.
    async def WatchChanges(self, request_iterator: Any, context: _Context) -> None:  # type: ignore[override]
        await self._changes.serve(context)
