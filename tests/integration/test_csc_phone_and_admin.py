"""The CSC endpoint's phone side and its administration, between real processes: every wrong
answer to an approval (no session, a malformed, unknown or other user's approval, records of the
wrong number, order, digest, purpose or grant, records the gateway did not prepare or that were
tampered with, a signature not the user's, records that answered another approval, an approval
already answered) is a clear gRPC error
with its stable reason that logs nothing and leaves the approval pending and approvable; a
pending approval expires; a revoked application's or grant's approvals leave the phone; and
CscAdminService is the administrator's alone, refusing bad registrations and revocations."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import aiohttp
import grpc
import pytest
import pytest_asyncio

from client import csc_seal
from mobilesign import records
from mobilesign.rpc.status import reason_of
from mobilesign.testing import Deployment
from mobilesign.v1 import csc_pb2, csc_pb2_grpc, gateway_pb2, ra_pb2
from tests.integration import csc, escrow

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]
Code = grpc.StatusCode
SIGN = gateway_pb2.OPERATION_SIGN_DIGEST
#: Pending approvals live this long here, so that one can be seen to expire (long enough for
#: the few calls each test makes while its approval is pending, records co-signed beforehand).
APPROVAL_SECONDS = 4
APP_NAME = "Phone side"
DIGEST = hashlib.sha256(b"page one").digest()
SECOND_DIGEST = hashlib.sha256(b"page two").digest()
OTHER_DIGEST = hashlib.sha256(b"another document").digest()


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """Four services with the CSC endpoint on, and short-lived pending approvals."""
    deployment = Deployment(
        tmp_path_factory.mktemp("csc-phone"),
        extra_env={"MOBILESIGN_GATEWAY_CSC_APPROVAL_SECONDS": str(APPROVAL_SECONDS)},
    )
    deployment.start_all()
    yield deployment
    deployment.stop_all()


@dataclasses.dataclass
class Setting:
    """A phone with two grants on the organisation's seal key, an application registered for
    the first, its token, an HTTP client, and the phone's calls by hand."""

    deployment: Deployment
    organisation: escrow.Organisation
    phone: escrow.Phone
    grant: gateway_pb2.Grant
    other_grant: gateway_pb2.Grant
    app: csc.App
    token: str
    http: aiohttp.ClientSession
    hand: csc.ByHand

    async def ask(self, description: str) -> str:
        """A pending approval of both pages on the first grant."""
        return await csc.authorize_later(
            self.http,
            self.app,
            self.token,
            self.grant.grant_id,
            [DIGEST, SECOND_DIGEST],
            description,
        )

    async def check(self, approval_id: str) -> tuple[int, dict[str, object]]:
        """credentials/authorizeCheck for ``approval_id``."""
        return await csc.post(
            self.http,
            self.app,
            "credentials/authorizeCheck",
            {"responseID": approval_id},
            self.token,
        )

    async def pages(self, description: str) -> list[gateway_pb2.CoSignedRecord]:
        """Co-signed records for both pages, as the approval ``description`` wants them."""
        purpose = f"{APP_NAME}: {description}"
        return [
            await self.hand.cosigned(self.grant.grant_id, digest, purpose)
            for digest in (DIGEST, SECOND_DIGEST)
        ]

    async def still_open(self, approval_id: str, size: int) -> None:
        """Nothing logged since ``size``; the approval still pending (listed on the phone, the
        application told to wait)."""
        assert await escrow.log_size(self.deployment) == size
        assert approval_id in await self.hand.pending()
        assert await self.check(approval_id) == (202, {"responseID": approval_id})

    async def approved(self, approval_id: str, cosigned: list[gateway_pb2.CoSignedRecord]) -> None:
        """The approval is given with ``cosigned`` and the application receives its SAD."""
        await self.hand.approve(approval_id, cosigned)
        status, answer = await self.check(approval_id)
        assert status == 200, answer
        assert answer["SAD"]
        assert approval_id not in await self.hand.pending()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def setting(deployment: Deployment) -> AsyncIterator[Setting]:
    """The module's phone, grants and application."""
    organisation = await escrow.organisation(deployment, "approvals")
    phone = await escrow.phone(deployment, organisation, "approver")
    grant = await escrow.grant(deployment, phone.user_id, organisation.seal, [SIGN])
    other_grant = await escrow.grant(deployment, phone.user_id, organisation.seal, [SIGN])
    app = await csc.register(deployment, APP_NAME, [grant.grant_id])
    channel = deployment.public_channel("gateway")
    try:
        hand = await csc.by_hand(channel, phone)
        async with csc.http(deployment) as http:
            token = await csc_seal.access_token(http, app.base_url, app.client_id, app.secret)
            yield Setting(
                deployment, organisation, phone, grant, other_grant, app, token, http, hand
            )
    finally:
        await channel.close()
        await phone.close()


