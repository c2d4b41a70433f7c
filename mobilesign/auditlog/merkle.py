"""RFC 9162 (section 2.1) Merkle tree hashing, proof generation and proof verification.

Hashing is SHA-256 with the RFC's domain separation: a leaf is ``SHA-256(0x00 || entry)``, an
interior node is ``SHA-256(0x01 || left || right)``, and the empty tree hashes to ``SHA-256("")``.

Generation works on *perfect subtrees*: node ``(level, index)`` is the root of the complete subtree
over leaves ``[index * 2**level, (index + 1) * 2**level)``; level 0 is the leaf hashes themselves.
Every RFC 9162 tree hash, inclusion path and consistency proof is a fold over such nodes, and
because the log is append-only a perfect subtree's hash never changes once it exists. So:

* :class:`MerkleTree` takes a ``node(level, index) -> hash`` reader. When the storage layer keeps
  the nodes that :class:`CompactRange` emits on append, every root and proof costs O(log n) node
  reads and O(log n) hashing. :meth:`MerkleTree.from_leaves` builds the reader from leaf hashes
  alone (a sequence or ``index -> hash`` callable); it hashes leaves on demand and memoises
  subtrees of 256 leaves and up, so the first proof over n leaves costs O(n) hashing and later
  ones roughly 255 + O(log n), with memory bounded by about n / 128 cached hashes.
* :class:`CompactRange` is the right border of the tree (at most 64 hashes). It appends a leaf
  in amortised O(1) hashing with no reads, yields the nodes that append completed (for the
  storage layer to persist), and gives the current root in O(log n).

All traversals are loops; nothing recurses deeper than 64 levels.

Verification follows the RFC 9162 2.1.3.2 and 2.1.4.2 bit-twiddling algorithms (no tree
recomputation). Verifiers return ``None`` on success and raise :class:`ProofError`, whose
``reason`` is one of the stable strings in :data:`ProofFailure`, on any failure. Argument errors
when *generating* proofs (index or sizes outside the tree) raise plain :class:`ValueError`.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable, Sequence
from typing import Literal

from mobilesign.errors import Error, Kind

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "CompactRange",
    "MerkleTree",
    "NodeReader",
    "ProofError",
    "ProofFailure",
    "leaf_hash",
    "merkle_tree_hash",
    "node_hash",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

# Tree sizes are uint64 on the wire (RFC 9162 TreeHeadDataV2, tlog-checkpoint).
_MAX_SIZE = (1 << 64) - 1
# MerkleTree.from_leaves memoises perfect subtrees from this level (256 leaves) up.
_CACHE_MIN_LEVEL = 8

NodeReader = Callable[[int, int], bytes]
"""``node(level, index)``: hash of the perfect subtree over leaves
``[index * 2**level, (index + 1) * 2**level)``; level 0 must return the leaf hashes."""

ProofFailure = Literal[
    "BAD_SIZE",  # a tree size or index is negative or above 2**64 - 1
    "INDEX_OUT_OF_RANGE",  # inclusion: index >= size
    "SIZE_ORDER",  # consistency: old size > new size
    "EMPTY_TREE",  # consistency from an empty tree to a non-empty one proves nothing
    "BAD_HASH_LENGTH",  # leaf hash or proof element is not 32 bytes
    "PROOF_LENGTH",  # wrong number of proof elements for the sizes given
    "ROOT_MISMATCH",  # the proof does not lead to the root(s) given
]


class ProofError(Error):
    """A Merkle proof failed to verify (INVALID); ``reason`` is a stable :data:`ProofFailure`."""

    def __init__(self, reason: ProofFailure, message: str) -> None:
        super().__init__(Kind.INVALID, reason, message)
        self.reason: ProofFailure = reason


def leaf_hash(entry: bytes) -> bytes:
    """RFC 9162 leaf hash: ``SHA-256(0x00 || entry)``."""
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 9162 interior node hash: ``SHA-256(0x01 || left || right)``."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def merkle_tree_hash(entries: Iterable[bytes]) -> bytes:
    """``MTH(D[n])`` of raw entries, streaming: O(n) hashing, O(log n) memory."""
    border = CompactRange()
    for entry in entries:
        border.append(leaf_hash(entry))
    return border.root()


def _largest_power_of_two_below(n: int) -> int:
    """The RFC's ``k``: the largest power of two strictly smaller than ``n`` (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


