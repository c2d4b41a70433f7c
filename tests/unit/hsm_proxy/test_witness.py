"""The log's witness (``hsm_proxy.witness``) with a software key and a database on a temporary
file: it signs a first checkpoint and then only trees that extend the last one it signed, keeps
that state across restarts, and changes nothing when it refuses."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils

from hsm_proxy.errors import HsmProxyError
from hsm_proxy.witness import MAX_PROOF_HASHES, MAX_TREE_SIZE, LogState, Witness
from mobilesign import auditlog
from mobilesign.errors import Kind
from mobilesign.storage.schema import Location
from tests.certificate_checks import spki_of

ORIGIN = "example.invalid/witness-test"
NOW = 1_790_000_000


class Key:
    """The log key, in this process; counts what it signs."""

    def __init__(self) -> None:
        self.private = ec.generate_private_key(ec.SECP256R1())
        self.signed: list[bytes] = []

    async def sign_digest(self, digest: bytes) -> bytes:
        self.signed.append(digest)
        return self.private.sign(digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))

    @property
    def spki(self) -> bytes:
        return spki_of(self.private.public_key())


def _tree(entries: int, salt: bytes = b"") -> auditlog.MerkleTree:
    return auditlog.MerkleTree.from_leaves(
        [auditlog.leaf_hash(salt + i.to_bytes(4, "big")) for i in range(entries)]
    )


@pytest.fixture
def key() -> Key:
    return Key()


@pytest.fixture
async def witness(where: Callable[[str], Location], key: Key) -> AsyncIterator[Witness]:
    opened = await Witness.open(where("witness"), ORIGIN, key.spki, key.sign_digest)
    yield opened
    await opened.close()


def _verify(note: bytes, key: Key) -> auditlog.Checkpoint:
    return auditlog.verify_checkpoint(note, auditlog.NoteVerifier(ORIGIN, key.private.public_key()))


async def _sign(witness: Witness, tree: auditlog.MerkleTree, size: int) -> bytes:
    old = (await witness.state()).tree_size
    proof = tree.consistency_proof(old, size) if 0 < old < size else []
    return await witness.sign(
        old_size=old, tree_size=size, root_hash=tree.root(size), proof=proof, now=NOW
    )


def _refused(exc: pytest.ExceptionInfo[HsmProxyError], kind: Kind, reason: str) -> None:
    assert (exc.value.kind, exc.value.reason) == (kind, reason), exc.value


async def test_first_checkpoint_then_extensions_are_signed(witness: Witness, key: Key) -> None:
    tree = _tree(20)
    assert ((await witness.state()).tree_size, (await witness.state()).root_hash) == (
        0,
        auditlog.EMPTY_ROOT,
    )
    for size in (3, 3, 8, 13, 20):
        checkpoint = _verify(await _sign(witness, tree, size), key)
        assert (checkpoint.origin, checkpoint.size, checkpoint.root_hash) == (
            ORIGIN,
            size,
            tree.root(size),
        )
        assert ((await witness.state()).tree_size, (await witness.state()).root_hash) == (
            size,
            tree.root(size),
        )


async def test_an_empty_log_can_be_witnessed(witness: Witness, key: Key) -> None:
    checkpoint = _verify(
        await witness.sign(
            old_size=0, tree_size=0, root_hash=auditlog.EMPTY_ROOT, proof=[], now=NOW
        ),
        key,
    )
    assert checkpoint.size == 0


async def _refuses(witness: Witness, key: Key, kind: Kind, reason: str, **request: object) -> None:
    before, signed = (await witness.state()), len(key.signed)
    with pytest.raises(HsmProxyError) as info:
        await witness.sign(**{"now": NOW, **request})  # type: ignore[arg-type]
    _refused(info, kind, reason)
    assert (await witness.state()) == before
    assert len(key.signed) == signed


async def test_truncation_fork_and_rewrite_are_refused(witness: Witness, key: Key) -> None:
    tree = _tree(16)
    await _sign(witness, tree, 10)
    other = _tree(16, salt=b"rewritten")
    inconsistent = (Kind.PRECONDITION, "CHECKPOINT_INCONSISTENT")
    # Truncation: a smaller tree than the one signed.
    await _refuses(
        witness, key, *inconsistent, old_size=10, tree_size=9, root_hash=tree.root(9), proof=[]
    )
    # Fork: another root for the size signed.
    await _refuses(
        witness, key, *inconsistent, old_size=10, tree_size=10, root_hash=other.root(10), proof=[]
    )
    # Rewrite: a longer tree whose proof does not lead back to the root signed.
    await _refuses(
        witness,
        key,
        *inconsistent,
        old_size=10,
        tree_size=16,
        root_hash=other.root(16),
        proof=other.consistency_proof(10, 16),
    )
    # The honest tree with a proof for the rewritten one, and with no proof at all.
    await _refuses(
        witness,
        key,
        *inconsistent,
        old_size=10,
        tree_size=16,
        root_hash=tree.root(16),
        proof=other.consistency_proof(10, 16),
    )
    await _refuses(
        witness, key, *inconsistent, old_size=10, tree_size=16, root_hash=tree.root(16), proof=[]
    )
    # The honest extension still goes through afterwards.
    assert _verify(await _sign(witness, tree, 16), key).size == 16


async def test_a_first_checkpoint_takes_no_proof_and_an_empty_tree_its_own_root(
    witness: Witness, key: Key
) -> None:
    tree = _tree(4)
    inconsistent = (Kind.PRECONDITION, "CHECKPOINT_INCONSISTENT")
    await _refuses(
        witness,
        key,
        *inconsistent,
        old_size=0,
        tree_size=4,
        root_hash=tree.root(4),
        proof=[bytes(32)],
    )
    await _refuses(
        witness, key, *inconsistent, old_size=0, tree_size=0, root_hash=tree.root(4), proof=[]
    )


async def test_a_stale_idea_of_the_last_checkpoint_is_refused(witness: Witness, key: Key) -> None:
    tree = _tree(8)
    await _sign(witness, tree, 5)
    await _refuses(
        witness,
        key,
        Kind.PRECONDITION,
        "WITNESS_STATE_STALE",
        old_size=3,
        tree_size=8,
        root_hash=tree.root(8),
        proof=tree.consistency_proof(3, 8),
    )


@pytest.mark.parametrize(
    ("root_hash", "proof", "tree_size"),
    [
        (bytes(31), [], 1),
        (bytes(33), [], 1),
        (b"", [], 1),
        (bytes(32), [bytes(32)] * (MAX_PROOF_HASHES + 1), 1),
        (bytes(32), [], MAX_TREE_SIZE + 1),
        (bytes(32), [], -1),
    ],
)
async def test_malformed_requests_are_refused(
    witness: Witness, key: Key, root_hash: bytes, proof: list[bytes], tree_size: int
) -> None:
    await _refuses(
        witness,
        key,
        Kind.INVALID,
        "CHECKPOINT_MALFORMED",
        old_size=0,
        tree_size=tree_size,
        root_hash=root_hash,
        proof=proof,
    )


async def test_the_state_survives_a_restart(where: Callable[[str], Location], key: Key) -> None:
    tree = _tree(12)
    first = await Witness.open(where("w"), ORIGIN, key.spki, key.sign_digest)
    await _sign(first, tree, 7)
    await first.close()
    again = await Witness.open(where("w"), ORIGIN, key.spki, key.sign_digest)
    try:
        assert ((await again.state()).tree_size, (await again.state()).root_hash) == (
            7,
            tree.root(7),
        )
        with pytest.raises(HsmProxyError) as info:
            await again.sign(old_size=7, tree_size=6, root_hash=tree.root(6), proof=[], now=NOW)
        _refused(info, Kind.PRECONDITION, "CHECKPOINT_INCONSISTENT")
        assert _verify(await _sign(again, tree, 12), key).size == 12
    finally:
        await again.close()


async def test_a_note_is_released_only_once_its_state_is_stored(
    witness: Witness, key: Key, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = _tree(4)

    async def failing_run(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(witness._db, "run", failing_run)
    with pytest.raises(OSError, match="disk full"):
        await _sign(witness, tree, 4)
    monkeypatch.undo()
    assert (await witness.state()).tree_size == 0
    assert witness._state.tree_size == 0  # nor in memory


async def test_an_unusable_origin_is_refused_at_start(tmp_path: Path, key: Key) -> None:
    with pytest.raises(auditlog.NoteError):
        await Witness.open(tmp_path / "w.db", "two\nlines", key.spki, key.sign_digest)


async def test_a_caller_that_goes_away_leaves_memory_and_disk_agreeing(
    where: Callable[[str], Location], key: Key
) -> None:
    release = asyncio.Event()
    original = key.sign_digest

    async def slow_sign(digest: bytes) -> bytes:
        await release.wait()
        return await original(digest)

    witness = await Witness.open(where("w"), ORIGIN, key.spki, slow_sign)
    tree = _tree(5)
    caller = asyncio.create_task(_sign(witness, tree, 5))
    await asyncio.sleep(0.05)
    caller.cancel()  # as when the gateway is killed with the RPC in flight
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await caller
    await asyncio.sleep(0.1)
    assert witness._state.tree_size == 5  # memory, before the store is asked
    await witness.close()
    reopened = await Witness.open(where("w"), ORIGIN, key.spki, key.sign_digest)
    try:
        assert (await reopened.state()) == witness._state
        # The next checkpoint extends the one stored, without a conflict.
        assert _verify(await _sign(reopened, _tree(9), 9), key).size == 9
    finally:
        await reopened.close()


async def test_the_latest_signed_note_is_kept_for_the_gateways(witness: Witness, key: Key) -> None:
    assert await witness.latest() == (LogState(0, auditlog.EMPTY_ROOT), b"")
    tree = _tree(6)
    note = await _sign(witness, tree, 6)
    assert await witness.latest() == (LogState(6, tree.root(6)), note)
    # Signing the same tree again changes nothing stored.
    await witness.sign(old_size=6, tree_size=6, root_hash=tree.root(6), proof=[], now=NOW)
    assert await witness.latest() == (LogState(6, tree.root(6)), note)
