"""The gateway's ledger, on both back ends: its copy of the RA's grants and its count of
their uses (total and daily), the steps that consume a use and append to the audit log together,
batches that share one commit (a refused request leaves its batch alone), refusals that change
nothing, state that survives reopening, stored tree nodes checked against the entries at start,
and a Merkle tree that matches :mod:`mobilesign.auditlog` computed independently. The stored
log is tampered with through a second connection (:func:`tests.conftest.peek`), as anyone with
the database's credentials could."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import types
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from mobilesign import auditlog
from mobilesign.storage.schema import Location
from server import ledger as ledger_module
from server.ledger import GrantRow, Ledger, QuotaExceeded, RecordExists, TreeMismatch, utc_day
from tests.conftest import peek

#: A fixed "now" (seconds since the epoch), in the middle of a UTC day.
NOW = 1_780_000_000 // 86_400 * 86_400 + 43_200
DAY = 86_400


@pytest.fixture(autouse=True)
def fixed_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ledger reads the wall clock for "today" and record times: pin it to NOW."""
    monkeypatch.setattr(ledger_module, "time", types.SimpleNamespace(time=lambda: float(NOW)))


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "gateway" / "ledger.db"


@pytest.fixture
async def ledger(where: Callable[[str], Location]) -> AsyncIterator[Ledger]:
    opened = await Ledger.open(where("ledger"))
    yield opened
    await opened.close()


def _grant(
    grant_id: str = "g1",
    *,
    user_id: str = "alice",
    key_id: str = "seal",
    quota_total: int = 10,
    quota_daily: int = 10,
    not_before: int = NOW - DAY,
    not_after: int = NOW + 30 * DAY,
) -> GrantRow:
    return GrantRow(
        grant_id=grant_id,
        user_id=user_id,
        key_id=key_id,
        operations=("sign_digest", "decrypt"),
        not_before=not_before,
        not_after=not_after,
        quota_total=quota_total,
        quota_daily=quota_daily,
        purpose="invoices",
        revoked=False,
        used_total=0,
        used_today=0,
        signed_grant=b"signed " + grant_id.encode(),
    )


async def _use(ledger: Ledger, grant_id: str, n: int, now: float = NOW) -> int:
    """Log the use of record ``<grant>-<n>``; returns the entry index."""
    return await _log(ledger, f"{grant_id}-{n}", grant_id, now)


def _log(ledger: Ledger, record_id: str, grant_id: str, now: float = NOW) -> Awaitable[int]:
    return ledger.log_use(
        record_id,
        user_id="alice",
        user_key_id="ab" * 32,
        grant_id=grant_id,
        record=b"record " + record_id.encode(),
        entry=_entry(record_id),
        user_signature=b"sig " + record_id.encode(),
        now=now,
    )


def _entry(record_id: str) -> bytes:
    return b"log entry for " + record_id.encode()


async def _stored(ledger: Ledger, grant_id: str) -> GrantRow:
    grant = await ledger.grant(grant_id, NOW)
    assert grant is not None
    return grant


async def _snapshot(ledger: Ledger, grant_id: str) -> tuple[object, ...]:
    grant = await ledger.grant(grant_id, NOW)
    assert grant is not None
    entries = [await ledger.entry(i) for i in range(ledger.size + 1)]
    return grant.used_total, grant.used_today, ledger.size, await ledger.root(), entries


# Grants --------------------------------------------------------------------------------------


async def test_a_grant_is_kept_once_with_its_counts(ledger: Ledger) -> None:
    assert await ledger.remember_grant(_grant("g1"), NOW) == _grant("g1")
    await _use(ledger, "g1", 1)
    # The RA's definition is kept as first seen; the counts are the ledger's own.
    again = await ledger.remember_grant(dataclasses.replace(_grant("g1"), quota_total=99), NOW)
    assert (again.quota_total, again.used_total, again.used_today) == (10, 1, 1)
    assert await ledger.signed_grant("g1") == b"signed g1"
    assert await ledger.signed_grant("nope") == b""
    assert await ledger.grant("nope", NOW) is None
    # "Today" is the day of the time asked about.
    tomorrow = await ledger.grant("g1", NOW + DAY)
    assert tomorrow is not None
    assert (tomorrow.used_total, tomorrow.used_today) == (1, 0)


