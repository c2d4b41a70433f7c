"""The HSM proxy's durable memory of uses (``hsm_proxy.uses``) on a temporary file: quotas hold
exactly under concurrent consumes, a refusal or a release leaves no count behind, revocations,
counts and certificate requests survive a reopen, a database of the first schema upgrades, and
each call is one hop to the database's thread, committed when it returns."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from hsm_proxy.errors import HsmProxyError
from hsm_proxy.uses import SCHEMA, GrantUsage, Revoked, Use, UseStore, utc_day
from mobilesign.errors import Kind
from mobilesign.storage.database import Database
from mobilesign.storage.schema import Location
from tests.conftest import peek

T = TypeVar("T")

#: Noon, UTC: a day's uses stay on one day.
NOW = utc_day(1_780_000_000) * 86_400 + 43_200
DAY = 86_400


@pytest.fixture
async def store(where: Callable[[str], Location]) -> AsyncIterator[UseStore]:
    opened = await UseStore.open(where("uses"))
    yield opened
    await opened.close()


def _use(grant_id: str, *, total: int = 100, daily: int = 100, **changes: str) -> Use:
    fields = {
        "record_id": secrets.token_hex(16),
        "key_id": "0a" * 16,
        "certificate_serial": "1f",
    }
    fields.update(changes)
    return Use(
        record_id=fields["record_id"],
        key_id=fields["key_id"],
        grant_id=grant_id,
        certificate_serial=fields["certificate_serial"],
        quota_total=total,
        quota_daily=daily,
    )


async def _refusal(store: UseStore, use: Use, now: int = NOW) -> HsmProxyError:
    with pytest.raises(HsmProxyError) as info:
        await store.consume(use, now)
    return info.value


async def _consume_all(store: UseStore, uses: list[Use], now: int) -> list[HsmProxyError | None]:
    async def one(use: Use) -> HsmProxyError | None:
        try:
            await store.consume(use, now)
        except HsmProxyError as exc:
            return exc
        return None

    return await asyncio.gather(*(one(u) for u in uses))


async def test_the_total_quota_is_exact_under_concurrent_consumes(store: UseStore) -> None:
    grant = secrets.token_hex(16)
    outcomes = await _consume_all(store, [_use(grant, total=7) for _ in range(60)], NOW)
    refused = [o for o in outcomes if o is not None]
    assert outcomes.count(None) == 7
    assert {(o.kind, o.reason, o.metadata["quota"]) for o in refused} == {
        (Kind.EXHAUSTED, "QUOTA_EXCEEDED", "total")
    }
    assert await store.usage([grant], NOW) == [GrantUsage(7, 7)]
    # Used up for good: another day does not help.
    refusal = await _refusal(store, _use(grant, total=7), NOW + DAY)
    assert (refusal.reason, refusal.metadata["quota"]) == ("QUOTA_EXCEEDED", "total")
    assert await store.usage([grant], NOW + DAY) == [GrantUsage(7, 0)]


async def test_the_daily_quota_is_exact_per_utc_day(store: UseStore) -> None:
    grant = secrets.token_hex(16)
    refused_uses = [_use(grant, daily=5) for _ in range(40)]
    outcomes = await _consume_all(store, refused_uses, NOW)
    assert outcomes.count(None) == 5
    assert {o.metadata["quota"] for o in outcomes if o is not None} == {"daily"}
    assert await store.usage([grant], NOW) == [GrantUsage(5, 5)]
    # A refusal consumed nothing: the same records are good the next day, up to the quota.
    retried = [u for u, o in zip(refused_uses, outcomes, strict=True) if o is not None]
    tomorrow = NOW + DAY
    outcomes = await _consume_all(store, retried, tomorrow)
    assert outcomes.count(None) == 5
    assert await store.usage([grant], tomorrow) == [GrantUsage(10, 5)]
    assert await store.usage([grant], NOW) == [GrantUsage(10, 5)]
    assert await store.usage([grant], NOW + 2 * DAY) == [GrantUsage(10, 0)]


async def test_each_record_is_used_once(store: UseStore) -> None:
    grant = secrets.token_hex(16)
    use = _use(grant)
    outcomes = await _consume_all(store, [use] * 10, NOW)
    assert outcomes.count(None) == 1
    assert {o.reason for o in outcomes if o is not None} == {"AUTHORISATION_REPLAYED"}
    assert await store.usage([grant], NOW) == [GrantUsage(1, 1)]


async def test_release_frees_the_record_and_uncounts_the_use(store: UseStore) -> None:
    grant = secrets.token_hex(16)
    use = _use(grant, total=1, daily=1)
    await store.consume(use, NOW)
    assert (await _refusal(store, _use(grant, total=1, daily=1))).reason == "QUOTA_EXCEEDED"
    await store.release(use.record_id)
    assert await store.usage([grant], NOW) == [GrantUsage(0, 0)]
    await store.consume(use, NOW)  # presented again, and counted again
    assert await store.usage([grant], NOW) == [GrantUsage(1, 1)]
    # A release after midnight un-counts the day the use was counted on.
    await store.release(use.record_id)
    await store.consume(use, NOW + DAY - 43_201)
    await store.release(use.record_id)
    assert await store.usage([grant], NOW) == [GrantUsage(0, 0)]
    await store.release(secrets.token_hex(16))  # an unknown record: nothing to undo


async def test_revocations_refuse_and_count_nothing(store: UseStore) -> None:
    grant, other_grant = secrets.token_hex(16), secrets.token_hex(16)
    await store.revoke(Revoked.GRANT, grant, NOW)
    await store.revoke(Revoked.GRANT, grant, NOW + 1)  # idempotent
    await store.revoke(Revoked.CERTIFICATE, "2e", NOW)
    await store.revoke(Revoked.ORGANISATION_KEY, "0b" * 16, NOW)
    for use, reason in (
        (_use(grant), "GRANT_REVOKED"),
        (_use(other_grant, certificate_serial="2e"), "USER_CERTIFICATE_REVOKED"),
        (_use(other_grant, key_id="0b" * 16), "ORGANISATION_CERTIFICATE_REVOKED"),
    ):
        refusal = await _refusal(store, use)
        assert (refusal.kind, refusal.reason) == (Kind.DENIED, reason)
        # Not consumed: the record id is still free for a use that depends on nothing revoked.
        await store.consume(_use(other_grant, record_id=use.record_id), NOW)
    assert await store.usage([grant, other_grant], NOW) == [GrantUsage(0, 0), GrantUsage(3, 3)]


async def test_everything_survives_a_reopen(where: Callable[[str], Location]) -> None:
    path = where("uses")
    grant = secrets.token_hex(16)
    used = _use(grant, total=2)
    store = await UseStore.open(path)
    await store.consume(used, NOW)
    await store.revoke(Revoked.CERTIFICATE, "77", NOW)
    assert await store.keep_certificate_request("0c" * 16, b"subject", b"csr", NOW) == (
        b"subject",
        b"csr",
    )
    await store.close()

    store = await UseStore.open(path)
    try:
        assert await store.usage([grant], NOW) == [GrantUsage(1, 1)]
        assert (await _refusal(store, used)).reason == "AUTHORISATION_REPLAYED"
        revoked = _use(secrets.token_hex(16), certificate_serial="77")
        assert (await _refusal(store, revoked)).reason == "USER_CERTIFICATE_REVOKED"
        assert await store.certificate_request("0c" * 16) == (b"subject", b"csr")
        await store.consume(_use(grant, total=2), NOW)
        assert (await _refusal(store, _use(grant, total=2))).reason == "QUOTA_EXCEEDED"
    finally:
        await store.close()


async def test_a_key_keeps_its_first_certificate_request(store: UseStore) -> None:
    key = "0d" * 16
    assert await store.certificate_request(key) is None
    first = await store.keep_certificate_request(key, b"subject-1", b"csr-1", NOW)
    assert first == (b"subject-1", b"csr-1")
    assert await store.keep_certificate_request(key, b"subject-2", b"csr-2", NOW) == first
    assert await store.certificate_request(key) == first
    assert await store.certificate_request("0e" * 16) is None


async def test_usage_answers_in_order_with_zeros(store: UseStore) -> None:
    used, unused = secrets.token_hex(16), secrets.token_hex(16)
    await store.consume(_use(used), NOW)
    await store.consume(_use(used), NOW - DAY)
    assert await store.usage([], NOW) == []
    assert await store.usage([unused, used, unused, used], NOW) == [
        GrantUsage(0, 0),
        GrantUsage(2, 1),
        GrantUsage(0, 0),
        GrantUsage(2, 1),
    ]
    many = [secrets.token_hex(16) for _ in range(1000)]
    assert await store.usage([*many, used], NOW) == [GrantUsage(0, 0)] * 1000 + [GrantUsage(2, 1)]


#: The schema released before grants were counted here, as deployed databases have it.
FIRST_SCHEMA = """
    CREATE TABLE used_records (
        record_id TEXT PRIMARY KEY,
        key_id TEXT NOT NULL,
        used_at INTEGER NOT NULL
    )
    """


async def test_a_database_of_the_first_schema_upgrades(tmp_path: Path) -> None:
    # Deployed databases have run the first script already: it must not change.
    assert SCHEMA.sqlite[0] == FIRST_SCHEMA
    path = tmp_path / "uses.db"
    old_record = secrets.token_hex(16)
    db = await Database.open(path, [FIRST_SCHEMA])
    await db.run(
        lambda c: c.execute(
            "INSERT INTO used_records (record_id, key_id, used_at) VALUES (?, ?, ?)",
            (old_record, "0a" * 16, NOW),
        )
    )
    await db.close()

    store = await UseStore.open(path)
    try:
        grant = secrets.token_hex(16)
        # A record used before the upgrade stays used; its release counts against no grant.
        assert (await _refusal(store, _use(grant, record_id=old_record))).reason == (
            "AUTHORISATION_REPLAYED"
        )
        await store.release(old_record)
        await store.consume(_use(grant, record_id=old_record), NOW)
        await store.revoke(Revoked.GRANT, grant, NOW)
        assert await store.usage([grant], NOW) == [GrantUsage(1, 1)]
    finally:
        await store.close()
    with contextlib.closing(sqlite3.connect(path)) as plain:
        assert plain.execute("PRAGMA user_version").fetchone() == (len(SCHEMA.sqlite),)


async def test_each_call_is_one_hop_to_the_database_thread(
    store: UseStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    hops = 0
    run = Database.run

    async def counted(db: Database, function: Callable[[sqlite3.Connection], T]) -> T:
        nonlocal hops
        hops += 1
        return await run(db, function)

    monkeypatch.setattr(Database, "run", counted)
    grant = secrets.token_hex(16)
    used = _use(grant, total=1)
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: store.consume(used, NOW),
        lambda: _refusal(store, _use(grant, total=1)),  # by the quota, after three statements
        lambda: store.release(used.record_id),
        lambda: store.revoke(Revoked.GRANT, grant, NOW),
        lambda: _refusal(store, _use(grant)),
        lambda: store.usage([grant, secrets.token_hex(16)], NOW),
        lambda: store.keep_certificate_request("0f" * 16, b"subject", b"csr", NOW),
        lambda: store.certificate_request("0f" * 16),
    ]
    for call in calls:
        before = hops
        await call()
        assert hops == before + 1


async def test_a_use_is_on_disk_when_consume_returns(
    where: Callable[[str], Location], store: UseStore
) -> None:
    grant = secrets.token_hex(16)
    await store.consume(_use(grant), NOW)
    await store.revoke(Revoked.CERTIFICATE, "3a", NOW)
    # Another connection sees both at once: nothing is left in an open transaction.
    with peek(where("uses")) as other:
        assert other.execute("SELECT used_total FROM grant_uses").fetchall() == [(1,)]
        assert other.execute("SELECT subject FROM revocations").fetchall() == [("3a",)]
