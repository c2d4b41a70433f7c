"""Bad input to the administrator RPCs (at the RA) and the gateway's public RPCs: a clear status
with a stable reason, and nothing created."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest
import pytest_asyncio

from mobilesign.rpc.status import reason_of
from mobilesign.testing import Deployment
from mobilesign.v1 import gateway_pb2, ra_pb2, ra_pb2_grpc
from tests.integration import escrow

pytestmark = pytest.mark.integration
Code = grpc.StatusCode
SIGN = gateway_pb2.OPERATION_SIGN_DIGEST
DECRYPT = gateway_pb2.OPERATION_DECRYPT


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """All four services."""
    deployment = Deployment(tmp_path_factory.mktemp("gateway-input"))
    deployment.start_all()
    yield deployment
    deployment.stop_all()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def organisation(deployment: Deployment) -> escrow.Organisation:
    """An organisation with an EC and an RSA key."""
    return await escrow.organisation(deployment, "inputs")


async def _expect(call: object, code: grpc.StatusCode, reason: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    assert info.value.code() == code, info.value.details()
    assert reason_of(info.value) == reason


async def test_users_and_tickets(deployment: Deployment) -> None:
    async with deployment.channel("ra") as channel:
        admin = escrow.admin(channel)
        registry = ra_pb2_grpc.RegistrationServiceStub(channel)
        await admin.CreateUser(ra_pb2.CreateUserRequest(user_id="dora"))
        for user_id in ("", "has space", "x" * 65, "semi;colon", "dora\n"):
            await _expect(
                admin.CreateUser(ra_pb2.CreateUserRequest(user_id=user_id)),
                Code.INVALID_ARGUMENT,
                "MALFORMED_USER_ID",
            )
        await _expect(
            admin.CreateUser(ra_pb2.CreateUserRequest(user_id="dora")),
            Code.ALREADY_EXISTS,
            "USER_EXISTS",
        )
        await _expect(
            admin.CreateUser(ra_pb2.CreateUserRequest(user_id="eve", display_name="x" * 201)),
            Code.INVALID_ARGUMENT,
            "MALFORMED_DISPLAY_NAME",
        )
        await _expect(
            admin.GetUser(ra_pb2.GetUserRequest(user_id="eve")),
            Code.NOT_FOUND,
            "USER_NOT_FOUND",
        )
        await _expect(
            admin.IssueEnrolmentTicket(ra_pb2.IssueEnrolmentTicketRequest(user_id="eve")),
            Code.NOT_FOUND,
            "USER_NOT_FOUND",
        )
        for ttl in (59, 7 * 86_400 + 1):
            await _expect(
                admin.IssueEnrolmentTicket(
                    ra_pb2.IssueEnrolmentTicketRequest(user_id="dora", ttl_seconds=ttl)
                ),
                Code.INVALID_ARGUMENT,
                "TTL_OUT_OF_RANGE",
            )
        for key_id in ("", "ab" * 31, "AB" * 32):
            await _expect(
                registry.GetKeyStatus(ra_pb2.GetKeyStatusRequest(key_id=key_id)),
                Code.INVALID_ARGUMENT,
                "MALFORMED_KEY_ID",
            )


async def test_grants(deployment: Deployment, organisation: escrow.Organisation) -> None:
    now = int(time.time())
    good = {
        "user_id": "frank",
        "key_id": organisation.seal.key_id,
        "operations": [SIGN],
        "not_before_unix": now,
        "not_after_unix": now + 60,
        "quota_total": 5,
        "quota_daily": 5,
    }
    cases: list[tuple[dict[str, object], grpc.StatusCode, str]] = [
        ({"user_id": "nobody"}, Code.NOT_FOUND, "USER_NOT_FOUND"),
        ({"key_id": "00" * 16}, Code.NOT_FOUND, "ORGANISATION_KEY_NOT_FOUND"),
        ({"operations": []}, Code.INVALID_ARGUMENT, "OPERATION_INVALID"),
        ({"operations": [0]}, Code.INVALID_ARGUMENT, "OPERATION_INVALID"),
        ({"operations": [DECRYPT]}, Code.INVALID_ARGUMENT, "OPERATION_INVALID"),  # EC key
        ({"not_after_unix": now}, Code.INVALID_ARGUMENT, "WINDOW_INVALID"),
        ({"quota_total": 0}, Code.INVALID_ARGUMENT, "QUOTA_INVALID"),
        ({"quota_daily": 0}, Code.INVALID_ARGUMENT, "QUOTA_INVALID"),
        ({"quota_total": 10**7}, Code.INVALID_ARGUMENT, "QUOTA_INVALID"),
        ({"purpose": "p" * 201}, Code.INVALID_ARGUMENT, "PURPOSE_TOO_LONG"),
    ]
    async with deployment.channel("ra") as channel:
        admin = escrow.admin(channel)
        await admin.CreateUser(ra_pb2.CreateUserRequest(user_id="frank"))
        for change, code, reason in cases:
            request = ra_pb2.CreateGrantRequest(**{**good, **change})  # type: ignore[arg-type]
            await _expect(admin.CreateGrant(request), code, reason)
        listed = await admin.ListGrants(ra_pb2.ListGrantsRequest(user_id="frank"))
        assert list(listed.grants) == []
        await _expect(
            admin.RevokeGrant(ra_pb2.RevokeGrantRequest(grant_id="ab" * 16)),
            Code.NOT_FOUND,
            "GRANT_NOT_FOUND",
        )


async def test_operations_and_log_queries(
    deployment: Deployment, organisation: escrow.Organisation
) -> None:
    phone = await escrow.phone(deployment, organisation, "gina")
    try:
        grant = await escrow.grant(deployment, phone.user_id, organisation.seal, [SIGN])
        stub = phone.gateway._stub
        metadata = phone.gateway._metadata
        await _expect(
            stub.PrepareOperation(
                gateway_pb2.PrepareOperationRequest(grant_id=grant.grant_id, input=bytes(32)),
                metadata=metadata,
            ),
            Code.INVALID_ARGUMENT,
            "OPERATION_INVALID",
        )
        await _expect(
            stub.PrepareOperation(
                gateway_pb2.PrepareOperationRequest(
                    grant_id=grant.grant_id, operation=SIGN, input=bytes(32), purpose="p" * 201
                ),
                metadata=metadata,
            ),
            Code.INVALID_ARGUMENT,
            "PURPOSE_TOO_LONG",
        )
        await _expect(
            stub.PrepareOperation(
                gateway_pb2.PrepareOperationRequest(
                    grant_id="not-a-grant", operation=SIGN, input=bytes(32)
                ),
                metadata=metadata,
            ),
            Code.PERMISSION_DENIED,
            "NO_GRANT",
        )
        size = await escrow.log_size(deployment)
        await _expect(
            stub.GetInclusionProof(
                gateway_pb2.GetInclusionProofRequest(entry_index=0, tree_size=size + 1)
            ),
            Code.OUT_OF_RANGE,
            "TREE_SIZE_TOO_LARGE",
        )
        await _expect(
            stub.GetInclusionProof(
                gateway_pb2.GetInclusionProofRequest(entry_index=size, tree_size=size)
            ),
            Code.OUT_OF_RANGE,
            "ENTRY_OUT_OF_RANGE",
        )
        await _expect(
            stub.GetConsistencyProof(
                gateway_pb2.GetConsistencyProofRequest(old_size=0, new_size=0)
            ),
            Code.INVALID_ARGUMENT,
            "SIZES_INVALID",
        )
        await _expect(
            stub.GetConsistencyProof(
                gateway_pb2.GetConsistencyProofRequest(old_size=1, new_size=size + 5)
            ),
            Code.OUT_OF_RANGE,
            "TREE_SIZE_TOO_LARGE",
        )
        await _expect(
            stub.GetLogEntry(gateway_pb2.GetLogEntryRequest(entry_index=size + 10)),
            Code.OUT_OF_RANGE,
            "ENTRY_OUT_OF_RANGE",
        )
        # Integers beyond what storage holds (SQLite stops at 2**63 - 1) never reach it.
        for huge in (2**63, 2**64 - 1):
            await _expect(
                stub.GetLogEntry(gateway_pb2.GetLogEntryRequest(entry_index=huge)),
                Code.OUT_OF_RANGE,
                "ENTRY_OUT_OF_RANGE",
            )
            await _expect(
                stub.GetInclusionProof(
                    gateway_pb2.GetInclusionProofRequest(entry_index=huge, tree_size=huge)
                ),
                Code.OUT_OF_RANGE,
                "TREE_SIZE_TOO_LARGE",
            )
            await _expect(
                stub.GetConsistencyProof(
                    gateway_pb2.GetConsistencyProofRequest(old_size=1, new_size=huge)
                ),
                Code.OUT_OF_RANGE,
                "TREE_SIZE_TOO_LARGE",
            )
        assert await escrow.log_size(deployment) == size
    finally:
        await phone.close()


@pytest.mark.parametrize(
    ("key_id", "code", "reason"),
    [
        ("", Code.INVALID_ARGUMENT, "MALFORMED_KEY_ID"),
        ("A" * 32, Code.INVALID_ARGUMENT, "MALFORMED_KEY_ID"),
        ("0" * 31, Code.INVALID_ARGUMENT, "MALFORMED_KEY_ID"),
        ("0" * 32 + "\n", Code.INVALID_ARGUMENT, "MALFORMED_KEY_ID"),
        ("0" * 64, Code.INVALID_ARGUMENT, "MALFORMED_KEY_ID"),
        ("0" * 32, Code.NOT_FOUND, "ORGANISATION_KEY_NOT_FOUND"),
    ],
)
async def test_organisation_key_lookup(
    deployment: Deployment,
    organisation: escrow.Organisation,
    key_id: str,
    code: grpc.StatusCode,
    reason: str,
) -> None:
    async with deployment.public_channel("gateway") as channel:
        stub = escrow.public(channel)
        await _expect(
            stub.GetOrganisationKey(gateway_pb2.GetOrganisationKeyRequest(key_id=key_id)),
            code,
            reason,
        )
        # Anyone may read a real key's description: it is what phones check records against.
        found = await stub.GetOrganisationKey(
            gateway_pb2.GetOrganisationKeyRequest(key_id=organisation.seal.key_id)
        )
    assert found.key == organisation.seal


@pytest.mark.parametrize("key_id", ["", "0" * 63, "G" * 64, "0" * 32, "0" * 64 + " "])
async def test_personal_certificate_lookup_refuses_malformed_key_ids(
    deployment: Deployment, key_id: str
) -> None:
    async with deployment.public_channel("gateway") as channel:
        await _expect(
            escrow.public(channel).GetPersonalCertificate(
                gateway_pb2.GetPersonalCertificateRequest(key_id=key_id)
            ),
            Code.INVALID_ARGUMENT,
            "MALFORMED_KEY_ID",
        )