async def test_a_revocation_the_ra_reports_is_kept_and_never_undone(ledger: Ledger) -> None:
    await ledger.remember_grant(_grant(), NOW)
    revoked = await ledger.remember_grant(dataclasses.replace(_grant(), revoked=True), NOW)
    assert revoked.revoked
    assert (await ledger.remember_grant(_grant(), NOW + 1)).revoked
    before = await _snapshot(ledger, "g1")
    with pytest.raises(QuotaExceeded):
        await _use(ledger, "g1", 1)
    assert await _snapshot(ledger, "g1") == before


# One use: quota, log, record, in one transaction --------------------------------------------


async def test_a_use_consumes_quota_appends_and_marks_the_record(ledger: Ledger) -> None:
    await ledger.remember_grant(_grant(), NOW)
    assert await _use(ledger, "g1", 1) == 0
    assert await _use(ledger, "g1", 2) == 1
    grant = await ledger.grant("g1", NOW)
    assert grant is not None
    assert (grant.used_total, grant.used_today) == (2, 2)
    assert ledger.size == 2
    assert await ledger.entry(1) == _entry("g1-2")
    assert await ledger.entry(2) is None
    record = await ledger.record("g1-2")
    assert record is not None
    assert (record.state, record.entry_index, record.user_signature) == ("logged", 1, b"sig g1-2")
    assert record.record == b"record g1-2"

    assert await ledger.log_outcome("g1-2", b"outcome", True, b"signature", "") == 2
    done = await ledger.record("g1-2")
    assert done is not None
    assert (done.state, done.result, done.reason) == ("done", b"signature", "")
    assert await ledger.log_outcome("g1-1", b"failure", False, None, "HSM_FAILED") == 3
    failed = await ledger.record("g1-1")
    assert failed is not None
    assert (failed.state, failed.result, failed.reason) == ("failed", None, "HSM_FAILED")
    assert ledger.size == 4


async def test_total_quota(ledger: Ledger) -> None:
    await ledger.remember_grant(_grant(quota_total=2, quota_daily=10), NOW)
    await _use(ledger, "g1", 1)
    await _use(ledger, "g1", 2, NOW + 3 * DAY)
    before = await _snapshot(ledger, "g1")
    for later in (0, 10 * DAY):
        with pytest.raises(QuotaExceeded):
            await _use(ledger, "g1", 3 + later, NOW + later)
    assert await _snapshot(ledger, "g1") == before
    assert (await _stored(ledger, "g1")).used_total == 2
    assert await ledger.record("g1-3") is None  # a refused use keeps nothing


async def test_daily_quota_resets_the_next_utc_day(ledger: Ledger) -> None:
    await ledger.remember_grant(_grant(quota_total=10, quota_daily=2), NOW)
    await _use(ledger, "g1", 1)
    await _use(ledger, "g1", 2)
    before = await _snapshot(ledger, "g1")
    with pytest.raises(QuotaExceeded):
        await _use(ledger, "g1", 3)
    # Refused: neither the total nor today's count moved, nothing was logged.
    assert await _snapshot(ledger, "g1") == before
    # The same UTC day, a few hours later: still refused.
    end_of_day = (utc_day(NOW) + 1) * DAY - 1
    with pytest.raises(QuotaExceeded):
        await _use(ledger, "g1", 4, end_of_day)
    # The next UTC day: two more.
    assert await _use(ledger, "g1", 5, end_of_day + 1) == 2
    assert await _use(ledger, "g1", 6, end_of_day + 2) == 3
    with pytest.raises(QuotaExceeded):
        await _use(ledger, "g1", 7, end_of_day + 3)
    grant = await ledger.grant("g1", NOW)
    assert grant is not None
    assert (grant.used_total, grant.used_today) == (4, 2)  # "today" is NOW's day


