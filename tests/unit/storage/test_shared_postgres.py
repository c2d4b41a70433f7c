"""Replicas sharing one PostgreSQL store: two repositories of the same kind, each with its own
connection (as two processes have), work on one schema at once, and what must be exact stays
exact: one log with no hole and no fork, quotas, PIN attempts, single use of records and nonce
commitments, one witness state."""

from __future__ import annotations

import asyncio
import secrets
import types
from collections.abc import AsyncIterator
from typing import TypeVar

import pytest

from cosigner.repository import CommitmentReplayed, KeyStore
from hsm_proxy.errors import HsmProxyError
from hsm_proxy.uses import Use, UseStore
from hsm_proxy.witness import LogState, Witness
from mobilesign import auditlog
from mobilesign.storage.schema import PostgresStore
from server import ledger as ledger_module
from server.ledger import Ledger, QuotaExceeded
from tests.unit.cosigner.test_repository import _key
from tests.unit.hsm_proxy.test_witness import ORIGIN, Key
from tests.unit.server.test_ledger import NOW, _grant

T = TypeVar("T")
Pair = tuple[T, T]


@pytest.fixture
def store(postgres_dsn: str) -> PostgresStore:
    """A fresh schema for the two replicas of a test."""
    return PostgresStore(postgres_dsn, f"shared_{secrets.token_hex(6)}")


@pytest.fixture(autouse=True)
def fixed_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ledger_module, "time", types.SimpleNamespace(time=lambda: float(NOW)))


@pytest.fixture
async def ledgers(store: PostgresStore) -> AsyncIterator[Pair[Ledger]]:
    first = await Ledger.open(store)
    second = await Ledger.open(store)
    yield first, second
    await first.close()
    await second.close()


async def _log(ledger: Ledger, record_id: str, grant_id: str) -> int | None:
    try:
        return await ledger.log_use(
            record_id,
            user_id="alice",
            user_key_id="ab" * 32,
            grant_id=grant_id,
            record=b"record " + record_id.encode(),
            entry=b"entry " + record_id.encode(),
            user_signature=b"sig",
            now=NOW,
        )
    except QuotaExceeded:
        return None


async def test_two_ledgers_append_to_one_log_with_no_hole_and_exact_quotas(
    ledgers: Pair[Ledger],
) -> None:
    first, second = ledgers
    await first.remember_grant(_grant("g", quota_total=150, quota_daily=150), NOW)
    await second.remember_grant(_grant("g", quota_total=150, quota_daily=150), NOW)
    indices = await asyncio.gather(
        *(_log(ledgers[n % 2], f"r{n}", "g") for n in range(200)),
    )
    logged = [i for i in indices if i is not None]
    # Exactly the quota, through both, and every index once.
    assert len(logged) == 150
    assert sorted(logged) == list(range(150))
    grant = await first.grant("g", NOW)
    assert grant is not None
    assert grant.used_total == 150
    # Both see the same tree once caught up: the root of the stored entries.
    assert await first.refresh() == await second.refresh() == 150
    entries = [await first.entry(i) for i in range(150)]
    assert all(e is not None for e in entries)
    expected = auditlog.MerkleTree.from_leaves([auditlog.leaf_hash(e or b"") for e in entries])
    assert await first.root() == await second.root() == expected.root(150)
    # And proofs read from either verify against it.
    for index in (0, 77, 149):
        proof = await second.inclusion_proof(index, 150)
        auditlog.verify_inclusion(
            index=index,
            size=150,
            leaf_hash=auditlog.leaf_hash(entries[index] or b""),
            proof=proof,
            root=expected.root(150),
        )


async def test_a_ledger_opened_after_another_wrote_checks_the_shared_tree(
    store: PostgresStore,
) -> None:
    first = await Ledger.open(store)
    await first.remember_grant(_grant("g", quota_total=10, quota_daily=10), NOW)
    for n in range(5):
        await _log(first, f"r{n}", "g")
    later = await Ledger.open(store)
    try:
        assert later.size == 5
        assert await later.root() == await first.root()
        await _log(later, "r5", "g")
        assert await first.refresh() == 6
        assert await first.root() == await later.root()
    finally:
        await first.close()
        await later.close()


