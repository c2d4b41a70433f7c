"""The HSM proxy as the audit log's witness: the log key signs a checkpoint only when its tree
extends the last one signed, so no holder of the gateway's credentials can get a fork, a
truncation or a rewrite of the log signed.

The last signed (size, root) is stored durably before a signed note is released; the log key
itself never leaves the token and signs nothing but checkpoints.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from cachetools import LRUCache
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from hsm_proxy.errors import HsmProxyError
from mobilesign import auditlog
from mobilesign.errors import Kind
from mobilesign.storage.connection import Connection
from mobilesign.storage.database import Database, exclusive, transaction
from mobilesign.storage.schema import Location, Schema

#: Longest consistency proof between trees of at most 2**64 entries (2 * 64 hashes).
MAX_PROOF_HASHES = 128
#: Largest tree size the witness stores (SQLite integers are signed 64-bit).
MAX_TREE_SIZE = 2**63 - 1
#: Roots of signed checkpoints kept in memory: authorisations name the latest few.
KEPT_ROOTS = 64

SCHEMA = Schema(
    sqlite=(
        """
        CREATE TABLE signed_checkpoints (
            tree_size INTEGER PRIMARY KEY,
            root_hash BLOB NOT NULL,
            signed_at INTEGER NOT NULL
        )
        """,
        # The signed note itself, so that a gateway that lost a race to another can use the
        # winner's (NULL for checkpoints signed before it was kept).
        "ALTER TABLE signed_checkpoints ADD COLUMN note BLOB",
    ),
    postgresql=(
        """
        CREATE TABLE signed_checkpoints (
            tree_size BIGINT PRIMARY KEY,
            root_hash BYTEA NOT NULL,
            signed_at BIGINT NOT NULL
        )
        """,
        "ALTER TABLE signed_checkpoints ADD COLUMN note BYTEA",
    ),
)


@dataclass(frozen=True)
class LogState:
    """The last checkpoint the witness signed (size 0 and the empty root before the first)."""

    tree_size: int
    root_hash: bytes


def _inconsistent(message: str) -> HsmProxyError:
    return HsmProxyError(Kind.PRECONDITION, "CHECKPOINT_INCONSISTENT", message)


class Witness:
    """Signs checkpoints of one log with the log key, extending only what it signed before."""

    def __init__(
        self,
        db: Database,
        origin: str,
        public_key_spki: bytes,
        sign_digest: Callable[[bytes], Awaitable[bytes]],
        state: LogState,
    ) -> None:
        self._db = db
        self.origin = origin
        self.public_key_spki = public_key_spki
        public = serialization.load_der_public_key(public_key_spki)
        assert isinstance(public, ec.EllipticCurvePublicKey)
        self._public = public
        self._sign_digest = sign_digest
        self._roots: LRUCache[int, bytes] = LRUCache(KEPT_ROOTS)
        self._state = state
        # One checkpoint at a time: each is checked against the one signed just before it.
        self._lock = asyncio.Lock()

    @classmethod
    async def open(
        cls,
        where: Location,
        origin: str,
        public_key_spki: bytes,
        sign_digest: Callable[[bytes], Awaitable[bytes]],
    ) -> Witness:
        """Open (creating) the witness's database and read the last signed checkpoint."""
        auditlog.Checkpoint(origin, 0, auditlog.EMPTY_ROOT)  # refuses an unusable origin
        db = await Database.open(where, SCHEMA)
        state = await db.run(_stored_state)
        return cls(db, origin, public_key_spki, sign_digest, state)

    async def close(self) -> None:
        """Close the database."""
        await self._db.close()

    async def state(self) -> LogState:
        """The last checkpoint signed (by this proxy, or another sharing its store)."""
        self._state = await self._db.run(_stored_state)
        return self._state

    async def latest(self) -> tuple[LogState, bytes]:
        """The last checkpoint signed and its signed note (empty if it was signed before notes
        were kept)."""
        state, note = await self._db.run(_stored_latest)
        self._state = state
        return state, note

    async def _sign_and_store(
        self, old_size: int, tree_size: int, root_hash: bytes, proof: Sequence[bytes], now: int
    ) -> bytes:
        async with self._lock:
            last = self._state
            if old_size != last.tree_size:
                raise HsmProxyError(
                    Kind.PRECONDITION,
                    "WITNESS_STATE_STALE",
                    "the last signed checkpoint has another size",
                )
            if tree_size < last.tree_size:
                raise _inconsistent("the tree is smaller than one signed before")
            if last.tree_size == 0 and tree_size > 0:
                # Nothing was signed yet: the first checkpoint has nothing to extend.
                if proof:
                    raise _inconsistent("a first checkpoint takes no proof")
            else:
                try:
                    auditlog.verify_consistency(
                        old_size=last.tree_size,
                        new_size=tree_size,
                        proof=list(proof),
                        old_root=last.root_hash,
                        new_root=root_hash,
                    )
                except auditlog.ProofError as exc:
                    raise _inconsistent("the tree does not extend the last one signed") from exc
            body = auditlog.Checkpoint(self.origin, tree_size, root_hash).to_body()
            signature = await self._sign_digest(hashlib.sha256(body).digest())

            def signed(text: bytes) -> bytes:
                # The token signed exactly this text; sign_note verifies the signature again.
                assert text == body
                return signature

            note = auditlog.sign_note(
                body, [auditlog.NoteSigner(self.origin, self._public, signed)]
            )
            if tree_size != last.tree_size:
                # On disk before the note is released, and only if no other proxy sharing the
                # store signed since: of two signatures extending one checkpoint, one is kept
                # and the other never leaves.
                moved = await self._db.run(
                    lambda c: transaction(
                        c, lambda c: _store(c, last, tree_size, root_hash, note, now)
                    )
                )
                if moved is not None:
                    self._state = moved
                    raise HsmProxyError(
                        Kind.PRECONDITION,
                        "WITNESS_STATE_STALE",
                        "the last signed checkpoint has another size",
                    )
                self._state = LogState(tree_size, root_hash)
        return note

    async def root_at(self, tree_size: int) -> bytes | None:
        """The root of the tree of ``tree_size`` entries, if a checkpoint of it was signed."""
        if not 0 <= tree_size <= MAX_TREE_SIZE:
            return None
        known = self._roots.get(tree_size)
        if known is not None:
            return known
        rows = await self._db.run(
            lambda c: c.execute(
                "SELECT root_hash FROM signed_checkpoints WHERE tree_size = ?", (tree_size,)
            ).fetchall()
        )
        if not rows:
            return None
        # A signed checkpoint is never changed: its root can be kept.
        root = self._roots[tree_size] = bytes(rows[0]["root_hash"])
        return root

    async def sign(
        self, *, old_size: int, tree_size: int, root_hash: bytes, proof: Sequence[bytes], now: int
    ) -> bytes:
        """The signed note for ``(tree_size, root_hash)``, if it extends the last checkpoint.

        ``old_size`` is the caller's idea of the last signed size; a stale one is refused with
        ``WITNESS_STATE_STALE`` (ask :attr:`state` again). The new state is on disk before the
        note is returned.
        """
        if (
            len(root_hash) != auditlog.HASH_SIZE
            or len(proof) > MAX_PROOF_HASHES
            or not 0 <= tree_size <= MAX_TREE_SIZE
        ):
            raise HsmProxyError(
                Kind.INVALID,
                "CHECKPOINT_MALFORMED",
                "a root is 32 bytes, a proof at most 128 hashes, a size below 2**63",
            )
        # Shielded: a caller that goes away (its RPC cancelled) must not leave the stored state
        # ahead of the one in memory.
        return await asyncio.shield(
            self._sign_and_store(old_size, tree_size, root_hash, proof, now)
        )