class MerkleTree:
    """Roots and proofs for any prefix of an append-only log, read through a :data:`NodeReader`.

    The reader is asked only for perfect subtrees lying wholly inside the size being proven, so it
    may back a log that is still growing. Exceptions from the reader propagate unchanged.
    """

    def __init__(self, node: NodeReader) -> None:
        self._read_node = node

    @classmethod
    def from_leaves(cls, leaf_hashes: Sequence[bytes] | Callable[[int], bytes]) -> MerkleTree:
        """A tree over leaf hashes only, given as a sequence or an ``index -> hash`` callable."""
        read_leaf = leaf_hashes if callable(leaf_hashes) else leaf_hashes.__getitem__
        cache: dict[tuple[int, int], bytes] = {}

        def node(level: int, index: int) -> bytes:
            if level < _CACHE_MIN_LEVEL:
                # Small subtree: hash its leaves level by level, no recursion.
                first = index << level
                hashes = [_checked(read_leaf(i)) for i in range(first, first + (1 << level))]
                while len(hashes) > 1:
                    hashes = [node_hash(hashes[i], hashes[i + 1]) for i in range(0, len(hashes), 2)]
                return hashes[0]
            key = (level, index)
            cached = cache.get(key)
            if cached is None:
                # Sound to memoise: a perfect subtree of an append-only log never changes.
                cached = node_hash(node(level - 1, 2 * index), node(level - 1, 2 * index + 1))
                cache[key] = cached
            return cached

        return cls(node)

    def _node(self, level: int, index: int) -> bytes:
        return _checked(self._read_node(level, index))

    def _range_hash(self, start: int, count: int) -> bytes:
        """MTH of leaves ``[start, start + count)``, ``start`` aligned as in every RFC split.

        The RFC's recursive split of such a range is its binary decomposition into perfect
        subtrees, largest first, folded together from the right.
        """
        if count == 0:
            return EMPTY_ROOT
        pieces: list[bytes] = []
        for level in range(count.bit_length() - 1, -1, -1):
            if count >> level & 1:
                pieces.append(self._node(level, start >> level))
                start += 1 << level
        result = pieces.pop()
        while pieces:
            result = node_hash(pieces.pop(), result)
        return result

    def _perfect(self, start: int, count: int) -> bytes:
        """Hash of a perfect subtree given as a leaf range (``count`` a power of two)."""
        level = count.bit_length() - 1
        return self._node(level, start >> level)

    def root(self, size: int) -> bytes:
        """``MTH(D[size])``: the root hash of the first ``size`` leaves."""
        _check_size(size)
        return self._range_hash(0, size)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """``PATH(index, D[size])`` (RFC 9162 2.1.3.1), leaf-side sibling first."""
        _check_size(size)
        if not 0 <= index < size:
            raise ValueError(f"leaf index {index} is outside a tree of size {size}")
        path: list[bytes] = []
        start, n, m = 0, size, index
        while n > 1:
            k = _largest_power_of_two_below(n)
            if m < k:
                path.append(self._range_hash(start + k, n - k))
                n = k
            else:
                path.append(self._perfect(start, k))
                start, n, m = start + k, n - k, m - k
        path.reverse()
        return path

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        """``PROOF(old_size, D[new_size])`` (RFC 9162 2.1.4.1); empty when the sizes are equal."""
        _check_size(old_size)
        _check_size(new_size)
        if old_size > new_size:
            raise ValueError(f"old size {old_size} exceeds new size {new_size}")
        if old_size == new_size:
            return []
        if old_size == 0:
            raise ValueError("a consistency proof from the empty tree is undefined")
        # SUBPROOF(m, D[n], b) unrolled: walk down from the root collecting the outer sibling at
        # each step; the innermost element comes last and the result is reversed at the end.
        proof: list[bytes] = []
        start, n, m, whole_old_tree = 0, new_size, old_size, True
        while m != n:
            k = _largest_power_of_two_below(n)
            if m <= k:
                proof.append(self._range_hash(start + k, n - k))
                n = k
            else:
                proof.append(self._perfect(start, k))
                start, n, m, whole_old_tree = start + k, n - k, m - k, False
        if not whole_old_tree:
            proof.append(self._range_hash(start, m))
        proof.reverse()
        return proof


class CompactRange:
    """The right border of a growing tree: one perfect-subtree hash per set bit of its size.

    Lets the writer append leaves and know the new root without reading storage, and tells it
    which perfect-subtree nodes each append completed so that they can be stored for
    :class:`MerkleTree`.
    """

    def __init__(self) -> None:
        self._size = 0
        # Perfect subtree hashes, largest (leftmost) first; their sizes are the bits of _size.
        self._hashes: list[bytes] = []

    @classmethod
    def resume(cls, size: int, node: NodeReader) -> CompactRange:
        """The border of an existing tree of ``size`` leaves, read in O(log size) node reads."""
        _check_size(size)
        border = cls()
        start = 0
        for level in range(size.bit_length() - 1, -1, -1):
            if size >> level & 1:
                border._hashes.append(_checked(node(level, start >> level)))
                start += 1 << level
        border._size = size
        return border

    @property
    def size(self) -> int:
        """Number of leaves appended so far."""
        return self._size

    def append(self, leaf: bytes) -> list[tuple[int, int, bytes]]:
        """Add a leaf hash; return the ``(level, index, hash)`` nodes it completed, leaf first."""
        if self._size == _MAX_SIZE:
            raise ValueError("tree is full")
        current = _checked(leaf)
        index, level = self._size, 0
        completed = [(0, index, current)]
        # Each trailing 1 bit of the old size is a left sibling now completed by this leaf.
        while index & 1:
            current = node_hash(self._hashes.pop(), current)
            index >>= 1
            level += 1
            completed.append((level, index, current))
        self._hashes.append(current)
        self._size += 1
        return completed

    def root(self) -> bytes:
        """``MTH`` of everything appended so far."""
        if not self._hashes:
            return EMPTY_ROOT
        result = self._hashes[-1]
        for left in reversed(self._hashes[:-1]):
            result = node_hash(left, result)
        return result


