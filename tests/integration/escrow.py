"""Shared set-up for the escrowed-key tests: an organisation with an EC and an RSA key, and
phones (enrolled, certified, logged in) with grants."""

from __future__ import annotations

import dataclasses
import secrets
import time
from typing import Any

import grpc
from cryptography import x509

import client
from mobilesign.testing import Deployment
from mobilesign.v1 import gateway_pb2, gateway_pb2_grpc, hsm_pb2, hsm_pb2_grpc, ra_pb2, ra_pb2_grpc

PIN = "482916"


@dataclasses.dataclass
class Organisation:
    """The organisation keys and what a verifier needs."""

    seal: gateway_pb2.OrganisationKey
    encryption: gateway_pb2.OrganisationKey
    trust: client.TrustAnchors


@dataclasses.dataclass
class Phone:
    """An enrolled, certified phone with open sessions at the gateway and the cosigner."""

    user_id: str
    keystore: client.Keystore
    gateway: client.GatewaySession
    signing: client.SigningSession
    certificate_serial: str
    channels: list[grpc.aio.Channel]

    async def close(self) -> None:
        """Close the signing session and the channels."""
        try:
            await self.signing.close()
        except client.ClientError:
            self.signing.abort()
        for channel in self.channels:
            await channel.close()


def admin(channel: grpc.aio.Channel) -> ra_pb2_grpc.AdminServiceAsyncStub:
    """The RA's administrator stub."""
    return ra_pb2_grpc.AdminServiceStub(channel)


def public(channel: grpc.aio.Channel) -> gateway_pb2_grpc.GatewayServiceAsyncStub:
    """The gateway's public stub."""
    return gateway_pb2_grpc.GatewayServiceStub(channel)


async def organisation(deployment: Deployment, name: str = "acme") -> Organisation:
    """An organisation with an EC P-256 and an RSA-2048 key and their certificates."""
    async with deployment.channel("ra") as channel:
        stub = admin(channel)
        await stub.CreateOrganisation(
            ra_pb2.CreateOrganisationRequest(organisation_id=name, name=name.upper())
        )
        keys = []
        for label, algorithm in (
            ("seal", gateway_pb2.ORGANISATION_KEY_ALGORITHM_EC_P256),
            ("encryption", gateway_pb2.ORGANISATION_KEY_ALGORITHM_RSA_2048),
        ):
            reply = await stub.CreateOrganisationKey(
                ra_pb2.CreateOrganisationKeyRequest(
                    organisation_id=name, label=f"{name}-{label}", algorithm=algorithm
                )
            )
            keys.append(reply.key)
    async with deployment.channel("gateway") as channel:
        ca = (
            await public(channel).GetCaCertificate(gateway_pb2.GetCaCertificateRequest())
        ).certificate
        log = await public(channel).GetLogPublicKey(gateway_pb2.GetLogPublicKeyRequest())
    return Organisation(
        keys[0],
        keys[1],
        client.TrustAnchors(ca, log.public_key_spki, log.origin, await grant_key(deployment)),
    )


async def grant_key(deployment: Deployment) -> bytes:
    """The RA's grant key, read from the token by an administrator (a phone receives it from the
    RA through the cosigner when its key is certified)."""
    async with deployment.channel("hsm-proxy") as channel:
        listed = await hsm_pb2_grpc.HsmServiceStub(channel).ListKeys(
            hsm_pb2.ListKeysRequest(purpose=hsm_pb2.KEY_PURPOSE_GRANT)
        )
    (key,) = listed.keys
    return key.public_key_spki


async def phone(deployment: Deployment, organisation: Organisation, name: str) -> Phone:
    """A new user with an enrolled key, its personal certificate, and open sessions."""
    user_id = f"{name}-{secrets.token_hex(3)}"
    async with deployment.channel("ra") as channel:
        await admin(channel).CreateUser(ra_pb2.CreateUserRequest(user_id=user_id))
        issued = await admin(channel).IssueEnrolmentTicket(
            ra_pb2.IssueEnrolmentTicketRequest(user_id=user_id)
        )
    cosigner = deployment.public_channel("cosigner")
    gateway_channel = deployment.public_channel("gateway")
    keystore = await client.enrol(cosigner, issued.ticket, PIN)
    signing = client.SigningSession(cosigner, keystore, PIN)
    await signing.open()
    certificates, _ = await client.request_personal_certificate(
        cosigner,
        signing,
        keystore,
        issued.ticket,
        issued.activation_code,
        organisation.trust.ca_certificate,
    )
    assert certificates.grant_key_spki == organisation.trust.grant_key_spki
    serial = format(x509.load_der_x509_certificate(certificates.certificate).serial_number, "x")
    gateway = client.GatewaySession(gateway_channel, keystore)
    await gateway.login()
    return Phone(user_id, keystore, gateway, signing, serial, [cosigner, gateway_channel])


async def grant(
    deployment: Deployment,
    user_id: str,
    key: gateway_pb2.OrganisationKey,
    operations: list[gateway_pb2.Operation.ValueType],
    **fields: Any,
) -> gateway_pb2.Grant:
    """A grant (defaults: valid for an hour from a minute ago, quotas of 100)."""
    now = int(time.time())
    values: dict[str, Any] = {
        "not_before_unix": now - 60,
        "not_after_unix": now + 3600,
        "quota_total": 100,
        "quota_daily": 100,
        "purpose": "tests",
    }
    values.update(fields)
    async with deployment.channel("ra") as channel:
        reply = await admin(channel).CreateGrant(
            ra_pb2.CreateGrantRequest(
                user_id=user_id, key_id=key.key_id, operations=operations, **values
            )
        )
    return reply.grant


async def grant_state(deployment: Deployment, grant_id: str) -> gateway_pb2.Grant | None:
    """A grant as the administrator sees it now (None when there is none)."""
    async with deployment.channel("ra") as channel:
        listed = await admin(channel).ListGrants(ra_pb2.ListGrantsRequest())
    return next((g for g in listed.grants if g.grant_id == grant_id), None)


async def log_size(deployment: Deployment) -> int:
    """Entries in the audit log, from a fresh signed checkpoint."""
    async with deployment.public_channel("gateway") as channel:
        note = (await public(channel).GetCheckpoint(gateway_pb2.GetCheckpointRequest())).checkpoint
    return int(note.split(b"\n")[1])