def _stored_state(c: Connection) -> LogState:
    rows = c.execute(
        "SELECT tree_size, root_hash FROM signed_checkpoints ORDER BY tree_size DESC LIMIT 1"
    ).fetchall()
    if not rows:
        return LogState(0, auditlog.EMPTY_ROOT)
    return LogState(int(rows[0]["tree_size"]), bytes(rows[0]["root_hash"]))


def _stored_latest(c: Connection) -> tuple[LogState, bytes]:
    rows = c.execute(
        "SELECT tree_size, root_hash, note FROM signed_checkpoints ORDER BY tree_size DESC LIMIT 1"
    ).fetchall()
    if not rows:
        return LogState(0, auditlog.EMPTY_ROOT), b""
    row = rows[0]
    note = bytes(row["note"]) if row["note"] is not None else b""
    return LogState(int(row["tree_size"]), bytes(row["root_hash"])), note


def _store(
    c: Connection, last: LogState, tree_size: int, root_hash: bytes, note: bytes, now: int
) -> LogState | None:
    """Inside a transaction: keep the checkpoint if ``last`` is still the latest stored; else
    the latest, untouched."""
    exclusive(c, "witness")
    latest = _stored_state(c)
    if latest != last:
        return latest
    c.execute(
        "INSERT INTO signed_checkpoints (tree_size, root_hash, signed_at, note)"
        " VALUES (?, ?, ?, ?)",
        (tree_size, root_hash, now, note),
    )
    return None