def _checked(node: bytes) -> bytes:
    # A short or long hash from storage would silently yield a wrong root or proof.
    if len(node) != HASH_SIZE:
        raise ValueError(f"node hash is {len(node)} bytes, expected {HASH_SIZE}")
    return node


def _check_size(size: int) -> None:
    if not 0 <= size <= _MAX_SIZE:
        raise ValueError(f"tree size {size} is outside 0..2**64-1")


def _verify_sizes(*sizes: int) -> None:
    for size in sizes:
        if not 0 <= size <= _MAX_SIZE:
            raise ProofError("BAD_SIZE", f"{size} is outside 0..2**64-1")


def _verify_hash_lengths(what: str, hashes: Iterable[bytes]) -> None:
    for h in hashes:
        if len(h) != HASH_SIZE:
            raise ProofError("BAD_HASH_LENGTH", f"{what} is {len(h)} bytes, expected {HASH_SIZE}")


def _roots_match(computed: bytes, expected: bytes) -> bool:
    return hmac.compare_digest(computed, expected)


def verify_inclusion(
    *, leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``leaf_hash`` is leaf ``index`` of the tree of ``size`` leaves with ``root``.

    RFC 9162 2.1.3.2. Each step shifts ``sn`` right, so a hostile proof costs at most 64 hashes
    before it is rejected. Raises :class:`ProofError`; returns ``None`` on success.
    """
    _verify_sizes(index, size)
    if index >= size:
        raise ProofError("INDEX_OUT_OF_RANGE", f"leaf index {index} >= tree size {size}")
    _verify_hash_lengths("leaf hash", [leaf_hash])
    _verify_hash_lengths("proof element", proof)

    fn, sn, r = index, size - 1, leaf_hash
    for p in proof:
        if sn == 0:
            raise ProofError("PROOF_LENGTH", "proof continues past the root")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("PROOF_LENGTH", "proof ends below the root")
    if not _roots_match(r, root):
        raise ProofError("ROOT_MISMATCH", "computed root differs from the expected root")


def verify_consistency(
    *, old_size: int, new_size: int, proof: Sequence[bytes], old_root: bytes, new_root: bytes
) -> None:
    """Check that the tree ``(new_size, new_root)`` extends the tree ``(old_size, old_root)``.

    RFC 9162 2.1.4.2 for ``0 < old_size < new_size``. Equal sizes need an empty proof and equal
    roots (and a size-0 root must be the empty-tree hash); a proof from size 0 to a larger tree
    is rejected as ``empty_tree`` since it would prove nothing. Raises :class:`ProofError`;
    returns ``None`` on success.
    """
    _verify_sizes(old_size, new_size)
    if old_size > new_size:
        raise ProofError("SIZE_ORDER", f"old size {old_size} > new size {new_size}")
    if old_size == new_size:
        if proof:
            raise ProofError("PROOF_LENGTH", "equal sizes need an empty proof")
        if old_size == 0 and not _roots_match(old_root, EMPTY_ROOT):
            raise ProofError("ROOT_MISMATCH", "root of the empty tree is not SHA-256('')")
        if not _roots_match(old_root, new_root):
            raise ProofError("ROOT_MISMATCH", "equal sizes but different roots")
        return
    if old_size == 0:
        raise ProofError("EMPTY_TREE", "consistency from the empty tree proves nothing")
    if not proof:
        raise ProofError("PROOF_LENGTH", "different sizes need a non-empty proof")
    _verify_hash_lengths("proof element", proof)

    # A power-of-two old tree is itself a subtree of the new one, so the proof omits its hash.
    old_is_perfect = old_size & (old_size - 1) == 0
    path = [old_root, *proof] if old_is_perfect else list(proof)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("PROOF_LENGTH", "proof continues past the root")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("PROOF_LENGTH", "proof ends below the root")
    if not _roots_match(fr, old_root):
        raise ProofError("ROOT_MISMATCH", "proof does not lead to the old root")
    if not _roots_match(sr, new_root):
        raise ProofError("ROOT_MISMATCH", "proof does not lead to the new root")
