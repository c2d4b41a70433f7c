"""The cosigner's repository (``cosigner.repository``) on a temporary file: keys and tickets are
each stored once, PIN attempts count up to the limit and stop at a lock, signings are recorded
with their commitments unique, each write is on disk (seen by another connection) when it returns,
and each call is one hop to the database's thread."""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import pytest

from cosigner.repository import (
    CommitmentReplayed,
    KeyExists,
    KeyStore,
    Signing,
    StoredKey,
    TicketAlreadyUsed,
)
from mobilesign.storage.database import Database
from mobilesign.storage.schema import Location
from tests.conftest import peek

T = TypeVar("T")
NOW = 1_790_000_000


@pytest.fixture
async def store(where: Callable[[str], Location]) -> AsyncIterator[KeyStore]:
    opened = await KeyStore.open(where("cosigner"))
    yield opened
    await opened.close()


def _key(**changes: str) -> StoredKey:
    fields = {"key_id": secrets.token_hex(16), "ticket_id": secrets.token_hex(16)}
    fields.update(changes)
    return StoredKey(
        key_id=fields["key_id"],
        user_id="user-1",
        scheme="frost-ed25519",
        sealed_key_package=b"sealed package",
        sealed_pin_verifier=b"sealed verifier",
        device_public_key=b"device key",
        failed_pin_attempts=0,
        locked=False,
        ticket_id=fields["ticket_id"],
        created_at=NOW,
    )


def _attempts(where: Location, key_id: str) -> tuple[int, int]:
    with peek(where) as other:
        row = other.execute(
            "SELECT failed_pin_attempts, locked FROM keys WHERE key_id = ?", (key_id,)
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


async def test_a_key_and_its_ticket_are_stored_once(store: KeyStore) -> None:
    key = _key()
    assert not await store.ticket_used(key.ticket_id)
    assert await store.get(key.key_id) is None
    await store.add(key)
    assert await store.get(key.key_id) == key
    assert await store.ticket_used(key.ticket_id)
    with pytest.raises(TicketAlreadyUsed):
        await store.add(_key(ticket_id=key.ticket_id))
    with pytest.raises(KeyExists):
        await store.add(_key(key_id=key.key_id))


async def test_pin_attempts_count_to_the_limit_and_a_lock_stops_them(
    where: Callable[[str], Location], store: KeyStore
) -> None:
    key = _key()
    await store.add(key)
    path = where("cosigner")
    assert [await store.reserve_pin_attempt(key.key_id, 3) for _ in range(4)] == [1, 2, 3, None]
    # Counted on disk when the call returns: a crash cannot give an attempt back.
    assert _attempts(path, key.key_id) == (3, 0)
    assert await store.unlock(key.key_id)
    assert await store.reserve_pin_attempt(key.key_id, 3) == 1
    await store.reset_pin_failures(key.key_id)
    assert _attempts(path, key.key_id) == (0, 0)
    await store.reserve_pin_attempt(key.key_id, 3)
    await store.lock(key.key_id)
    assert await store.reserve_pin_attempt(key.key_id, 3) is None
    await store.reset_pin_failures(key.key_id)  # a locked key keeps its count
    assert _attempts(path, key.key_id) == (1, 1)
    stored = await store.get(key.key_id)
    assert stored is not None
    assert (stored.failed_pin_attempts, stored.locked) == (1, True)
    assert not await store.unlock(secrets.token_hex(16))
    assert await store.reserve_pin_attempt(secrets.token_hex(16), 3) is None


async def test_signings_are_recorded_with_unique_commitments(
    where: Callable[[str], Location], store: KeyStore
) -> None:
    key = _key()
    await store.add(key)
    first, second = secrets.token_bytes(128), secrets.token_bytes(128)
    one = await store.begin_signing(key.key_id, b"m" * 32, first, NOW)
    two = await store.begin_signing(key.key_id, b"n" * 32, second, NOW + 1)
    with pytest.raises(CommitmentReplayed):
        # The phone's commitment again, whatever the others.
        await store.begin_signing(key.key_id, b"o" * 32, first[:32] + bytes(96), NOW + 2)
    await store.complete_signing(one, b"signature", NOW + 3)
    assert await store.signings(key.key_id) == [
        Signing(one, key.key_id, b"m" * 32, first, b"signature", NOW),
        Signing(two, key.key_id, b"n" * 32, second, None, NOW + 1),
    ]
    with peek(where("cosigner")) as other:
        assert other.execute("SELECT signing_id FROM signings ORDER BY signing_id").fetchall() == [
            (one,),
            (two,),
        ]
    assert await store.signings(secrets.token_hex(16)) == []


async def test_each_call_is_one_hop_to_the_database_thread(
    store: KeyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    hops = 0
    run = Database.run

    async def counted(db: Database, function: Callable[[sqlite3.Connection], T]) -> T:
        nonlocal hops
        hops += 1
        return await run(db, function)

    monkeypatch.setattr(Database, "run", counted)
    key = _key()

    async def replayed() -> None:
        with pytest.raises(CommitmentReplayed):
            await store.begin_signing(key.key_id, bytes(32), bytes(128), NOW)

    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: store.add(key),
        lambda: store.ticket_used(key.ticket_id),
        lambda: store.get(key.key_id),
        lambda: store.reserve_pin_attempt(key.key_id, 3),
        lambda: store.reset_pin_failures(key.key_id),
        lambda: store.lock(key.key_id),
        lambda: store.unlock(key.key_id),
        lambda: store.begin_signing(key.key_id, bytes(32), bytes(128), NOW),
        replayed,
        lambda: store.complete_signing(1, b"signature", NOW),
        lambda: store.signings(key.key_id),
    ]
    for call in calls:
        before = hops
        await call()
        assert hops == before + 1
