"""Merkle proofs: generator against a naive RFC 9162 reference, verifier against mutations."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pytest

from mobilesign.auditlog import (
    EMPTY_ROOT,
    CompactRange,
    MerkleTree,
    ProofError,
    leaf_hash,
    merkle_tree_hash,
    node_hash,
    verify_consistency,
    verify_inclusion,
)

MAX_SIZE = 64
ENTRIES = [f"entry {i}".encode() for i in range(MAX_SIZE)]
LEAVES = [leaf_hash(e) for e in ENTRIES]


# --- Naive recursive RFC 9162 2.1.1, 2.1.3.1 and 2.1.4.1, written independently of the module.


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def naive_mth(d: list[bytes]) -> bytes:
    if not d:
        return _sha256(b"")
    if len(d) == 1:
        return _sha256(b"\x00" + d[0])
    k = _k(len(d))
    return _sha256(b"\x01" + naive_mth(d[:k]) + naive_mth(d[k:]))


def naive_path(m: int, d: list[bytes]) -> list[bytes]:
    if len(d) == 1:
        return []
    k = _k(len(d))
    if m < k:
        return [*naive_path(m, d[:k]), naive_mth(d[k:])]
    return [*naive_path(m - k, d[k:]), naive_mth(d[:k])]


def naive_subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if b else [naive_mth(d)]
    k = _k(n)
    if m <= k:
        return [*naive_subproof(m, d[:k], b), naive_mth(d[k:])]
    return [*naive_subproof(m - k, d[k:], False), naive_mth(d[:k])]


def naive_proof(m: int, d: list[bytes]) -> list[bytes]:
    return naive_subproof(m, d, True)


NAIVE_ROOTS = [naive_mth(ENTRIES[:n]) for n in range(MAX_SIZE + 1)]


# --- Trees under test: leaf hashes only, and subtree nodes stored from CompactRange appends.


def _stored_nodes(leaves: list[bytes]) -> dict[tuple[int, int], bytes]:
    border = CompactRange()
    nodes: dict[tuple[int, int], bytes] = {}
    for leaf in leaves:
        for level, index, h in border.append(leaf):
            nodes[level, index] = h
    return nodes


STORED = _stored_nodes(LEAVES)
TREES = {
    "leaf-sequence": MerkleTree.from_leaves(LEAVES),
    "leaf-callable": MerkleTree.from_leaves(LEAVES.__getitem__),
    "stored-nodes": MerkleTree(lambda level, index: STORED[level, index]),
}


def _flip(h: bytes, bit: int = 0) -> bytes:
    return bytes([h[0] ^ (1 << bit)]) + h[1:]


def _rejects(check: Callable[[], None]) -> bool:
    try:
        check()
    except ProofError:
        return True
    return False


# --- Hashing and roots.


def test_hash_prefixes() -> None:
    assert leaf_hash(b"abc") == _sha256(b"\x00abc")
    assert node_hash(b"L" * 32, b"R" * 32) == _sha256(b"\x01" + b"L" * 32 + b"R" * 32)
    assert _sha256(b"") == EMPTY_ROOT


@pytest.mark.parametrize("tree_kind", TREES)
def test_roots_match_naive(tree_kind: str) -> None:
    tree = TREES[tree_kind]
    for n in range(MAX_SIZE + 1):
        assert tree.root(n) == NAIVE_ROOTS[n]


def test_merkle_tree_hash_and_compact_range_match_naive() -> None:
    border = CompactRange()
    assert border.root() == EMPTY_ROOT
    for n in range(MAX_SIZE + 1):
        assert merkle_tree_hash(ENTRIES[:n]) == NAIVE_ROOTS[n]
        assert border.size == n
        assert border.root() == NAIVE_ROOTS[n]
        resumed = CompactRange.resume(n, lambda level, index: STORED[level, index])
        assert resumed.root() == NAIVE_ROOTS[n]
        if n < MAX_SIZE:
            border.append(LEAVES[n])


def test_compact_range_emits_every_perfect_subtree() -> None:
    for (level, index), h in STORED.items():
        first = index << level
        assert h == naive_mth(ENTRIES[first : first + (1 << level)])
    # One node per perfect subtree of the 64-leaf tree: 64 + 32 + ... + 1.
    assert len(STORED) == 127


# --- Inclusion: every leaf of every size 1..64.


@pytest.mark.parametrize("size", range(1, MAX_SIZE + 1))
def test_inclusion_proofs(size: int) -> None:
    root = NAIVE_ROOTS[size]
    for index in range(size):
        expected = naive_path(index, ENTRIES[:size])
        for tree in TREES.values():
            assert tree.inclusion_proof(index, size) == expected
        verify_inclusion(leaf_hash=LEAVES[index], index=index, size=size, proof=expected, root=root)

        def check(
            leaf: bytes = LEAVES[index],
            i: int = index,
            n: int = size,
            proof: list[bytes] = expected,
            r: bytes = root,
        ) -> Callable[[], None]:
            return lambda: verify_inclusion(leaf_hash=leaf, index=i, size=n, proof=proof, root=r)

        # Any proof hash, the leaf, the root, the index (same root), or the proof's length.
        for j in range(len(expected)):
            for bit in (0, 7):
                mutated = [*expected[:j], _flip(expected[j], bit), *expected[j + 1 :]]
                assert _rejects(check(proof=mutated))
        assert _rejects(check(leaf=_flip(LEAVES[index])))
        assert _rejects(check(r=_flip(root)))
        for other in {index - 1, index + 1, index ^ 1, index ^ 2, size, -1}:
            if other != index:
                assert _rejects(check(i=other))
        assert _rejects(check(proof=[*expected, LEAVES[0]]))
        if expected:
            assert _rejects(check(proof=expected[:-1]))
        # A different size, claimed together with that size's true root: the root a checkpoint
        # binds to the size. (With the root held fixed, some sizes share the proof's hash chain,
        # e.g. leaf 0 of 3 vs of 4; a signed checkpoint is what binds size and root together.)
        for other_size in {size - 1, size + 1, size * 2, size // 2}:
            if other_size != size and 0 < other_size <= MAX_SIZE:
                assert _rejects(check(n=other_size, r=NAIVE_ROOTS[other_size]))


# --- Consistency: every pair 1 <= m <= n <= 64.


@pytest.mark.parametrize("new_size", range(1, MAX_SIZE + 1))
def test_consistency_proofs(new_size: int) -> None:
    new_root = NAIVE_ROOTS[new_size]
    for old_size in range(1, new_size + 1):
        old_root = NAIVE_ROOTS[old_size]
        expected = naive_proof(old_size, ENTRIES[:new_size]) if old_size < new_size else []
        for tree in TREES.values():
            assert tree.consistency_proof(old_size, new_size) == expected
        verify_consistency(
            old_size=old_size,
            new_size=new_size,
            proof=expected,
            old_root=old_root,
            new_root=new_root,
        )

        def check(
            m: int = old_size,
            n: int = new_size,
            proof: list[bytes] = expected,
            r1: bytes = old_root,
            r2: bytes = new_root,
        ) -> Callable[[], None]:
            return lambda: verify_consistency(
                old_size=m, new_size=n, proof=proof, old_root=r1, new_root=r2
            )

        for j in range(len(expected)):
            for bit in (0, 7):
                mutated = [*expected[:j], _flip(expected[j], bit), *expected[j + 1 :]]
                assert _rejects(check(proof=mutated))
        assert _rejects(check(r1=_flip(old_root)))
        assert _rejects(check(r2=_flip(new_root)))
        assert _rejects(check(proof=[*expected, LEAVES[0]]))
        if expected:
            assert _rejects(check(proof=expected[:-1]))
        # Other sizes, each claimed with its true root (see the inclusion test for why).
        for m in {old_size - 1, old_size + 1, old_size * 2, old_size // 2}:
            if m != old_size and 0 < m <= new_size:
                assert _rejects(check(m=m, r1=NAIVE_ROOTS[m]))
        for n in {new_size - 1, new_size + 1, new_size * 2}:
            if n != new_size and old_size <= n <= MAX_SIZE:
                assert _rejects(check(n=n, r2=NAIVE_ROOTS[n]))
        assert _rejects(check(m=new_size + 1))  # old size beyond new size


# --- Edge cases and reasons.


def test_verifier_reasons() -> None:
    leaf, root = LEAVES[0], NAIVE_ROOTS[1]

    def inclusion_reason(**overrides: object) -> str:
        args: dict[str, object] = {
            "leaf_hash": leaf,
            "index": 0,
            "size": 1,
            "proof": [],
            "root": root,
        }
        args.update(overrides)
        with pytest.raises(ProofError) as info:
            verify_inclusion(**args)  # type: ignore[arg-type]
        return info.value.reason

    assert inclusion_reason(index=1) == "INDEX_OUT_OF_RANGE"
    assert inclusion_reason(size=0) == "INDEX_OUT_OF_RANGE"
    assert inclusion_reason(index=-1) == "BAD_SIZE"
    assert inclusion_reason(size=1 << 64) == "BAD_SIZE"
    assert inclusion_reason(leaf_hash=leaf[:31]) == "BAD_HASH_LENGTH"
    assert inclusion_reason(proof=[b"x" * 33]) == "BAD_HASH_LENGTH"
    assert inclusion_reason(proof=[leaf]) == "PROOF_LENGTH"
    assert inclusion_reason(root=_flip(root)) == "ROOT_MISMATCH"

    def consistency_reason(m: int, n: int, proof: list[bytes], r1: bytes, r2: bytes) -> str:
        with pytest.raises(ProofError) as info:
            verify_consistency(old_size=m, new_size=n, proof=proof, old_root=r1, new_root=r2)
        return info.value.reason

    assert consistency_reason(2, 1, [], root, root) == "SIZE_ORDER"
    assert consistency_reason(0, 1, [], EMPTY_ROOT, root) == "EMPTY_TREE"
    assert consistency_reason(1, 1, [root], root, root) == "PROOF_LENGTH"
    assert consistency_reason(1, 2, [], root, root) == "PROOF_LENGTH"
    assert consistency_reason(0, 0, [], root, root) == "ROOT_MISMATCH"
    assert consistency_reason(1, 2, [b"short"], root, root) == "BAD_HASH_LENGTH"
    # Too long or too short is caught by the RFC's sn checks, before comparing roots.
    good = TREES["leaf-sequence"].consistency_proof(3, 7)
    r3, r7 = NAIVE_ROOTS[3], NAIVE_ROOTS[7]
    assert consistency_reason(3, 7, [*good, leaf], r3, r7) == "PROOF_LENGTH"
    assert consistency_reason(3, 7, good[:-1], r3, r7) == "PROOF_LENGTH"
    assert consistency_reason(3, 7, good, r3, _flip(r7)) == "ROOT_MISMATCH"
    assert consistency_reason(3, 7, good, _flip(r3), r7) == "ROOT_MISMATCH"
    path = TREES["leaf-sequence"].inclusion_proof(2, 7)
    assert inclusion_reason(index=2, size=7, proof=[*path, leaf], root=r7) == "PROOF_LENGTH"
    assert inclusion_reason(index=2, size=7, proof=path[:-1], root=r7) == "PROOF_LENGTH"
    # Equal sizes: trivially consistent when the roots agree.
    verify_consistency(old_size=0, new_size=0, proof=[], old_root=EMPTY_ROOT, new_root=EMPTY_ROOT)
    verify_consistency(old_size=5, new_size=5, proof=[], old_root=root, new_root=root)


def test_generation_argument_errors() -> None:
    tree = TREES["leaf-sequence"]
    with pytest.raises(ValueError, match="outside"):
        tree.inclusion_proof(4, 4)
    with pytest.raises(ValueError, match="outside"):
        tree.inclusion_proof(-1, 4)
    with pytest.raises(ValueError, match="exceeds"):
        tree.consistency_proof(5, 4)
    with pytest.raises(ValueError, match="empty tree"):
        tree.consistency_proof(0, 4)
    assert tree.consistency_proof(0, 0) == []
    assert tree.root(0) == EMPTY_ROOT
    with pytest.raises(ValueError, match="expected 32"):
        MerkleTree.from_leaves([b"short"]).root(1)
    with pytest.raises(ValueError, match="expected 32"):
        CompactRange().append(b"short")


def test_large_tree_proofs_need_logarithmic_reads() -> None:
    """Stored-node proofs over ~200k leaves read O(log n) nodes and verify."""
    size = 200_003
    leaves = [leaf_hash(i.to_bytes(4, "big")) for i in range(size)]
    border = CompactRange()
    nodes: dict[tuple[int, int], bytes] = {}
    for leaf in leaves:
        for level, index, h in border.append(leaf):
            nodes[level, index] = h
    reads = 0

    def read(level: int, index: int) -> bytes:
        nonlocal reads
        reads += 1
        return nodes[level, index]

    tree = MerkleTree(read)
    root = tree.root(size)
    assert root == border.root() == MerkleTree.from_leaves(leaves).root(size)
    assert reads <= 18  # one read per set bit of the size

    log_n = size.bit_length()
    for index in (0, 1, 65_535, 131_072, size - 2, size - 1):
        reads = 0
        proof = tree.inclusion_proof(index, size)
        assert reads <= 2 * log_n
        verify_inclusion(leaf_hash=leaves[index], index=index, size=size, proof=proof, root=root)
    for old_size in (1, 2, 3, 1000, 65_536, 131_071, size - 1):
        reads = 0
        proof = tree.consistency_proof(old_size, size)
        assert reads <= 3 * log_n
        verify_consistency(
            old_size=old_size,
            new_size=size,
            proof=proof,
            old_root=tree.root(old_size),
            new_root=root,
        )
