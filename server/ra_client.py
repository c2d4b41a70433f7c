"""The gateway's client of the RA (mutual TLS, server identity ``ra``): what the gateway needs to
know about certificates, organisation keys and grants, and the documents it republishes."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import grpc
from cryptography import x509

from mobilesign.rpc import retry
from mobilesign.rpc.status import relayed
from mobilesign.v1 import gateway_pb2, ra_pb2, ra_pb2_grpc
from server.errors import GatewayError


@dataclass(frozen=True)
class KeyStatus:
    """A user key's current personal certificate as the RA has it."""

    serial: str  # empty when none was issued
    der: bytes
    revoked: bool

    @functools.cached_property
    def parsed(self) -> x509.Certificate:
        """The certificate, parsed once (``ValueError`` when there is none)."""
        return x509.load_der_x509_certificate(self.der)


def _failed(error: grpc.aio.AioRpcError) -> GatewayError:
    return relayed(error, GatewayError, "RA", "RA_UNAVAILABLE")


class Registry:
    """Asks the RA's RegistrationService (and AdminService.ListGrants); every question is a
    read, tried once more if the RA was unreachable (it may have just restarted)."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._registry = ra_pb2_grpc.RegistrationServiceStub(channel)
        self._admin = ra_pb2_grpc.AdminServiceStub(channel)

    async def key_status(self, key_id: str) -> KeyStatus:
        """The key's current certificate and whether any of its certificates was revoked."""
        try:
            reply = await retry.idempotent(
                lambda: self._registry.GetKeyStatus(
                    ra_pb2.GetKeyStatusRequest(key_id=key_id), timeout=10
                )
            )
        except grpc.aio.AioRpcError as exc:
            raise _failed(exc) from None
        return KeyStatus(reply.certificate_serial, reply.certificate, reply.revoked)

    async def organisation_key(self, key_id: str) -> gateway_pb2.OrganisationKey:
        """An organisation key with its current certificate; NOT_FOUND when there is none."""
        try:
            reply = await retry.idempotent(
                lambda: self._registry.GetOrganisationKey(
                    gateway_pb2.GetOrganisationKeyRequest(key_id=key_id), timeout=10
                )
            )
        except grpc.aio.AioRpcError as exc:
            raise _failed(exc) from None
        return reply.key

    async def grant(self, grant_id: str) -> gateway_pb2.Grant | None:
        """One grant, signed, with its use so far, or None when the RA has no such grant."""
        try:
            reply = await retry.idempotent(
                lambda: self._registry.GetGrant(
                    ra_pb2.GetGrantRequest(grant_id=grant_id), timeout=10
                )
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise _failed(exc) from None
        return reply.grant

    async def grants_of(self, user_id: str) -> list[gateway_pb2.Grant]:
        """A user's grants, oldest first."""
        try:
            reply = await retry.idempotent(
                lambda: self._admin.ListGrants(
                    ra_pb2.ListGrantsRequest(user_id=user_id), timeout=10
                )
            )
        except grpc.aio.AioRpcError as exc:
            raise _failed(exc) from None
        return list(reply.grants)

    async def ca_certificate(self) -> bytes:
        """The CA certificate (DER)."""
        try:
            reply = await retry.idempotent(
                lambda: self._registry.GetCaCertificate(
                    gateway_pb2.GetCaCertificateRequest(), timeout=10
                )
            )
        except grpc.aio.AioRpcError as exc:
            raise _failed(exc) from None
        return reply.certificate

    async def crl(self) -> bytes:
        """The current CRL (DER)."""
        try:
            reply = await retry.idempotent(
                lambda: self._registry.GetCrl(gateway_pb2.GetCrlRequest(), timeout=10)
            )
        except grpc.aio.AioRpcError as exc:
            raise _failed(exc) from None
        return reply.crl

    async def certificate_status(self, serial: str) -> gateway_pb2.GetCertificateStatusResponse:
        """Good, revoked or unknown for a serial number."""
        try:
            return await retry.idempotent(
                lambda: self._registry.GetCertificateStatus(
                    gateway_pb2.GetCertificateStatusRequest(serial=serial), timeout=10
                )
            )
        except grpc.aio.AioRpcError as exc:
            raise _failed(exc) from None
