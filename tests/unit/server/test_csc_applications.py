"""The CSC endpoint's registered applications on both back ends: registration (name rules; the
number, uniqueness, format and existence of grants, each with its reason and nothing stored on a
refusal), listing, client authentication (one reason for every failure), access tokens (valid,
expired, unknown, revoked), revocation (tokens gone, open approvals withdrawn) and that secrets
and tokens are kept only as their SHA-256; a request racing its application's revocation stores
nothing."""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import cast

import pytest

from mobilesign.errors import Error, Kind
from mobilesign.storage.database import Database
from mobilesign.storage.schema import Location, PostgresStore
from mobilesign.v1 import gateway_pb2
from server.csc import approvals as approvals_module
from server.csc.applications import MAX_GRANTS, MAX_NAME, Application, Applications
from server.csc.approvals import Approvals
from server.database import open_gateway_db
from server.operations import Operations
from server.ra_client import Registry
from server.sessions import Sessions
from tests.conftest import peek

NOW = 1_780_000_000
TOKEN_SECONDS = 600
KNOWN = [secrets.token_hex(16) for _ in range(3)]


class _Registry:
    """The RA as Applications sees it: the grants it knows, by id."""

    def __init__(self, grant_ids: list[str]) -> None:
        self.grants = {g: gateway_pb2.Grant(grant_id=g, user_id="alice") for g in grant_ids}

    async def grant(self, grant_id: str) -> gateway_pb2.Grant | None:
        return self.grants.get(grant_id)


@pytest.fixture
async def db(where: Callable[[str], Location]) -> AsyncIterator[Database]:
    """The gateway database, on each back end."""
    opened = await open_gateway_db(where("gateway"))
    yield opened
    await opened.close()


@pytest.fixture
def applications(db: Database) -> Applications:
    """Applications over the test's database, with a registry that knows ``KNOWN``."""
    return Applications(db, cast(Registry, _Registry(KNOWN)), TOKEN_SECONDS)


@pytest.fixture
def store(where: Callable[[str], Location]) -> Location:
    """Where the test's gateway database lives."""
    return where("gateway")


def _rows(store: Location, query: str, *params: object) -> list[tuple[object, ...]]:
    """What another connection sees in the store."""
    with peek(store) as other:
        return [tuple(row) for row in other.execute(query, params).fetchall()]


async def _refused(attempt: Awaitable[object], reason: str, kind: Kind) -> None:
    with pytest.raises(Error) as info:
        await attempt
    assert (info.value.reason, info.value.kind) == (reason, kind), info.value


# Registration ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["A", "Contract desk", "x" * MAX_NAME, "Büro für Verträge"])
async def test_a_good_name_registers_and_is_listed(applications: Applications, name: str) -> None:
    application, secret = await applications.register(name, KNOWN[:2], NOW)
    assert (application.name, application.grant_ids) == (name, tuple(KNOWN[:2]))
    assert (application.created_at, application.revoked) == (NOW, False)
    assert len(application.client_id) == 32
    assert len(secret) >= 43
    assert await applications.list() == [application]


@pytest.mark.parametrize(
    "name", ["", " leading", "trailing ", "x" * (MAX_NAME + 1), "two\nlines", "tab\there"]
)
async def test_a_bad_name_is_refused_and_nothing_stored(
    applications: Applications, store: Location, name: str
) -> None:
    await _refused(
        applications.register(name, KNOWN[:1], NOW), "APPLICATION_NAME_INVALID", Kind.INVALID
    )
    assert await applications.list() == []
    assert _rows(store, "SELECT client_id FROM csc_applications") == []


def _many(count: int) -> list[str]:
    return [secrets.token_hex(16) for _ in range(count)]