async def _expect(call: Awaitable[object], code: grpc.StatusCode, reason: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert (info.value.code(), reason_of(info.value)) == (code, reason), info.value.details()


def _flipped(data: bytes, index: int) -> bytes:
    changed = bytearray(data)
    changed[index] ^= 0x01
    return bytes(changed)


def _with(original: gateway_pb2.CoSignedRecord, /, **fields: object) -> gateway_pb2.CoSignedRecord:
    """A copy of ``original`` with ``fields`` replaced."""
    copy = gateway_pb2.CoSignedRecord()
    copy.CopyFrom(original)
    for name, value in fields.items():
        setattr(copy, name, value)
    return copy


# The approval's records ------------------------------------------------------------------

#: A case: (the setting, the two good records, the purpose) -> the records to answer with.
Case = Callable[
    [Setting, list[gateway_pb2.CoSignedRecord], str],
    Awaitable[list[gateway_pb2.CoSignedRecord]],
]


async def _none(
    s: Setting, good: list[gateway_pb2.CoSignedRecord], purpose: str
) -> list[gateway_pb2.CoSignedRecord]:
    return []


async def _one(
    s: Setting, good: list[gateway_pb2.CoSignedRecord], purpose: str
) -> list[gateway_pb2.CoSignedRecord]:
    return good[:1]


async def _three(
    s: Setting, good: list[gateway_pb2.CoSignedRecord], purpose: str
) -> list[gateway_pb2.CoSignedRecord]:
    return [*good, await s.hand.cosigned(s.grant.grant_id, DIGEST, purpose)]


async def _same_id(
    s: Setting, good: list[gateway_pb2.CoSignedRecord], purpose: str
) -> list[gateway_pb2.CoSignedRecord]:
    return [good[0], good[0]]


async def _swapped(
    s: Setting, good: list[gateway_pb2.CoSignedRecord], purpose: str
) -> list[gateway_pb2.CoSignedRecord]:
    return [good[1], good[0]]


async def _other_digest(
    s: Setting, good: list[gateway_pb2.CoSignedRecord], purpose: str
) -> list[gateway_pb2.CoSignedRecord]:
    return [await s.hand.cosigned(s.grant.grant_id, OTHER_DIGEST, purpose), good[1]]


async def _other_purpose(
    s: Setting, good: list[gateway_pb2.CoSignedRecord], purpose: str
) -> list[gateway_pb2.CoSignedRecord]:
    return [await s.hand.cosigned(s.grant.grant_id, DIGEST, f"{purpose}!"), good[1]]


async def _other_grant(
    s: Setting, good: list[gateway_pb2.CoSignedRecord], purpose: str
) -> list[gateway_pb2.CoSignedRecord]:
    return [await s.hand.cosigned(s.other_grant.grant_id, DIGEST, purpose), good[1]]


async def _tampered(
    s: Setting, good: list[gateway_pb2.CoSignedRecord], purpose: str
) -> list[gateway_pb2.CoSignedRecord]:
    # The last byte is the gateway's nonce: the record still decodes, the MAC does not hold.
    return [_with(good[0], record=_flipped(good[0].record, -1)), good[1]]


async def _retargeted(
    s: Setting, good: list[gateway_pb2.CoSignedRecord], purpose: str
) -> list[gateway_pb2.CoSignedRecord]:
    # The gateway's record made to name the other page's digest, and co-signed so: its MAC
    # covers the digest.
    changed = dataclasses.replace(
        records.decode_record(good[1].record), input_sha256=hashlib.sha256(DIGEST).digest()
    ).encode()
    signed = gateway_pb2.CoSignedRecord(
        record_id=good[1].record_id,
        record=changed,
        user_signature=await s.hand.signing.sign(changed),
    )
    return [good[0], signed]


async def _not_prepared(
    s: Setting, good: list[gateway_pb2.CoSignedRecord], purpose: str
) -> list[gateway_pb2.CoSignedRecord]:
    # The phone's own record, which it co-signs: without the gateway's MAC it is no record.
    forged = dataclasses.replace(
        records.decode_record(good[0].record), gateway_nonce=secrets.token_bytes(16)
    ).encode()
    signed = gateway_pb2.CoSignedRecord(
        record_id=good[0].record_id, record=forged, user_signature=await s.hand.signing.sign(forged)
    )
    return [signed, good[1]]


async def _other_id(
    s: Setting, good: list[gateway_pb2.CoSignedRecord], purpose: str
) -> list[gateway_pb2.CoSignedRecord]:
    return [_with(good[0], record_id=secrets.token_hex(16)), good[1]]


async def _not_bytes(
    s: Setting, good: list[gateway_pb2.CoSignedRecord], purpose: str
) -> list[gateway_pb2.CoSignedRecord]:
    return [_with(good[0], record=b"MSR1 and nothing else"), good[1]]


async def _others_signature(
    s: Setting, good: list[gateway_pb2.CoSignedRecord], purpose: str
) -> list[gateway_pb2.CoSignedRecord]:
    return [_with(good[0], user_signature=good[1].user_signature), good[1]]


async def _flipped_signature(
    s: Setting, good: list[gateway_pb2.CoSignedRecord], purpose: str
) -> list[gateway_pb2.CoSignedRecord]:
    return [good[0], _with(good[1], user_signature=_flipped(good[1].user_signature, 5))]


async def _no_signature(
    s: Setting, good: list[gateway_pb2.CoSignedRecord], purpose: str
) -> list[gateway_pb2.CoSignedRecord]:
    return [_with(good[0], user_signature=b""), good[1]]


CASES: dict[str, tuple[Case, grpc.StatusCode, str]] = {
    "no records": (_none, Code.INVALID_ARGUMENT, "APPROVAL_MISMATCH"),
    "one record for two digests": (_one, Code.INVALID_ARGUMENT, "APPROVAL_MISMATCH"),
    "three records for two digests": (_three, Code.INVALID_ARGUMENT, "APPROVAL_MISMATCH"),
    "one record twice": (_same_id, Code.INVALID_ARGUMENT, "APPROVAL_MISMATCH"),
    "records out of order": (_swapped, Code.INVALID_ARGUMENT, "INPUT_MISMATCH"),
    "a record for another digest": (_other_digest, Code.INVALID_ARGUMENT, "INPUT_MISMATCH"),
    "a record with another purpose": (_other_purpose, Code.INVALID_ARGUMENT, "APPROVAL_MISMATCH"),
    "a record under another grant": (_other_grant, Code.INVALID_ARGUMENT, "APPROVAL_MISMATCH"),
    "tampered record bytes": (_tampered, Code.NOT_FOUND, "RECORD_NOT_FOUND"),
    "a record changed to another digest": (_retargeted, Code.NOT_FOUND, "RECORD_NOT_FOUND"),
    "a record the gateway did not prepare": (_not_prepared, Code.NOT_FOUND, "RECORD_NOT_FOUND"),
    "a record under another id": (_other_id, Code.NOT_FOUND, "RECORD_NOT_FOUND"),
    "bytes that are no record": (_not_bytes, Code.NOT_FOUND, "RECORD_NOT_FOUND"),
    "another record's signature": (
        _others_signature,
        Code.PERMISSION_DENIED,
        "USER_SIGNATURE_INVALID",
    ),
    "a flipped signature": (_flipped_signature, Code.PERMISSION_DENIED, "USER_SIGNATURE_INVALID"),
    "no signature": (_no_signature, Code.PERMISSION_DENIED, "USER_SIGNATURE_INVALID"),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_wrong_records_are_refused_and_the_approval_stays_open(
    setting: Setting, case: str
) -> None:
    build, code, reason = CASES[case]
    description = f"case {secrets.token_hex(3)}"
    # Every record is co-signed before the approval exists, so that it is still pending for
    # the checks after the refusal.
    good = await setting.pages(description)
    wrong = await build(setting, good, f"{APP_NAME}: {description}")
    size = await escrow.log_size(setting.deployment)
    approval_id = await setting.ask(description)
    await _expect(setting.hand.approve(approval_id, wrong), code, reason)
    await setting.still_open(approval_id, size)
    await setting.approved(approval_id, good)


async def test_calls_without_a_session_or_a_good_approval_id_are_refused(
    setting: Setting,
) -> None:
    description = "ids and sessions"
    good = await setting.pages(description)
    size = await escrow.log_size(setting.deployment)
    approval_id = await setting.ask(description)
    stub, token = setting.hand.stub, setting.hand.token
    approve = gateway_pb2.ApproveRequest(approval_id=approval_id, records=good)
    decline = gateway_pb2.DeclineRequest(approval_id=approval_id)
    for metadata, reason in (
        ((), "SESSION_REQUIRED"),
        ((("authorization", token),), "SESSION_REQUIRED"),  # not a Bearer token
        ((("authorization", f"Bearer {secrets.token_urlsafe(32)}"),), "SESSION_EXPIRED"),
    ):
        await _expect(stub.Approve(approve, metadata=metadata), Code.UNAUTHENTICATED, reason)
        await _expect(stub.Decline(decline, metadata=metadata), Code.UNAUTHENTICATED, reason)
        await _expect(
            stub.ListApprovals(gateway_pb2.ListApprovalsRequest(), metadata=metadata),
            Code.UNAUTHENTICATED,
            reason,
        )
    for malformed in ("", "not-an-approval", approval_id.upper(), approval_id + "0"):
        await _expect(
            setting.hand.approve(malformed, good), Code.INVALID_ARGUMENT, "MALFORMED_APPROVAL_ID"
        )
        await _expect(
            setting.hand.decline(malformed), Code.INVALID_ARGUMENT, "MALFORMED_APPROVAL_ID"
        )
    unknown = secrets.token_hex(16)
    await _expect(setting.hand.approve(unknown, good), Code.NOT_FOUND, "APPROVAL_NOT_FOUND")
    await _expect(setting.hand.decline(unknown), Code.NOT_FOUND, "APPROVAL_NOT_FOUND")
    await setting.still_open(approval_id, size)
    await setting.approved(approval_id, good)


async def test_another_users_approval_is_not_found_for_them(setting: Setting) -> None:
    other = await escrow.phone(setting.deployment, setting.organisation, "other")
    channel = setting.deployment.public_channel("gateway")
    try:
        other_hand = await csc.by_hand(channel, other)
        other_grant = await escrow.grant(
            setting.deployment, other.user_id, setting.organisation.seal, [SIGN]
        )
        description = "someone else's"
        purpose = f"{APP_NAME}: {description}"
        # The other user's own, good records for the same digests and purpose.
        theirs = [
            await other_hand.cosigned(other_grant.grant_id, digest, purpose)
            for digest in (DIGEST, SECOND_DIGEST)
        ]
        good = await setting.pages(description)
        size = await escrow.log_size(setting.deployment)
        approval_id = await setting.ask(description)
        assert approval_id not in await other_hand.pending()
        for records_given in (theirs, good):
            await _expect(
                other_hand.approve(approval_id, records_given),
                Code.NOT_FOUND,
                "APPROVAL_NOT_FOUND",
            )
        await _expect(other_hand.decline(approval_id), Code.NOT_FOUND, "APPROVAL_NOT_FOUND")
        # Nor do the other user's records serve the approval's own user.
        await _expect(setting.hand.approve(approval_id, theirs), Code.NOT_FOUND, "RECORD_NOT_FOUND")
        await setting.still_open(approval_id, size)
        await setting.approved(approval_id, good)
    finally:
        await channel.close()
        await other.close()


async def test_an_answered_approval_is_closed(setting: Setting) -> None:
    good = await setting.pages("answered")
    again = await setting.pages("answered")
    size = await escrow.log_size(setting.deployment)
    approved = await setting.ask("answered")
    await setting.approved(approved, good)
    await _expect(
        setting.hand.approve(approved, again), Code.FAILED_PRECONDITION, "APPROVAL_CLOSED"
    )
    await _expect(setting.hand.decline(approved), Code.FAILED_PRECONDITION, "APPROVAL_CLOSED")

    declined = await setting.ask("answered")
    await setting.hand.decline(declined)
    assert declined not in await setting.hand.pending()
    await _expect(
        setting.hand.approve(declined, again), Code.FAILED_PRECONDITION, "APPROVAL_CLOSED"
    )
    await _expect(setting.hand.decline(declined), Code.FAILED_PRECONDITION, "APPROVAL_CLOSED")
    status, answer = await setting.check(declined)
    assert (status, answer.get("reason")) == (403, "APPROVAL_DECLINED"), answer
    assert await escrow.log_size(setting.deployment) == size


async def test_a_pending_approval_expires(setting: Setting) -> None:
    good = await setting.pages("too late")
    size = await escrow.log_size(setting.deployment)
    approval_id = await setting.ask("too late")
    assert approval_id in await setting.hand.pending()
    await asyncio.sleep(APPROVAL_SECONDS + 1)
    status, answer = await setting.check(approval_id)
    assert (status, answer.get("reason")) == (400, "APPROVAL_EXPIRED"), answer
    assert approval_id not in await setting.hand.pending()
    await _expect(
        setting.hand.approve(approval_id, good), Code.FAILED_PRECONDITION, "APPROVAL_CLOSED"
    )
    await _expect(setting.hand.decline(approval_id), Code.FAILED_PRECONDITION, "APPROVAL_CLOSED")
    # Still expired, not declined, for the application.
    status, answer = await setting.check(approval_id)
    assert (status, answer.get("reason")) == (400, "APPROVAL_EXPIRED"), answer
    assert await escrow.log_size(setting.deployment) == size


async def test_a_revoked_applications_approval_leaves_the_phone(setting: Setting) -> None:
    app = await csc.register(setting.deployment, "Short-lived desk", [setting.grant.grant_id])
    token = await csc_seal.access_token(setting.http, app.base_url, app.client_id, app.secret)
    description = "before revocation"
    cosigned = [
        await setting.hand.cosigned(
            setting.grant.grant_id, digest, f"Short-lived desk: {description}"
        )
        for digest in (DIGEST, SECOND_DIGEST)
    ]
    size = await escrow.log_size(setting.deployment)
    approval_id = await csc.authorize_later(
        setting.http, app, token, setting.grant.grant_id, [DIGEST, SECOND_DIGEST], description
    )
    assert approval_id in await setting.hand.pending()
    async with setting.deployment.channel("gateway") as channel:
        await csc_pb2_grpc.CscAdminServiceStub(channel).RevokeApplication(
            csc_pb2.RevokeApplicationRequest(client_id=app.client_id)
        )
    assert approval_id not in await setting.hand.pending()
    await _expect(
        setting.hand.approve(approval_id, cosigned), Code.FAILED_PRECONDITION, "APPROVAL_CLOSED"
    )
    await _expect(setting.hand.decline(approval_id), Code.FAILED_PRECONDITION, "APPROVAL_CLOSED")
    status, answer = await csc.post(
        setting.http, app, "credentials/authorizeCheck", {"responseID": approval_id}, token
    )
    assert (status, answer.get("reason")) == (401, "TOKEN_INVALID"), answer
    assert await escrow.log_size(setting.deployment) == size


async def test_a_record_answers_one_approval_only(setting: Setting) -> None:
    # Two requests for the same pages with the same description: the records that answered the
    # first cannot answer the second, which stays pending until records of its own come.
    description = "the same pages twice"
    first = await setting.ask(description)
    second = await setting.ask(description)
    cosigned = await setting.pages(description)
    await setting.approved(first, cosigned)
    size = await escrow.log_size(setting.deployment)
    await _expect(
        setting.hand.approve(second, cosigned), Code.INVALID_ARGUMENT, "APPROVAL_MISMATCH"
    )
    await setting.still_open(second, size)
    await setting.approved(second, await setting.pages(description))


async def test_a_revoked_grants_approvals_leave_the_phone(setting: Setting) -> None:
    grant = await escrow.grant(
        setting.deployment, setting.phone.user_id, setting.organisation.seal, [SIGN]
    )
    app = await csc.register(setting.deployment, "Grant desk", [grant.grant_id])
    token = await csc_seal.access_token(setting.http, app.base_url, app.client_id, app.secret)
    approval_id = await csc.authorize_later(
        setting.http, app, token, grant.grant_id, [DIGEST], "before the grant ends"
    )
    assert approval_id in await setting.hand.pending()
    async with setting.deployment.channel("ra") as channel:
        await escrow.admin(channel).RevokeGrant(ra_pb2.RevokeGrantRequest(grant_id=grant.grant_id))
    assert approval_id not in await setting.hand.pending()


# Administration ----------------------------------------------------------------------------


async def _applications(deployment: Deployment) -> list[csc_pb2.Application]:
    async with deployment.channel("gateway") as channel:
        listed = await csc_pb2_grpc.CscAdminServiceStub(channel).ListApplications(
            csc_pb2.ListApplicationsRequest()
        )
    return list(listed.applications)


def _admin_calls(
    channel: grpc.aio.Channel, grant_id: str, client_id: str
) -> list[Callable[[], Awaitable[object]]]:
    """Each CscAdminService method, with a request that an administrator could make."""
    stub = csc_pb2_grpc.CscAdminServiceStub(channel)
    return [
        lambda: stub.RegisterApplication(
            csc_pb2.RegisterApplicationRequest(name="Intruder", grant_ids=[grant_id])
        ),
        lambda: stub.ListApplications(csc_pb2.ListApplicationsRequest()),
        lambda: stub.RevokeApplication(csc_pb2.RevokeApplicationRequest(client_id=client_id)),
    ]


@pytest.mark.parametrize("identity", ["cosigner", "hsm-proxy", "ra", "gateway"])
async def test_only_the_administrator_manages_applications(setting: Setting, identity: str) -> None:
    before = await _applications(setting.deployment)
    async with setting.deployment.channel("gateway", identity) as channel:
        for call in _admin_calls(channel, setting.grant.grant_id, setting.app.client_id):
            await _expect(call(), Code.PERMISSION_DENIED, "CALLER_NOT_AUTHORISED")
    assert await _applications(setting.deployment) == before


async def test_the_public_listener_serves_no_administration(setting: Setting) -> None:
    before = await _applications(setting.deployment)
    async with setting.deployment.public_channel("gateway") as channel:
        for call in _admin_calls(channel, setting.grant.grant_id, setting.app.client_id):
            await _expect(call(), Code.UNAUTHENTICATED, "CALLER_NOT_AUTHORISED")
    assert await _applications(setting.deployment) == before


async def test_bad_registrations_and_revocations_are_refused(setting: Setting) -> None:
    before = await _applications(setting.deployment)
    grant_id = setting.grant.grant_id
    async with setting.deployment.channel("gateway") as channel:
        stub = csc_pb2_grpc.CscAdminServiceStub(channel)

        def register(name: str, grant_ids: list[str]) -> Awaitable[object]:
            return stub.RegisterApplication(
                csc_pb2.RegisterApplicationRequest(name=name, grant_ids=grant_ids)
            )

        for name in ("", " Desk", "Desk\n", "x" * 65):
            await _expect(
                register(name, [grant_id]), Code.INVALID_ARGUMENT, "APPLICATION_NAME_INVALID"
            )
        for grant_ids in ([], [grant_id, grant_id]):
            await _expect(register("Desk", grant_ids), Code.INVALID_ARGUMENT, "GRANTS_INVALID")
        for malformed in ("not-a-grant", grant_id.upper(), grant_id[:-1]):
            await _expect(
                register("Desk", [grant_id, malformed]),
                Code.INVALID_ARGUMENT,
                "MALFORMED_GRANT_ID",
            )
        await _expect(
            register("Desk", [grant_id, secrets.token_hex(16)]), Code.NOT_FOUND, "NO_GRANT"
        )
        await _expect(
            stub.RevokeApplication(
                csc_pb2.RevokeApplicationRequest(client_id=secrets.token_hex(16))
            ),
            Code.NOT_FOUND,
            "NO_APPLICATION",
        )
        for malformed in ("", "not-a-client", setting.app.client_id.upper()):
            await _expect(
                stub.RevokeApplication(csc_pb2.RevokeApplicationRequest(client_id=malformed)),
                Code.INVALID_ARGUMENT,
                "MALFORMED_CLIENT_ID",
            )
    assert await _applications(setting.deployment) == before
