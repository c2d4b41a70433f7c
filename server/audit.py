"""The audit log as the outside world sees it: signed checkpoints and proofs.

Checkpoints are C2SP tlog-checkpoint notes signed by the log key, an EC P-256 service key in the
HSM (note signature type 0x02: DER ECDSA over SHA-256 of the note text). A checkpoint is signed
when one is asked for and the tree has grown since the last one.
"""

from __future__ import annotations

import asyncio
import hashlib

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mobilesign import auditlog
from mobilesign.errors import Kind
from mobilesign.v1 import hsm_pb2
from server.errors import GatewayError
from server.hsm_proxy_client import HsmClient
from server.ledger import Ledger


class AuditLog:
    """Checkpoints and proofs over the ledger's Merkle tree."""

    def __init__(self, ledger: Ledger, hsm: HsmClient, key: hsm_pb2.KeyInfo, origin: str) -> None:
        self._ledger = ledger
        self._hsm = hsm
        self._key = key
        self.origin = origin
        public = serialization.load_der_public_key(key.public_key_spki)
        assert isinstance(public, ec.EllipticCurvePublicKey)
        self._public = public
        self._lock = asyncio.Lock()
        self._latest: tuple[int, bytes] | None = None

    @property
    def public_key_spki(self) -> bytes:
        """The log key (DER SubjectPublicKeyInfo)."""
        return self._key.public_key_spki

    @property
    def ledger(self) -> Ledger:
        """The ledger the log lives in."""
        return self._ledger

    async def checkpoint(self) -> tuple[int, bytes]:
        """(tree size, signed note) for the current tree."""
        async with self._lock:
            size = self._ledger.size
            if self._latest is not None and self._latest[0] == size:
                return self._latest
            body = auditlog.Checkpoint(self.origin, size, self._ledger.root(size)).to_body()
            signature = await self._hsm.sign_digest(
                self._key.key_id,
                hsm_pb2.SIGNATURE_MECHANISM_ECDSA_SHA256,
                hashlib.sha256(body).digest(),
            )

            def precomputed(text: bytes) -> bytes:
                # The HSM signed exactly this text; the note code checks the signature again.
                assert text == body
                return signature

            note = auditlog.sign_note(
                body, [auditlog.NoteSigner(self.origin, self._public, precomputed)]
            )
            self._latest = (size, note)
            return self._latest

    def _check_sizes(self, *sizes: int) -> None:
        if any(size > self._ledger.size for size in sizes):
            raise GatewayError(
                Kind.OUT_OF_RANGE, "TREE_SIZE_TOO_LARGE", "the log is not that large"
            )

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """Inclusion proof of an entry in the tree of ``size`` entries."""
        self._check_sizes(size)
        if not 0 <= index < size:
            raise GatewayError(
                Kind.OUT_OF_RANGE, "ENTRY_OUT_OF_RANGE", "no such entry in that tree"
            )
        return self._ledger.inclusion_proof(index, size)

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        """Consistency proof between two tree sizes (``0 < old_size <= new_size``)."""
        self._check_sizes(new_size)
        if not 0 < old_size <= new_size:
            raise GatewayError(
                Kind.INVALID,
                "SIZES_INVALID",
                "sizes must satisfy 0 < old_size <= new_size",
            )
        return self._ledger.consistency_proof(old_size, new_size)
