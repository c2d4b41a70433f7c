"""The gateway's ledger: its copy of the RA's grants with its count of their uses, service
records, and the audit log.

A store of its own (a SQLite file, or a schema in the gateway's PostgreSQL database shared by
every gateway) with its own connection and thread (each method below is one hop to it, a whole
transaction at a time). A record is stored only once it is co-signed: the steps that must be
atomic for one use (consume quota, append the co-signed record to the log, keep the record as
logged) happen together, so a crash leaves either all of them or none. Uses and outcomes are
integrated in batches (group commit): every request that arrives while a transaction commits
joins the next one, each inside its own savepoint (a refused use leaves the rest of its batch
alone), so a batch costs one durable commit however many records it holds; each caller awaits
its own result.

The Merkle tree's nodes (every perfect subtree) are stored beside the entries in the same
transaction, so proofs read O(log n) nodes from the file and memory does not grow with the log;
the table is keyed by (level, index), which gateways sharing the store share. At start the tree
is recomputed from the entries and checked against the stored nodes, every one of them (nothing
stored is trusted; a missing, extra or changed node stops the start), all read in one snapshot,
so that the batches other gateways commit meanwhile are neither half seen nor taken for extra
nodes.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from mobilesign import auditlog
from mobilesign.storage.connection import Connection, IntegrityError
from mobilesign.storage.database import Database, exclusive, snapshot
from mobilesign.storage.schema import Location, Schema

_SQLITE = (
    """
    CREATE TABLE grants (
        grant_id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL,
        key_id TEXT NOT NULL,
        operations TEXT NOT NULL,
        not_before INTEGER NOT NULL,
        not_after INTEGER NOT NULL,
        quota_total INTEGER NOT NULL,
        quota_daily INTEGER NOT NULL,
        purpose TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        revoked_at INTEGER,
        used_total INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX grants_by_user ON grants(user_id);
    CREATE TABLE grant_days (
        grant_id TEXT NOT NULL REFERENCES grants(grant_id),
        day INTEGER NOT NULL,
        used INTEGER NOT NULL,
        PRIMARY KEY (grant_id, day)
    );
    CREATE TABLE records (
        record_id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL,
        user_key_id TEXT NOT NULL,
        grant_id TEXT NOT NULL REFERENCES grants(grant_id),
        record BLOB NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('prepared', 'logged', 'done', 'failed')),
        entry_index INTEGER,
        user_signature BLOB,
        result BLOB,
        reason TEXT,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE log_entries (
        entry_index INTEGER PRIMARY KEY,
        entry BLOB NOT NULL,
        created_at INTEGER NOT NULL
    )
    """,
    # Grants are the RA's, signed; the ledger keeps the signed bytes for the HSM proxy.
    """
    ALTER TABLE grants ADD COLUMN signed_grant BLOB NOT NULL DEFAULT x''
    """,
    # Every perfect subtree's hash; filled from the entries at the first start after this.
    """
    CREATE TABLE tree_nodes (
        level INTEGER NOT NULL,
        idx INTEGER NOT NULL,
        hash BLOB NOT NULL,
        PRIMARY KEY (level, idx)
    ) WITHOUT ROWID
    """,
)
_POSTGRESQL = (
    """
    CREATE TABLE grants (
        grant_id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL,
        key_id TEXT NOT NULL,
        operations TEXT NOT NULL,
        not_before BIGINT NOT NULL,
        not_after BIGINT NOT NULL,
        quota_total BIGINT NOT NULL,
        quota_daily BIGINT NOT NULL,
        purpose TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        revoked_at BIGINT,
        used_total BIGINT NOT NULL DEFAULT 0,
        signed_grant BYTEA NOT NULL
    );
    CREATE INDEX grants_by_user ON grants(user_id);
    CREATE TABLE grant_days (
        grant_id TEXT NOT NULL REFERENCES grants(grant_id),
        day BIGINT NOT NULL,
        used BIGINT NOT NULL,
        PRIMARY KEY (grant_id, day)
    );
    CREATE TABLE records (
        record_id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL,
        user_key_id TEXT NOT NULL,
        grant_id TEXT NOT NULL REFERENCES grants(grant_id),
        record BYTEA NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('prepared', 'logged', 'done', 'failed')),
        entry_index BIGINT,
        user_signature BYTEA,
        result BYTEA,
        reason TEXT,
        created_at BIGINT NOT NULL
    );
    CREATE TABLE log_entries (
        entry_index BIGINT PRIMARY KEY,
        entry BYTEA NOT NULL,
        created_at BIGINT NOT NULL
    );
    CREATE TABLE tree_nodes (
        level BIGINT NOT NULL,
        idx BIGINT NOT NULL,
        hash BYTEA NOT NULL,
        PRIMARY KEY (level, idx)
    )
    """,
)
SCHEMA = Schema(sqlite=_SQLITE, postgresql=_POSTGRESQL)

T = TypeVar("T")
#: Nodes compared or written per statement while the tree is checked at start.
_CHECK_BATCH = 500


class QuotaExceeded(Exception):
    """The grant cannot take one more use now (quota, revocation or window)."""


class TreeMismatch(RuntimeError):
    """The stored tree nodes are not the tree of the stored entries."""


class EntryMissing(RuntimeError):
    """The stored log has a hole: an entry between the first and the last is not there."""


class RecordExists(Exception):
    """The record was logged already (by a concurrent execution of it)."""


@dataclass(frozen=True)
class _Use:
    record_id: str
    user_id: str
    user_key_id: str
    grant_id: str
    record: bytes
    entry: bytes
    user_signature: bytes
    now: float


@dataclass(frozen=True)
class _Outcome:
    record_id: str
    entry: bytes
    succeeded: bool
    result: bytes | None
    reason: str
    now: float


_Pending = tuple[_Use | _Outcome, "asyncio.Future[int]"]


@dataclass(frozen=True)
class GrantRow:
    """A grant and its use so far."""

    grant_id: str
    user_id: str
    key_id: str
    operations: tuple[str, ...]
    not_before: int
    not_after: int
    quota_total: int
    quota_daily: int
    purpose: str
    revoked: bool
    used_total: int
    used_today: int
    #: The RA's SignedGrant bytes.
    signed_grant: bytes


@dataclass(frozen=True)
class RecordRow:
    """A service record and how far it got."""

    record_id: str
    user_id: str
    user_key_id: str
    grant_id: str
    record: bytes
    state: str
    entry_index: int | None
    user_signature: bytes | None
    result: bytes | None
    reason: str | None


def utc_day(now: float) -> int:
    """Days since the epoch (UTC): the unit of daily quotas."""
    return int(now // 86_400)


class Ledger:
    """Grants, records and the log; one writer task commits batches."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._range = auditlog.CompactRange()
        self._queue: list[_Pending] = []
        self._writer: asyncio.Task[None] | None = None
        self.batches = 0  # committed batches (for tests and measurements)

    @classmethod
    async def open(cls, where: Location) -> Ledger:
        """Open the ledger, recompute the Merkle tree from the stored entries and check (or,
        after an upgrade, write) the stored nodes against it."""
        ledger = cls(await Database.open(where, SCHEMA))
        try:
            ledger._range = await ledger._db.run(lambda c: snapshot(c, _checked_tree))
        except BaseException:
            await ledger.close()
            raise
        return ledger

    async def close(self) -> None:
        """Finish the batch being written, then close the database."""
        if self._writer is not None:
            await asyncio.gather(self._writer, return_exceptions=True)
        await self._db.close()

    # Grants ------------------------------------------------------------------------------
    async def remember_grant(self, grant: GrantRow, now: float) -> GrantRow:
        """Keep the RA's grant (once; a revocation the RA reports is kept too, and never
        undone) and return it with the ledger's counts of its uses (today: ``now``'s UTC day).
        Written only when it is new here or newly revoked: a write is a commit, and a use asks
        twice."""

        def remember(c: Connection) -> GrantRow:
            found = _grant(c, grant.grant_id, now)
            if found is not None and (found.revoked or not grant.revoked):
                return found
            c.execute(
                "INSERT INTO grants (grant_id, user_id, key_id, operations, not_before, not_after,"
                " quota_total, quota_daily, purpose, created_at, revoked_at, signed_grant)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT (grant_id) DO UPDATE SET"
                " revoked_at = COALESCE(grants.revoked_at, excluded.revoked_at)",
                (
                    grant.grant_id,
                    grant.user_id,
                    grant.key_id,
                    ",".join(grant.operations),
                    grant.not_before,
                    grant.not_after,
                    grant.quota_total,
                    grant.quota_daily,
                    grant.purpose,
                    int(now),
                    int(now) if grant.revoked else None,
                    grant.signed_grant,
                ),
            )
            stored = _grant(c, grant.grant_id, now)
            assert stored is not None
            return stored

        return await self._db.run(remember)

    async def signed_grant(self, grant_id: str) -> bytes:
        """The RA's signed bytes of a grant the ledger keeps."""

        def read(c: Connection) -> bytes:
            row = c.execute(
                "SELECT signed_grant FROM grants WHERE grant_id = ?", (grant_id,)
            ).fetchone()
            return bytes(row["signed_grant"]) if row else b""

        return await self._db.run(read)

    async def grant(self, grant_id: str, now: float) -> GrantRow | None:
        """One grant with its uses so far (in total, and on the UTC day of ``now``), or None."""
        return await self._db.run(lambda c: _grant(c, grant_id, now))

    # Records -----------------------------------------------------------------------------
    async def record(self, record_id: str) -> RecordRow | None:
        """A record and its state, or None."""

        def read(c: Connection) -> RecordRow | None:
            row = c.execute("SELECT * FROM records WHERE record_id = ?", (record_id,)).fetchone()
            if row is None:
                return None
            return RecordRow(
                record_id=row["record_id"],
                user_id=row["user_id"],
                user_key_id=row["user_key_id"],
                grant_id=row["grant_id"],
                record=bytes(row["record"]),
                state=row["state"],
                entry_index=row["entry_index"],
                user_signature=bytes(row["user_signature"]) if row["user_signature"] else None,
                result=bytes(row["result"]) if row["result"] is not None else None,
                reason=row["reason"],
            )

        return await self._db.run(read)

    async def log_use(
        self,
        record_id: str,
        *,
        user_id: str,
        user_key_id: str,
        grant_id: str,
        record: bytes,
        entry: bytes,
        user_signature: bytes,
        now: float,
    ) -> int:
        """Together, in the next batch: consume one use of the grant (total and today), append
        the co-signed record to the log, and keep the record as logged. Returns the entry index
        once the batch is durable.

        Raises (and changes nothing) :class:`QuotaExceeded` when the grant cannot be used now
        (quota used up, revoked, or outside its window), :class:`RecordExists` when the record
        was logged before.
        """
        return await self._submit(
            _Use(record_id, user_id, user_key_id, grant_id, record, entry, user_signature, now)
        )

    async def log_outcome(
        self, record_id: str, entry: bytes, succeeded: bool, result: bytes | None, reason: str
    ) -> int:
        """Together, in the next batch: append the outcome entry and close the record."""
        return await self._submit(
            _Outcome(record_id, entry, succeeded, result, reason, time.time())
        )

    async def _submit(self, item: _Use | _Outcome) -> int:
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_batches())
        # A caller that goes away does not stop its batch: the writer is its own task.
        return await asyncio.shield(future)

    async def _write_batches(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            await self._write(batch)

    async def _write(self, batch: list[_Pending]) -> None:
        # The tree grows in a copy, adopted once the batch is durable.
        grown = copy.deepcopy(self._range)
        items = [item for item, _ in batch]
        try:
            outcomes = await self._db.run(lambda c: _write_batch(c, items, grown))
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        self._adopt(grown)
        self.batches += 1
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if future.done():
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

    def _adopt(self, grown: auditlog.CompactRange) -> None:
        # Any two trees of the same log agree on their common prefix: the larger is the newer.
        if grown.size > self._range.size:
            self._range = grown

    # Log ---------------------------------------------------------------------------------
    @property
    def size(self) -> int:
        """Entries in the log (committed), as far as this ledger has seen."""
        return self._range.size

    async def refresh(self) -> int:
        """Take in the entries other gateways sharing the store appended since this ledger last
        looked; returns the size."""
        grown = copy.deepcopy(self._range)
        await self._db.run(lambda c: _catch_up(c, grown))
        self._adopt(grown)
        return self.size

    async def _with_nodes(self, compute: Callable[[auditlog.MerkleTree], T]) -> T:
        """Run ``compute`` over the stored tree: which nodes a proof needs depends only on the
        sizes and indices asked, so a first pass lists them and one query fetches them."""
        wanted: list[tuple[int, int]] = []

        def note(level: int, index: int) -> bytes:
            wanted.append((level, index))
            return bytes(32)

        compute(auditlog.MerkleTree(note))
        nodes = await self._db.run(lambda c: _read_nodes(c, wanted))
        return compute(auditlog.MerkleTree(lambda level, index: nodes[(level, index)]))

    async def root(self, size: int | None = None) -> bytes:
        """The RFC 9162 root of the first ``size`` entries (default: all)."""
        if size is None or size == self.size:
            return self._range.root()
        return await self._with_nodes(lambda tree: tree.root(size))

    async def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """Inclusion proof of entry ``index`` in the tree of ``size`` entries."""
        return await self._with_nodes(lambda tree: tree.inclusion_proof(index, size))

    async def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        """Consistency proof between two tree sizes."""
        return await self._with_nodes(lambda tree: tree.consistency_proof(old_size, new_size))

    async def entry(self, index: int) -> bytes | None:
        """One entry's bytes, or None."""

        def read(c: Connection) -> bytes | None:
            row = c.execute("SELECT entry FROM log_entries WHERE entry_index = ?", (index,))
            found = row.fetchone()
            return bytes(found["entry"]) if found else None

        return await self._db.run(read)


# On the database's thread ------------------------------------------------------------------


def _grant(c: Connection, grant_id: str, now: float) -> GrantRow | None:
    row = c.execute(
        "SELECT g.*, COALESCE(d.used, 0) AS used_today FROM grants g"
        " LEFT JOIN grant_days d ON d.grant_id = g.grant_id AND d.day = ?"
        " WHERE g.grant_id = ?",
        (utc_day(now), grant_id),
    ).fetchone()
    if row is None:
        return None
    return GrantRow(
        grant_id=row["grant_id"],
        user_id=row["user_id"],
        key_id=row["key_id"],
        operations=tuple(row["operations"].split(",")),
        not_before=row["not_before"],
        not_after=row["not_after"],
        quota_total=row["quota_total"],
        quota_daily=row["quota_daily"],
        purpose=row["purpose"],
        revoked=row["revoked_at"] is not None,
        used_total=row["used_total"],
        used_today=row["used_today"],
        signed_grant=bytes(row["signed_grant"]),
    )


def nodes_query(count: int) -> str:
    """The query for ``count`` (level, index) pairs: a join on the primary key, one lookup per
    pair (``(level, idx) IN (VALUES ...)`` scans the whole table instead)."""
    values = ",".join("(?, ?)" for _ in range(count))
    return (
        f"SELECT t.level, t.idx, t.hash FROM (VALUES {values}) AS wanted"  # noqa: S608 (placeholders only)
        " JOIN tree_nodes AS t ON t.level = wanted.column1 AND t.idx = wanted.column2"
    )


def _read_nodes(c: Connection, wanted: Sequence[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
    found: dict[tuple[int, int], bytes] = {}
    unique = sorted(set(wanted))
    for start in range(0, len(unique), _CHECK_BATCH):
        chunk = unique[start : start + _CHECK_BATCH]
        rows = c.execute(nodes_query(len(chunk)), [v for node in chunk for v in node])
        for row in rows:
            found[(row["level"], row["idx"])] = bytes(row["hash"])
    return found


def _checked_tree(c: Connection) -> auditlog.CompactRange:
    """The tree of the stored entries, its stored nodes checked against it (or written, after
    an upgrade from a version that kept it in memory only)."""
    tree = auditlog.CompactRange()
    backfill = c.execute("SELECT COUNT(*) FROM tree_nodes").fetchone()[0] == 0
    expected = 0
    computed: list[tuple[int, int, bytes]] = []
    for row in c.execute("SELECT entry_index, entry FROM log_entries ORDER BY entry_index"):
        if row["entry_index"] != expected:
            raise EntryMissing(f"audit log entry {expected} is missing")
        computed.extend(tree.append(auditlog.leaf_hash(bytes(row["entry"]))))
        expected += 1
        if len(computed) >= _CHECK_BATCH:
            _check_nodes(c, computed, backfill)
            computed = []
    _check_nodes(c, computed, backfill)
    # A tree of n leaves has 2n - popcount(n) perfect subtrees: no more, no fewer.
    if (
        c.execute("SELECT COUNT(*) FROM tree_nodes").fetchone()[0]
        != 2 * expected - expected.bit_count()
    ):
        raise TreeMismatch("the stored tree has nodes the stored entries do not make")
    return tree


def _check_nodes(c: Connection, computed: list[tuple[int, int, bytes]], backfill: bool) -> None:
    if not computed:
        return
    if backfill:
        c.executemany("INSERT INTO tree_nodes (level, idx, hash) VALUES (?, ?, ?)", computed)
        return
    stored = _read_nodes(c, [(level, index) for level, index, _ in computed])
    if any(stored.get((level, index)) != value for level, index, value in computed):
        raise TreeMismatch("a stored tree node is missing or not the hash of the entries")


#: What undoes one request of a batch and not the rest.
_REFUSED: tuple[type[Exception], ...] = (QuotaExceeded, RecordExists, *IntegrityError)


def _write_batch(
    c: Connection, items: list[_Use | _Outcome], grown: auditlog.CompactRange
) -> list[int | Exception]:
    """One transaction for the batch, each item in its own savepoint; ``grown`` takes each
    entry appended. Returns each item's entry index, or the refusal that undid only it."""
    outcomes: list[int | Exception] = []
    nodes: list[tuple[int, int, bytes]] = []
    c.execute("BEGIN IMMEDIATE")
    try:
        # One sequencer at a time: gateways sharing a PostgreSQL store take turns, each batch
        # appending after whatever the others appended before it.
        exclusive(c, "log")
        _catch_up(c, grown)
        for item in items:
            c.execute("SAVEPOINT one")
            try:
                index = _apply(c, item, grown.size)
            except _REFUSED as refused:
                # This request only: the rest of the batch goes ahead.
                c.execute("ROLLBACK TO one")
                outcomes.append(refused)
            else:
                nodes.extend(grown.append(auditlog.leaf_hash(item.entry)))
                outcomes.append(index)
            c.execute("RELEASE one")
        c.executemany("INSERT INTO tree_nodes (level, idx, hash) VALUES (?, ?, ?)", nodes)
        c.execute("COMMIT")
    except BaseException:
        c.execute("ROLLBACK")
        raise
    return outcomes


def _catch_up(c: Connection, tree: auditlog.CompactRange) -> None:
    """Append to ``tree`` the entries stored beyond it (by another gateway sharing the store);
    their nodes are in the store already."""
    rows = c.execute(
        "SELECT entry_index, entry FROM log_entries WHERE entry_index >= ? ORDER BY entry_index",
        (tree.size,),
    ).fetchall()
    for row in rows:
        if row["entry_index"] != tree.size:
            raise EntryMissing(f"audit log entry {tree.size} is missing")
        tree.append(auditlog.leaf_hash(bytes(row["entry"])))


def _apply(c: Connection, item: _Use | _Outcome, index: int) -> int:
    """One request's statements, inside its savepoint; the entry goes at ``index``."""
    if isinstance(item, _Use):
        # The grant is checked again here, in the transaction: a revocation or the end of its
        # window that landed since the caller looked still stops the use.
        row = c.execute(
            "UPDATE grants SET used_total = used_total + 1"
            " WHERE grant_id = ? AND used_total < quota_total AND revoked_at IS NULL"
            " AND not_before <= ? AND ? < not_after RETURNING quota_daily",
            (item.grant_id, int(item.now), int(item.now)),
        ).fetchone()
        if row is None:
            raise QuotaExceeded
        used = c.execute(
            "INSERT INTO grant_days (grant_id, day, used) VALUES (?, ?, 1)"
            " ON CONFLICT (grant_id, day) DO UPDATE SET used = grant_days.used + 1"
            " RETURNING used",
            (item.grant_id, utc_day(item.now)),
        ).fetchone()
        if used is None or used[0] > row[0]:
            raise QuotaExceeded
        try:
            c.execute(
                "INSERT INTO records (record_id, user_id, user_key_id, grant_id, record, state,"
                " entry_index, user_signature, created_at) VALUES (?,?,?,?,?,'logged',?,?,?)",
                (
                    item.record_id,
                    item.user_id,
                    item.user_key_id,
                    item.grant_id,
                    item.record,
                    index,
                    item.user_signature,
                    int(item.now),
                ),
            )
        except IntegrityError:
            raise RecordExists from None
    else:
        c.execute(
            "UPDATE records SET state = ?, result = ?, reason = ? WHERE record_id = ?",
            ("done" if item.succeeded else "failed", item.result, item.reason, item.record_id),
        )
    c.execute(
        "INSERT INTO log_entries (entry_index, entry, created_at) VALUES (?, ?, ?)",
        (index, item.entry, int(item.now)),
    )
    return index
