"""The phone co-signs only what the user asked for, whatever the gateway says.

A stand-in gateway (in this process) forwards every call to the real gateway process but changes
one thing in what it answers: the organisation key, the certificate hash, the operation, the
data or the purpose a record names, the description of the organisation key itself, or the
signed grant. The SDK must refuse each before the cosigner is asked for anything, and nothing
reaches execution.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc
import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import client
from mobilesign import grants, records
from mobilesign.testing import Deployment
from mobilesign.v1 import gateway_pb2, gateway_pb2_grpc
from tests.integration import escrow

pytestmark = pytest.mark.integration
SIGN = gateway_pb2.OPERATION_SIGN_DIGEST
DIGEST = hashlib.sha256(b"framework agreement 2026-44").digest()

RecordChange = Callable[[records.ServiceRecord], records.ServiceRecord]
KeyChange = Callable[[gateway_pb2.OrganisationKey], gateway_pb2.OrganisationKey]
GrantChange = Callable[[gateway_pb2.Grant], gateway_pb2.Grant]
_Context = grpc.aio.ServicerContext[Any, Any]


class StandInGateway(gateway_pb2_grpc.GatewayServiceServicer):
    """Forwards the phone's calls to the real gateway, changing records or key descriptions."""

    def __init__(self, upstream: grpc.aio.Channel) -> None:
        self._stub = gateway_pb2_grpc.GatewayServiceStub(upstream)
        self.change_record: RecordChange | None = None
        self.change_key: KeyChange | None = None
        self.change_grant: GrantChange | None = None
        self.executed = 0

    async def _forward(self, method: str, request: Any, context: _Context) -> Any:
        metadata = [(k, v) for k, v in context.invocation_metadata() or () if k == "authorization"]
        try:
            return await getattr(self._stub, method)(request, metadata=metadata, timeout=30)
        except grpc.aio.AioRpcError as exc:
            await context.abort(exc.code(), exc.details() or "", exc.trailing_metadata())

    async def StartSession(self, request: Any, context: _Context) -> Any:
        return await self._forward("StartSession", request, context)

    async def FinishSession(self, request: Any, context: _Context) -> Any:
        return await self._forward("FinishSession", request, context)

    async def ListMyGrants(self, request: Any, context: _Context) -> Any:
        reply = await self._forward("ListMyGrants", request, context)
        if self.change_grant is not None:
            return gateway_pb2.ListMyGrantsResponse(
                grants=[self.change_grant(grant) for grant in reply.grants]
            )
        return reply

    async def GetOrganisationKey(self, request: Any, context: _Context) -> Any:
        reply = await self._forward("GetOrganisationKey", request, context)
        if self.change_key is not None:
            return gateway_pb2.GetOrganisationKeyResponse(key=self.change_key(reply.key))
        return reply

    async def PrepareOperation(self, request: Any, context: _Context) -> Any:
        reply = await self._forward("PrepareOperation", request, context)
        if self.change_record is not None:
            changed = self.change_record(records.decode_record(reply.record))
            return gateway_pb2.PrepareOperationResponse(
                record_id=reply.record_id, record=changed.encode()
            )
        return reply

    async def ExecuteOperation(self, request: Any, context: _Context) -> Any:
        self.executed += 1
        return await self._forward("ExecuteOperation", request, context)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """All four services."""
    deployment = Deployment(tmp_path_factory.mktemp("phone-checks"))
    deployment.start_all()
    yield deployment
    deployment.stop_all()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def organisation(deployment: Deployment) -> escrow.Organisation:
    """An organisation with an EC and an RSA key."""
    return await escrow.organisation(deployment)


@dataclasses.dataclass
class Setting:
    """A phone whose gateway session goes through the stand-in, with a grant on the EC key."""

    phone: escrow.Phone
    stand_in: StandInGateway
    session: client.GatewaySession
    grant_id: str
    signed_before: int

    @property
    def signed(self) -> int:
        """Signatures the phone's signing session made since the setting was made."""
        return self.phone.signing.signed - self.signed_before