@pytest.mark.parametrize(
    ("grant_ids", "reason", "kind"),
    [
        ([], "GRANTS_INVALID", Kind.INVALID),
        (_many(MAX_GRANTS + 1), "GRANTS_INVALID", Kind.INVALID),
        ([KNOWN[0], KNOWN[1], KNOWN[0]], "GRANTS_INVALID", Kind.INVALID),
        ([KNOWN[0], "not-a-grant"], "MALFORMED_GRANT_ID", Kind.INVALID),
        ([KNOWN[0], KNOWN[1].upper()], "MALFORMED_GRANT_ID", Kind.INVALID),
        ([KNOWN[0], secrets.token_hex(16)], "NO_GRANT", Kind.NOT_FOUND),
    ],
    ids=["none", "too many", "duplicate", "malformed", "uppercase", "unknown"],
)
async def test_bad_grants_are_refused_and_nothing_stored(
    applications: Applications,
    store: Location,
    grant_ids: list[str],
    reason: str,
    kind: Kind,
) -> None:
    await _refused(applications.register("Desk", grant_ids, NOW), reason, kind)
    assert await applications.list() == []
    assert _rows(store, "SELECT client_id FROM csc_applications") == []


async def test_as_many_grants_as_allowed_register(db: Database) -> None:
    grant_ids = _many(MAX_GRANTS)
    applications = Applications(db, cast(Registry, _Registry(grant_ids)), TOKEN_SECONDS)
    application, _ = await applications.register("Desk", grant_ids, NOW)
    assert application.grant_ids == tuple(grant_ids)


async def test_the_list_is_oldest_first_with_revocations_shown(
    applications: Applications,
) -> None:
    later, _ = await applications.register("Later", KNOWN[1:], NOW + 10)
    first, _ = await applications.register("First", KNOWN[:1], NOW)
    same_name, _ = await applications.register("First", KNOWN[:1], NOW + 5)
    assert first.client_id != same_name.client_id
    assert await applications.list() == [first, same_name, later]
    await applications.revoke(same_name.client_id)
    listed = await applications.list()
    assert [a.revoked for a in listed] == [False, True, False]
    assert listed[1] == Application(
        same_name.client_id, "First", tuple(KNOWN[:1]), NOW + 5, revoked=True
    )


# Client authentication and access tokens ---------------------------------------------------


async def test_the_right_secret_gives_a_token_that_names_the_application(
    applications: Applications,
) -> None:
    application, secret = await applications.register("Desk", KNOWN, NOW)
    token, lifetime = await applications.token(application.client_id, secret, NOW)
    assert lifetime == TOKEN_SECONDS
    assert await applications.authenticate(token, NOW) == application
    assert await applications.authenticate(token, NOW + TOKEN_SECONDS - 1) == application
    other, _ = await applications.token(application.client_id, secret, NOW)
    assert other != token
    assert await applications.authenticate(other, NOW) == application


async def test_every_failed_client_authentication_gives_one_reason(
    applications: Applications,
) -> None:
    application, secret = await applications.register("Desk", KNOWN, NOW)
    revoked, revoked_secret = await applications.register("Gone", KNOWN, NOW)
    await applications.revoke(revoked.client_id)
    for client_id, client_secret in (
        (application.client_id, "wrong"),
        (application.client_id, ""),
        (application.client_id, secret + "x"),
        (application.client_id, secret[:-1]),
        (application.client_id, "x" * 129),
        (secrets.token_hex(16), secret),
        ("not-a-client", secret),
        ("", secret),
        (application.client_id.upper(), secret),
        (revoked.client_id, revoked_secret),
    ):
        await _refused(
            applications.token(client_id, client_secret, NOW),
            "CLIENT_AUTHENTICATION_FAILED",
            Kind.UNAUTHENTICATED,
        )


async def test_a_token_is_refused_once_expired_unknown_or_revoked(
    applications: Applications,
) -> None:
    application, secret = await applications.register("Desk", KNOWN, NOW)
    token, _ = await applications.token(application.client_id, secret, NOW)
    for presented, now in (
        (token, NOW + TOKEN_SECONDS),
        (token, NOW + TOKEN_SECONDS + 3600),
        (secrets.token_urlsafe(32), NOW),
        ("", NOW),
        ("x" * 129, NOW),
        (token + "x", NOW),
    ):
        await _refused(
            applications.authenticate(presented, now), "TOKEN_INVALID", Kind.UNAUTHENTICATED
        )
    assert await applications.authenticate(token, NOW) == application
    await applications.revoke(application.client_id)
    await _refused(applications.authenticate(token, NOW), "TOKEN_INVALID", Kind.UNAUTHENTICATED)