@pytest.mark.parametrize(
    "now",
    [NOW - 2 * DAY, NOW + 30 * DAY, NOW + 31 * DAY],
    ids=["before-window", "at-end", "after-window"],
)
async def test_outside_the_window_is_refused(ledger: Ledger, now: int) -> None:
    await ledger.remember_grant(_grant(), NOW)
    before = await _snapshot(ledger, "g1")
    with pytest.raises(QuotaExceeded):
        await _use(ledger, "g1", 1, now)
    assert await _snapshot(ledger, "g1") == before


async def test_a_use_of_an_unknown_grant_is_refused(ledger: Ledger) -> None:
    with pytest.raises(QuotaExceeded):
        await _log(ledger, "r", "no-such-grant")
    assert ledger.size == 0
    assert await ledger.record("r") is None


async def test_a_record_logged_again_rolls_the_quota_back(ledger: Ledger) -> None:
    await ledger.remember_grant(_grant(), NOW)
    await _use(ledger, "g1", 1)
    before = await _snapshot(ledger, "g1")
    # Logged already: the second log entry and quota use are undone too.
    with pytest.raises(RecordExists):
        await _use(ledger, "g1", 1)
    assert await _snapshot(ledger, "g1") == before
    # And the ledger still works.
    assert await _use(ledger, "g1", 2) == 1


async def test_a_logged_record_is_kept_with_its_entry(ledger: Ledger) -> None:
    await ledger.remember_grant(_grant(), NOW)
    index = await _use(ledger, "g1", 7)
    row = await ledger.record("g1-7")
    assert row is not None
    assert (row.state, row.entry_index, row.record, row.user_signature) == (
        "logged",
        index,
        b"record g1-7",
        b"sig g1-7",
    )
    assert (row.user_id, row.user_key_id, row.grant_id) == ("alice", "ab" * 32, "g1")


async def test_concurrent_uses_never_exceed_the_quota(ledger: Ledger) -> None:
    await ledger.remember_grant(_grant(quota_total=3), NOW)
    results = await asyncio.gather(
        *(_log(ledger, f"c{n}", "g1") for n in range(8)),
        return_exceptions=True,
    )
    indexes = sorted(r for r in results if isinstance(r, int))
    assert indexes == [0, 1, 2]
    assert sum(isinstance(r, QuotaExceeded) for r in results) == 5
    assert ledger.size == 3
    assert (await _stored(ledger, "g1")).used_total == 3


# The Merkle tree -------------------------------------------------------------------------------


async def test_roots_and_proofs_match_auditlog(ledger: Ledger) -> None:
    assert await ledger.root() == auditlog.EMPTY_ROOT
    await ledger.remember_grant(_grant(quota_total=100, quota_daily=100), NOW)
    entries: list[bytes] = []
    for n in range(13):
        await _use(ledger, "g1", n)
        entries.append(_entry(f"g1-{n}"))
        if n % 4 == 0:
            outcome = f"outcome {n}".encode()
            await ledger.log_outcome(f"g1-{n}", outcome, True, b"ok", "")
            entries.append(outcome)
    assert ledger.size == len(entries)
    assert [await ledger.entry(i) for i in range(len(entries))] == entries
    for size in range(len(entries) + 1):
        assert await ledger.root(size) == auditlog.merkle_tree_hash(entries[:size])
    root = await ledger.root()
    assert root == auditlog.merkle_tree_hash(entries)
    for index, entry in enumerate(entries):
        auditlog.verify_inclusion(
            leaf_hash=auditlog.leaf_hash(entry),
            index=index,
            size=len(entries),
            proof=await ledger.inclusion_proof(index, len(entries)),
            root=root,
        )
    for old in range(1, len(entries)):
        auditlog.verify_consistency(
            old_size=old,
            new_size=len(entries),
            proof=await ledger.consistency_proof(old, len(entries)),
            old_root=auditlog.merkle_tree_hash(entries[:old]),
            new_root=root,
        )
    # A proof for another entry does not pass.
    with pytest.raises(auditlog.ProofError):
        auditlog.verify_inclusion(
            leaf_hash=auditlog.leaf_hash(b"not logged"),
            index=0,
            size=len(entries),
            proof=await ledger.inclusion_proof(0, len(entries)),
            root=root,
        )