async def test_a_ledger_opens_while_another_appends_to_the_shared_log(
    store: PostgresStore,
) -> None:
    # The check at start reads the entries, their nodes and the count of all nodes: batches
    # another gateway commits in between must be neither half seen nor taken for extra nodes.
    writer = await Ledger.open(store)
    await writer.remember_grant(_grant("g", quota_total=100_000, quota_daily=100_000), NOW)
    for n in range(200):
        await _log(writer, f"seed{n}", "g")
    stop = asyncio.Event()

    async def append() -> int:
        rounds = 0
        while not stop.is_set():
            rounds += 1
            await asyncio.gather(*(_log(writer, f"w{rounds}.{i}", "g") for i in range(4)))
        return rounds

    appending = asyncio.create_task(append())
    try:
        sizes = []
        for _ in range(8):
            opened = await Ledger.open(store)
            try:
                sizes.append(opened.size)
                # The tree it computed from the entries is the one the stored nodes make.
                assert await opened.root() == await writer.root(opened.size)
            finally:
                await opened.close()
    finally:
        stop.set()
        rounds = await appending
        await writer.close()
    # The log grew while the ledgers opened, each at a size between batches.
    assert rounds > 1
    assert sizes == sorted(sizes)
    assert sizes[-1] > sizes[0]


async def test_two_cosigners_share_pin_attempts_and_commitment_replays(
    store: PostgresStore,
) -> None:
    one, two = await KeyStore.open(store), await KeyStore.open(store)
    try:
        key = _key()
        await one.add(key)
        attempts = await asyncio.gather(
            *((one, two)[n % 2].reserve_pin_attempt(key.key_id, 5) for n in range(40))
        )
        # Five attempts in all, whichever replica counted them.
        assert sorted(a for a in attempts if a is not None) == [1, 2, 3, 4, 5]
        commitments = secrets.token_bytes(128)
        await one.begin_signing(key.key_id, b"m" * 32, commitments, NOW)
        with pytest.raises(CommitmentReplayed):
            await two.begin_signing(key.key_id, b"n" * 32, commitments, NOW)
    finally:
        await one.close()
        await two.close()


def _use(grant_id: str, record_id: str, quota: int) -> Use:
    return Use(record_id, "0a" * 16, grant_id, "1f", quota, quota)


async def test_two_hsm_proxies_share_quotas_and_single_use(store: PostgresStore) -> None:
    one, two = await UseStore.open(store), await UseStore.open(store)
    try:

        async def consume(n: int, record_id: str, grant_id: str = "g") -> str:
            try:
                await (one, two)[n % 2].consume(_use(grant_id, record_id, 25), NOW)
            except HsmProxyError as exc:
                return exc.reason
            return "ok"

        outcomes = await asyncio.gather(*(consume(n, f"r{n}") for n in range(60)))
        assert outcomes.count("ok") == 25
        assert set(outcomes) == {"ok", "QUOTA_EXCEEDED"}
        # A record used through one is refused through the other, even at once (under a grant
        # with uses left, so that only the replay can refuse it).
        twice = await asyncio.gather(consume(0, "same", "h"), consume(1, "same", "h"))
        assert sorted(twice) == ["AUTHORISATION_REPLAYED", "ok"]
    finally:
        await one.close()
        await two.close()


async def _extend(witness: Witness, size: int, leaves: list[bytes]) -> str:
    """Ask ``witness`` to extend the checkpoint of ``size`` to the tree of ``leaves``."""
    tree = auditlog.MerkleTree.from_leaves(leaves)
    try:
        await witness.sign(
            old_size=size,
            tree_size=len(leaves),
            root_hash=tree.root(len(leaves)),
            proof=tree.consistency_proof(size, len(leaves)) if size else [],
            now=NOW,
        )
    except HsmProxyError as exc:
        return exc.reason
    return "signed"


async def test_two_witnesses_on_one_store_never_sign_a_fork(store: PostgresStore) -> None:
    key = Key()
    one = await Witness.open(store, ORIGIN, key.spki, key.sign_digest)
    two = await Witness.open(store, ORIGIN, key.spki, key.sign_digest)
    try:
        leaves: list[bytes] = []
        for round_ in range(20):
            # Both know the latest checkpoint; each is asked at once to extend it, with
            # different leaves (a fork): one may be signed, never both.
            assert await one.state() == await two.state()
            branches = [
                [*leaves, *(auditlog.leaf_hash(bytes([round_, side, i])) for i in range(2))]
                for side in (1, 2)
            ]
            outcomes = await asyncio.gather(
                _extend(one, len(leaves), branches[0]), _extend(two, len(leaves), branches[1])
            )
            assert sorted(outcomes) == ["WITNESS_STATE_STALE", "signed"], outcomes
            leaves = branches[outcomes.index("signed")]
            root = auditlog.MerkleTree.from_leaves(leaves).root(len(leaves))
            assert await one.state() == await two.state() == LogState(len(leaves), root)
    finally:
        await one.close()
        await two.close()
