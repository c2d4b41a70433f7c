"""The audit log as the outside world sees it: signed checkpoints and proofs.

Checkpoints are C2SP tlog-checkpoint notes signed by the log key, an EC P-256 key that only the
HSM proxy uses, as the log's witness (note signature type 0x02: DER ECDSA over SHA-256 of the
note text). The gateway asks for one when one is wanted and the tree has grown, handing the
proxy a consistency proof from the last checkpoint it signed; a tree that does not extend that
one (rewritten, truncated, forked) gets no signature at all.
"""

from __future__ import annotations

import asyncio

from mobilesign.errors import Kind
from mobilesign.v1 import hsm_pb2
from server.errors import GatewayError
from server.hsm_proxy_client import HsmClient
from server.ledger import Ledger

#: Tries at a witness signature when other gateways keep moving the witness on.
_WITNESS_ATTEMPTS = 5


class AuditLog:
    """Checkpoints and proofs over the ledger's Merkle tree."""

    def __init__(self, ledger: Ledger, hsm: HsmClient, state: hsm_pb2.GetLogStateResponse) -> None:
        self._ledger = ledger
        self._hsm = hsm
        self.origin = state.origin
        self._public_key_spki = state.public_key_spki
        # The last checkpoint the HSM proxy signed, as far as this gateway knows.
        self._witnessed = state.tree_size
        self._lock = asyncio.Lock()
        self._latest: tuple[int, bytes] | None = None

    @property
    def public_key_spki(self) -> bytes:
        """The log key (DER SubjectPublicKeyInfo)."""
        return self._public_key_spki

    @property
    def ledger(self) -> Ledger:
        """The ledger the log lives in."""
        return self._ledger

    async def checkpoint(self, covering: int = 0) -> tuple[int, bytes]:
        """(tree size, signed note) for the current tree, signed by the HSM proxy; with
        ``covering``, the latest checkpoint already signed will do if its tree has at least
        that many entries (so that uses logged together share one witness signature). Without
        it, the tree is first brought up to date with what other gateways appended."""
        if not covering:
            await self._ledger.refresh()
        async with self._lock:
            latest = self._latest
            if latest is not None and (covering and latest[0] >= covering):
                return latest
            size = self._ledger.size
            if latest is not None and latest[0] == size:
                return latest
            for attempt in range(_WITNESS_ATTEMPTS):
                try:
                    note = await self._witness(size)
                    break
                except GatewayError as exc:
                    if exc.reason != "WITNESS_STATE_STALE" or attempt == _WITNESS_ATTEMPTS - 1:
                        raise
                # Another gateway (or a restart) moved the proxy on: ask where it is. Its
                # checkpoint will do if it covers what is asked and is of this tree; else sign
                # the tree as it is now, which extends it.
                state = await self._hsm.log_state()
                self._witnessed = state.tree_size
                size = await self._ledger.refresh()
                if await self._theirs_will_do(state, covering):
                    self._latest = (state.tree_size, state.checkpoint)
                    return self._latest
            self._witnessed = size
            self._latest = (size, note)
            return self._latest

    async def _theirs_will_do(self, state: hsm_pb2.GetLogStateResponse, covering: int) -> bool:
        return (
            bool(covering and state.checkpoint)
            and covering <= state.tree_size <= self._ledger.size
            and await self._ledger.root(state.tree_size) == state.root_hash
        )

    async def _witness(self, size: int) -> bytes:
        old = self._witnessed
        # A tree smaller than the witnessed one gets no proof: the proxy refuses it as it is.
        proof = await self._ledger.consistency_proof(old, size) if 0 < old < size else []
        return await self._hsm.sign_checkpoint(old, size, await self._ledger.root(size), proof)

    async def _check_sizes(self, *sizes: int) -> None:
        # A size beyond this gateway's view may have been appended by another gateway.
        if any(size > self._ledger.size for size in sizes):
            await self._ledger.refresh()
        if any(size > self._ledger.size for size in sizes):
            raise GatewayError(
                Kind.OUT_OF_RANGE, "TREE_SIZE_TOO_LARGE", "the log is not that large"
            )

    async def entry(self, index: int) -> bytes:
        """Log entry ``index``; indices are checked against the tree before storage is asked
        (any uint64 may come in, SQLite integers stop at 2**63 - 1)."""
        if index >= self._ledger.size:
            await self._ledger.refresh()
        if not 0 <= index < self._ledger.size:
            raise GatewayError(Kind.OUT_OF_RANGE, "ENTRY_OUT_OF_RANGE", "no such entry")
        entry = await self._ledger.entry(index)
        assert entry is not None  # the log has no holes (checked at start)
        return entry

    async def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """Inclusion proof of an entry in the tree of ``size`` entries."""
        await self._check_sizes(size)
        if not 0 <= index < size:
            raise GatewayError(
                Kind.OUT_OF_RANGE, "ENTRY_OUT_OF_RANGE", "no such entry in that tree"
            )
        return await self._ledger.inclusion_proof(index, size)

    async def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        """Consistency proof between two tree sizes (``0 < old_size <= new_size``)."""
        await self._check_sizes(new_size)
        if not 0 < old_size <= new_size:
            raise GatewayError(
                Kind.INVALID,
                "SIZES_INVALID",
                "sizes must satisfy 0 < old_size <= new_size",
            )
        return await self._ledger.consistency_proof(old_size, new_size)