# Reopening the store ---------------------------------------------------------------------------


async def test_reopening_keeps_grants_uses_records_and_the_tree(
    where: Callable[[str], Location],
) -> None:
    path = where("ledger")
    first = await Ledger.open(path)
    try:
        await first.remember_grant(_grant(quota_total=5, quota_daily=3), NOW)
        await first.remember_grant(_grant("g2"), NOW)
        for n in range(3):
            await _use(first, "g1", n)
        await first.log_outcome("g1-0", b"outcome", True, b"ok", "")
        await first.remember_grant(dataclasses.replace(_grant("g2"), revoked=True), NOW)
        root, size = await first.root(), first.size
    finally:
        await first.close()

    again = await Ledger.open(path)
    try:
        assert (await again.root(), again.size) == (root, size)
        grant = await again.grant("g1", NOW)
        assert grant is not None
        assert (grant.used_total, grant.used_today) == (3, 3)
        assert (await _stored(again, "g2")).revoked
        record = await again.record("g1-0")
        assert record is not None
        assert record.state == "done"
        # The daily quota counted before the restart still applies.
        with pytest.raises(QuotaExceeded):
            await _use(again, "g1", 3)
        assert await _use(again, "g1", 4, NOW + DAY) == size
        entries = [await again.entry(i) for i in range(again.size)]
        assert all(e is not None for e in entries)
        assert await again.root() == auditlog.merkle_tree_hash(
            [e for e in entries if e is not None]
        )
    finally:
        await again.close()


async def test_a_missing_entry_is_found_at_start(where: Callable[[str], Location]) -> None:
    path = where("ledger")
    await _three_uses(path)
    _alter(path, "DELETE FROM log_entries WHERE entry_index = 1")
    with pytest.raises(RuntimeError, match="entry 1 is missing"):
        await Ledger.open(path)


async def _three_uses(path: Location) -> bytes:
    first = await Ledger.open(path)
    try:
        await first.remember_grant(_grant(), NOW)
        for n in range(3):
            await _use(first, "g1", n)
        return await first.root()
    finally:
        await first.close()


def _alter(path: Location, statement: str, *args: object) -> None:
    with peek(path) as other:
        other.execute(statement, args)
        if isinstance(other, sqlite3.Connection):
            other.commit()


async def test_an_entry_changed_on_disk_stops_the_start(where: Callable[[str], Location]) -> None:
    path = where("ledger")
    await _three_uses(path)
    _alter(path, "UPDATE log_entries SET entry = ? WHERE entry_index = 2", b"changed")
    with pytest.raises(TreeMismatch):
        await Ledger.open(path)


async def test_a_tree_node_changed_on_disk_stops_the_start(
    where: Callable[[str], Location],
) -> None:
    path = where("ledger")
    await _three_uses(path)
    _alter(path, "UPDATE tree_nodes SET hash = ? WHERE level = 1 AND idx = 0", bytes(32))
    with pytest.raises(TreeMismatch):
        await Ledger.open(path)


@pytest.mark.parametrize(
    "statement",
    [
        "DELETE FROM tree_nodes WHERE level = 1",
        "INSERT INTO tree_nodes (level, idx, hash) VALUES (0, 3, ?)",
        "DELETE FROM log_entries WHERE entry_index = 2",
    ],
    ids=["node-missing", "node-beyond-the-entries", "entry-truncated"],
)
async def test_nodes_that_do_not_match_the_entries_stop_the_start(
    where: Callable[[str], Location], statement: str
) -> None:
    path = where("ledger")
    await _three_uses(path)
    _alter(path, statement, *([bytes(32)] if "?" in statement else []))
    with pytest.raises(TreeMismatch):
        await Ledger.open(path)