async def test_expired_tokens_are_deleted_when_a_new_one_is_issued(
    applications: Applications, store: Location
) -> None:
    application, secret = await applications.register("Desk", KNOWN, NOW)
    await applications.token(application.client_id, secret, NOW)
    await applications.token(application.client_id, secret, NOW + 1)
    assert len(_rows(store, "SELECT token_sha256 FROM csc_tokens")) == 2
    await applications.token(application.client_id, secret, NOW + TOKEN_SECONDS)
    expires = _rows(store, "SELECT expires_at FROM csc_tokens ORDER BY expires_at")
    assert expires == [(NOW + 1 + TOKEN_SECONDS,), (NOW + 2 * TOKEN_SECONDS,)]


# Revocation ------------------------------------------------------------------------------


async def _approval(db: Database, client_id: str, state: str) -> str:
    """An approval row of ``client_id`` in ``state``, as server/csc/approvals.py writes one."""
    approval_id = secrets.token_hex(16)
    await db.run(
        lambda c: c.execute(
            "INSERT INTO approvals (approval_id, client_id, application, grant_id, user_id,"
            " digests, purpose, label, state, created_at, expires_at)"
            " VALUES (?, ?, 'Desk', ?, 'alice', ?, 'Desk', '', ?, ?, ?)",
            (
                approval_id,
                client_id,
                KNOWN[0],
                json.dumps([hashlib.sha256(b"doc").hexdigest()]),
                state,
                NOW,
                NOW + 120,
            ),
        )
    )
    return approval_id


async def test_revocation_ends_tokens_and_withdraws_open_approvals_only(
    applications: Applications, db: Database, store: Location
) -> None:
    application, secret = await applications.register("Desk", KNOWN, NOW)
    other, other_secret = await applications.register("Other", KNOWN, NOW)
    await applications.token(application.client_id, secret, NOW)
    await applications.token(application.client_id, secret, NOW)
    other_token, _ = await applications.token(other.client_id, other_secret, NOW)
    states = ("pending", "approved", "authorised", "used", "declined")
    mine = {state: await _approval(db, application.client_id, state) for state in states}
    theirs = await _approval(db, other.client_id, "pending")

    await applications.revoke(application.client_id)

    tokens = _rows(store, "SELECT client_id FROM csc_tokens")
    assert tokens == [(other.client_id,)]
    assert await applications.authenticate(other_token, NOW) == other
    after = {row[0]: row[1] for row in _rows(store, "SELECT approval_id, state FROM approvals")}
    assert after == {
        mine["pending"]: "withdrawn",
        mine["approved"]: "withdrawn",
        mine["authorised"]: "withdrawn",
        mine["used"]: "used",
        mine["declined"]: "declined",
        theirs: "pending",
    }
    # Revoking again changes nothing and is not an error.
    await applications.revoke(application.client_id)
    revoked = {a.client_id: a.revoked for a in await applications.list()}
    assert revoked == {application.client_id: True, other.client_id: False}


async def test_revoking_an_unknown_or_malformed_client_id_is_refused(
    applications: Applications,
) -> None:
    application, _ = await applications.register("Desk", KNOWN, NOW)
    await _refused(applications.revoke(secrets.token_hex(16)), "NO_APPLICATION", Kind.NOT_FOUND)
    for malformed in ("", "not-a-client", application.client_id.upper(), "ab" * 17):
        await _refused(applications.revoke(malformed), "MALFORMED_CLIENT_ID", Kind.INVALID)
    assert await applications.list() == [application]


# What the database holds -----------------------------------------------------------------