@pytest_asyncio.fixture
async def setting(
    deployment: Deployment, organisation: escrow.Organisation
) -> AsyncIterator[Setting]:
    phone = await escrow.phone(deployment, organisation, "checker")
    grant = await escrow.grant(deployment, phone.user_id, organisation.seal, [SIGN])
    upstream = deployment.public_channel("gateway")
    # Only the phone's calls are forwarded; the others answer UNIMPLEMENTED (the base class).
    stand_in = StandInGateway(upstream)  # type: ignore[abstract]
    server = grpc.aio.server()
    gateway_pb2_grpc.add_GatewayServiceServicer_to_server(stand_in, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    session = client.GatewaySession(channel, phone.keystore)
    await session.login()
    try:
        yield Setting(phone, stand_in, session, grant.grant_id, phone.signing.signed)
    finally:
        await channel.close()
        await server.stop(None)
        await upstream.close()
        await phone.close()


async def _use(setting: Setting, organisation: escrow.Organisation) -> client.Use:
    return await setting.session.use_key(
        setting.phone.signing,
        grant_id=setting.grant_id,
        operation=SIGN,
        data=DIGEST,
        purpose="tests",
        trust=organisation.trust,
    )


async def test_an_honest_stand_in_changes_nothing(
    setting: Setting, organisation: escrow.Organisation
) -> None:
    use = await _use(setting, organisation)
    assert use.key.key_id == organisation.seal.key_id
    assert use.key.label == organisation.seal.label
    assert use.record.organisation_key_id == organisation.seal.key_id
    assert use.record.purpose == "tests"
    assert (setting.signed, setting.stand_in.executed) == (1, 1)


def _substitutions(organisation: escrow.Organisation) -> dict[str, RecordChange]:
    other = organisation.encryption
    return {
        "another organisation key": lambda r: dataclasses.replace(
            r, organisation_key_id=other.key_id
        ),
        "another key and its certificate": lambda r: dataclasses.replace(
            r,
            organisation_key_id=other.key_id,
            organisation_certificate_sha256=hashlib.sha256(other.certificate).digest(),
        ),
        "another certificate hash": lambda r: dataclasses.replace(
            r, organisation_certificate_sha256=hashlib.sha256(other.certificate).digest()
        ),
        "another operation": lambda r: dataclasses.replace(
            r, operation=records.Operation.SIGN_RSA_PSS_SHA256
        ),
        "other data": lambda r: dataclasses.replace(
            r, input_sha256=hashlib.sha256(b"something else").digest()
        ),
        "another purpose": lambda r: dataclasses.replace(r, purpose="payroll export"),
        "another grant": lambda r: dataclasses.replace(r, grant_id="0" * 32),
    }


@pytest.mark.parametrize(
    "substitution",
    [
        "another organisation key",
        "another key and its certificate",
        "another certificate hash",
        "another operation",
        "other data",
        "another purpose",
        "another grant",
    ],
)
async def test_a_substituted_record_is_never_co_signed(
    setting: Setting, organisation: escrow.Organisation, substitution: str
) -> None:
    setting.stand_in.change_record = _substitutions(organisation)[substitution]
    with pytest.raises(client.ClientError) as info:
        await _use(setting, organisation)
    assert info.value.reason == "RECORD_MISMATCH"
    assert (setting.signed, setting.stand_in.executed) == (0, 0)


def _foreign_certificate() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "acme-seal")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.DER)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (
            lambda k: gateway_pb2.OrganisationKey(
                key_id=k.key_id, label=k.label, certificate=_foreign_certificate()
            ),
            "ORGANISATION_CERTIFICATE_UNTRUSTED",
        ),
        (
            lambda k: gateway_pb2.OrganisationKey(
                key_id=k.key_id, label=k.label, certificate=b"not a certificate"
            ),
            "ORGANISATION_CERTIFICATE_UNTRUSTED",
        ),
        (
            lambda k: gateway_pb2.OrganisationKey(
                key_id="f" * 32, label=k.label, certificate=k.certificate
            ),
            "ORGANISATION_KEY_MISMATCH",
        ),
    ],
)
async def test_a_forged_key_description_is_refused_before_anything_is_prepared(
    setting: Setting, organisation: escrow.Organisation, change: KeyChange, reason: str
) -> None:
    setting.stand_in.change_key = change
    with pytest.raises(client.ClientError) as info:
        await _use(setting, organisation)
    assert info.value.reason == reason
    assert (setting.signed, setting.stand_in.executed) == (0, 0)


