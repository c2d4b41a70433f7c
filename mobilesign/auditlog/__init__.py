"""Tamper-evident audit log core: RFC 9162 Merkle proofs and C2SP signed checkpoints.

Pure and storage-free: the storage layer supplies leaf or subtree hashes (see
:class:`MerkleTree` and :class:`CompactRange`) and a signing callback for the log key (see
:class:`NoteSigner`). Verifiers raise :class:`ProofError` or :class:`NoteError`, each carrying a
stable ``reason`` code.
"""

from mobilesign.auditlog.checkpoint import (
    Checkpoint,
    NoteError,
    NoteSigner,
    NoteVerifier,
    open_note,
    sign_checkpoint,
    sign_note,
    verify_checkpoint,
)
from mobilesign.auditlog.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    CompactRange,
    MerkleTree,
    ProofError,
    leaf_hash,
    merkle_tree_hash,
    node_hash,
    verify_consistency,
    verify_inclusion,
)

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "Checkpoint",
    "CompactRange",
    "MerkleTree",
    "NoteError",
    "NoteSigner",
    "NoteVerifier",
    "ProofError",
    "leaf_hash",
    "merkle_tree_hash",
    "node_hash",
    "open_note",
    "sign_checkpoint",
    "sign_note",
    "verify_checkpoint",
    "verify_consistency",
    "verify_inclusion",
]