async def test_nodes_missing_after_an_upgrade_are_written_from_the_entries(
    where: Callable[[str], Location],
) -> None:
    path = where("ledger")
    root = await _three_uses(path)
    _alter(path, "DELETE FROM tree_nodes")
    again = await Ledger.open(path)
    try:
        assert await again.root() == root
        assert await again.root(2) == auditlog.merkle_tree_hash([_entry("g1-0"), _entry("g1-1")])
        auditlog.verify_inclusion(
            index=1,
            size=3,
            leaf_hash=auditlog.leaf_hash(_entry("g1-1")),
            proof=await again.inclusion_proof(1, 3),
            root=root,
        )
    finally:
        await again.close()
    with peek(path) as other:
        (count,) = other.execute("SELECT COUNT(*) FROM tree_nodes").fetchone()
    assert count == 4  # three leaves and (1, 0): the perfect subtrees of a tree of three


# Group commit ----------------------------------------------------------------------------------


async def test_concurrent_uses_share_durable_commits(ledger: Ledger) -> None:
    await ledger.remember_grant(_grant(quota_total=1000, quota_daily=1000), NOW)
    before = ledger.batches
    indices = await asyncio.gather(*(_use(ledger, "g1", n) for n in range(64)))
    assert sorted(indices) == list(range(64))
    # The first request starts a batch; every other one arrives while it commits.
    assert ledger.batches - before < 64
    assert ledger.batches - before <= 3
    assert (await _stored(ledger, "g1")).used_total == 64


async def test_a_refused_use_leaves_its_batch_alone(ledger: Ledger) -> None:
    await ledger.remember_grant(_grant(quota_total=2, quota_daily=10), NOW)
    results = await asyncio.gather(
        _use(ledger, "g1", 0),
        _use(ledger, "g1", 0),  # logged just before, in the same batch
        _use(ledger, "g1", 1),
        _use(ledger, "g1", 2),  # over the total quota
        return_exceptions=True,
    )
    assert results[0] == 0
    assert isinstance(results[1], RecordExists)
    assert results[2] == 1
    assert isinstance(results[3], QuotaExceeded)
    assert ledger.size == 2
    assert [await ledger.entry(i) for i in range(3)] == [_entry("g1-0"), _entry("g1-1"), None]
    assert (await _stored(ledger, "g1")).used_total == 2
    assert await ledger.record("g1-2") is None


async def test_a_cancelled_caller_does_not_undo_its_use(where: Callable[[str], Location]) -> None:
    path = where("ledger")
    ledger = await Ledger.open(path)
    await ledger.remember_grant(_grant(), NOW)
    task = asyncio.create_task(_use(ledger, "g1", 0))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await ledger.close()  # waits for the batch in flight
    again = await Ledger.open(path)
    try:
        record = await again.record("g1-0")
        assert record is not None
        assert (record.state, record.entry_index) == ("logged", 0)
    finally:
        await again.close()


async def test_proofs_read_nodes_by_the_primary_key(path: Path) -> None:
    # A scan of every node per proof made each use slower as the log grew.
    await (await Ledger.open(path)).close()
    connection = sqlite3.connect(path)
    try:
        plan = connection.execute(
            "EXPLAIN QUERY PLAN " + ledger_module.nodes_query(3), [0, 1, 1, 0, 2, 0]
        ).fetchall()
    finally:
        connection.close()
    details = [row[-1] for row in plan]
    assert "SEARCH t USING PRIMARY KEY (level=? AND idx=?)" in details, details
    assert not any(d in ("SCAN t", "SCAN tree_nodes") for d in details), details