async def test_an_operation_the_key_cannot_do_is_refused_locally(
    setting: Setting, organisation: escrow.Organisation
) -> None:
    with pytest.raises(client.ClientError) as info:
        await setting.session.use_key(
            setting.phone.signing,
            grant_id=setting.grant_id,
            operation=gateway_pb2.OPERATION_DECRYPT,
            data=bytes(256),
            trust=organisation.trust,
        )
    assert info.value.reason == "OPERATION_INVALID"
    assert (setting.signed, setting.stand_in.executed) == (0, 0)


async def test_a_grant_the_user_does_not_have_is_refused(
    setting: Setting, organisation: escrow.Organisation
) -> None:
    with pytest.raises(client.ClientError) as info:
        await setting.session.use_key(
            setting.phone.signing,
            grant_id="0" * 32,
            operation=SIGN,
            data=DIGEST,
            trust=organisation.trust,
        )
    assert info.value.reason == "NO_GRANT"
    assert setting.signed == 0


def _signed_by(key: ec.EllipticCurvePrivateKey, statement: bytes) -> bytes:
    return grants.assemble(
        statement, key.sign(grants.signing_digest(statement), ec.ECDSA(hashes.SHA256()))
    )


def _statement(grant: gateway_pb2.Grant) -> gateway_pb2.GrantStatement:
    return gateway_pb2.GrantStatement.FromString(
        gateway_pb2.SignedGrant.FromString(grant.signed_grant).statement
    )


def _resigned_for_another_key(grant: gateway_pb2.Grant) -> gateway_pb2.Grant:
    statement = _statement(grant)
    statement.key_id = "ab" * 16
    forged = _signed_by(
        ec.generate_private_key(ec.SECP256R1()), statement.SerializeToString(deterministic=True)
    )
    changed = gateway_pb2.Grant()
    changed.CopyFrom(grant)
    changed.signed_grant = forged
    return changed


def _unsigned(grant: gateway_pb2.Grant) -> gateway_pb2.Grant:
    changed = gateway_pb2.Grant()
    changed.CopyFrom(grant)
    changed.signed_grant = b""
    return changed


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        pytest.param(_resigned_for_another_key, "GRANT_FORGED", id="re-signed"),
        pytest.param(_unsigned, "GRANT_MALFORMED", id="unsigned"),
    ],
)
async def test_a_grant_the_ra_did_not_sign_is_refused(
    setting: Setting,
    organisation: escrow.Organisation,
    change: GrantChange,
    reason: str,
) -> None:
    setting.stand_in.change_grant = change
    with pytest.raises(client.ClientError) as info:
        await _use(setting, organisation)
    assert info.value.reason == reason
    assert (setting.signed, setting.stand_in.executed) == (0, 0)


async def test_another_users_signed_grant_is_refused(
    deployment: Deployment, setting: Setting, organisation: escrow.Organisation
) -> None:
    other = await escrow.phone(deployment, organisation, "other")
    try:
        theirs = await escrow.grant(deployment, other.user_id, organisation.seal, [SIGN])
    finally:
        await other.close()

    def swap(grant: gateway_pb2.Grant) -> gateway_pb2.Grant:
        # Genuinely signed by the RA, under this user's grant id: only the statement says whose.
        changed = gateway_pb2.Grant()
        changed.CopyFrom(grant)
        changed.signed_grant = theirs.signed_grant
        return changed

    setting.stand_in.change_grant = swap
    with pytest.raises(client.ClientError) as info:
        await _use(setting, organisation)
    assert info.value.reason == "GRANT_MISMATCH"
    assert (setting.signed, setting.stand_in.executed) == (0, 0)


async def test_the_description_beside_the_signed_grant_is_not_believed(
    setting: Setting, organisation: escrow.Organisation
) -> None:
    def describe_another_key(grant: gateway_pb2.Grant) -> gateway_pb2.Grant:
        changed = gateway_pb2.Grant()
        changed.CopyFrom(grant)
        changed.key_id = organisation.encryption.key_id
        changed.purpose = "something else"
        return changed

    setting.stand_in.change_grant = describe_another_key
    use = await _use(setting, organisation)
    # The phone went by what the RA signed: the grant's own key and purpose.
    assert use.record.organisation_key_id == organisation.seal.key_id
    assert use.key.key_id == organisation.seal.key_id