def _everything(store: Location) -> bytes:
    """Every byte the store holds: the SQLite file and its write-ahead log, or every row of
    the gateway schema's CSC tables as text."""
    if isinstance(store, PostgresStore):
        rows = [
            row
            for table in ("csc_applications", "csc_tokens", "approvals")
            for row in _rows(store, f"SELECT * FROM {table}")  # noqa: S608 (constants)
        ]
        return repr(rows).encode()
    path = Path(store)
    return b"".join(
        p.read_bytes() for p in (path, path.with_name(path.name + "-wal")) if p.exists()
    )


async def test_secrets_and_tokens_are_kept_only_as_their_sha256(
    applications: Applications, store: Location
) -> None:
    application, secret = await applications.register("Desk", KNOWN, NOW)
    token, _ = await applications.token(application.client_id, secret, NOW)
    assert await applications.authenticate(token, NOW) == application

    (kept_secret,) = _rows(
        store,
        "SELECT secret_sha256 FROM csc_applications WHERE client_id = ?",
        application.client_id,
    )
    assert bytes(cast(bytes, kept_secret[0])) == hashlib.sha256(secret.encode()).digest()
    (kept_token,) = _rows(store, "SELECT token_sha256, client_id FROM csc_tokens")
    assert bytes(cast(bytes, kept_token[0])) == hashlib.sha256(token.encode()).digest()
    assert kept_token[1] == application.client_id

    held = _everything(store)
    assert application.client_id.encode() in held, "the scan sees what is stored"
    for plaintext in (secret, token):
        assert plaintext.encode() not in held
        assert plaintext[:16].encode() not in held


# A request racing the application's revocation ---------------------------------------------


def _approvals(db: Database, grant_ids: list[str]) -> Approvals:
    """Approvals whose requests need only the database and the grants (a request touches
    neither sessions nor operations)."""
    registry = _Registry(grant_ids)
    for grant in registry.grants.values():
        grant.operations.append(gateway_pb2.OPERATION_SIGN_DIGEST)
        grant.not_before_unix, grant.not_after_unix = 0, 2**40
    return Approvals(
        db=db,
        registry=cast(Registry, registry),
        sessions=cast(Sessions, None),
        operations=cast(Operations, None),
        approval_seconds=60,
        sad_seconds=60,
        max_signatures=4,
    )


async def test_a_request_after_the_revocation_is_refused_and_stores_nothing(
    applications: Applications, db: Database, store: Location
) -> None:
    application, _ = await applications.register("Desk", KNOWN[:1], NOW)
    approvals = _approvals(db, KNOWN[:1])
    digest = hashlib.sha256(b"doc").digest()
    kept = await approvals.request(
        application, credential_id=KNOWN[0], digests=[digest], description="", label=""
    )
    # The caller authenticated before the revocation, and asks after it.
    await applications.revoke(application.client_id)
    await _refused(
        approvals.request(
            application, credential_id=KNOWN[0], digests=[digest], description="", label=""
        ),
        "TOKEN_INVALID",
        Kind.UNAUTHENTICATED,
    )
    rows = _rows(store, "SELECT approval_id, state FROM approvals")
    assert rows == [(kept, "withdrawn")]


async def test_old_approvals_are_purged(
    applications: Applications, db: Database, store: Location, monkeypatch: pytest.MonkeyPatch
) -> None:
    application, _ = await applications.register("Desk", KNOWN[:1], NOW)
    approvals = _approvals(db, KNOWN[:1])
    digest = hashlib.sha256(b"doc").digest()

    async def ask() -> str:
        return await approvals.request(
            application, credential_id=KNOWN[0], digests=[digest], description="", label=""
        )

    kept = await ask()
    await ask()  # within the minute: no purge
    assert len(_rows(store, "SELECT approval_id FROM approvals")) == 2
    # As if a day had passed: the next request, a minute later, forgets both.
    monkeypatch.setattr(approvals_module, "KEEP_SECONDS", -60)
    monkeypatch.setattr(approvals_module, "PURGE_EVERY_SECONDS", -1)
    latest = await ask()
    assert _rows(store, "SELECT approval_id FROM approvals") == [(latest,)]
    assert kept != latest
