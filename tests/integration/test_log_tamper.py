"""Tamper evidence: rewriting the audit log's storage (changing, deleting, reordering or
appending entries behind the gateway's back) gets no checkpoint signed. The HSM proxy, the log's
witness, signs only trees that extend the last one it signed, so an attacker with the gateway's
disk and credentials cannot make a rewritten log look valid; a verifier holding an earlier
checkpoint would detect one (``client.verify_consistency``) if it ever saw it. Before that, the
gateway itself refuses to start on entries that do not match the Merkle tree nodes it stored
beside them; an attacker who also deletes the stored nodes (the gateway then recomputes them from
the entries it finds) gets it started, and the witness still refuses."""

from __future__ import annotations

import contextlib
import hashlib
import signal
import sqlite3
from collections.abc import Iterator

import grpc
import pytest

import client
from mobilesign.rpc.status import reason_of
from mobilesign.testing import Deployment
from mobilesign.v1 import gateway_pb2
from tests.integration import escrow

pytestmark = pytest.mark.integration


@pytest.fixture
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """All four services, fresh for each manipulation."""
    deployment = Deployment(tmp_path_factory.mktemp("tamper"))
    deployment.start_all()
    yield deployment
    deployment.stop_all()


async def _fill(deployment: Deployment, uses: int) -> tuple[escrow.Organisation, bytes]:
    """Some uses; returns the organisation and the checkpoint after them."""
    organisation = await escrow.organisation(deployment, "tamperco")
    phone = await escrow.phone(deployment, organisation, "tamper")
    try:
        grant = await escrow.grant(
            deployment, phone.user_id, organisation.seal, [gateway_pb2.OPERATION_SIGN_DIGEST]
        )
        for n in range(uses):
            await phone.gateway.use_key(
                phone.signing,
                grant_id=grant.grant_id,
                operation=gateway_pb2.OPERATION_SIGN_DIGEST,
                data=hashlib.sha256(n.to_bytes(4, "big")).digest(),
                trust=organisation.trust,
            )
    finally:
        await phone.close()
    async with deployment.public_channel("gateway") as channel:
        note = (
            await escrow.public(channel).GetCheckpoint(gateway_pb2.GetCheckpointRequest())
        ).checkpoint
    return organisation, note


def _rewrite(
    deployment: Deployment, *statements: tuple[str, tuple[object, ...]], drop_tree: bool = False
) -> None:
    """Stop the gateway, change its ledger database directly, as an attacker with disk access;
    with ``drop_tree``, also delete the stored tree nodes (the gateway recomputes missing ones
    from the entries at start)."""
    assert deployment.stop("gateway", signal.SIGTERM) == 0
    _change_ledger(deployment, *statements, drop_tree=drop_tree)


def _change_ledger(
    deployment: Deployment, *statements: tuple[str, tuple[object, ...]], drop_tree: bool = False
) -> None:
    assert deployment.services["gateway"].process.poll() is not None  # the gateway is down
    ledger = deployment.state_dir / "gateway" / "ledger.db"
    with contextlib.closing(sqlite3.connect(ledger)) as db:
        for sql, parameters in statements:
            assert db.execute(sql, parameters).rowcount == 1
        if drop_tree:
            db.execute("DELETE FROM tree_nodes")
        db.commit()


def _refuses_to_start(deployment: Deployment) -> None:
    """The gateway's start check: the entries do not hash to the stored tree nodes."""
    with pytest.raises(RuntimeError, match="TreeMismatch: a stored tree node is missing"):
        deployment.start("gateway")


def _started_without_the_stored_tree(deployment: Deployment) -> None:
    """After the start check refused, the attacker deletes the stored nodes and starts again."""
    _refuses_to_start(deployment)
    _change_ledger(deployment, drop_tree=True)
    deployment.start("gateway")


async def _consistent_with_today(
    deployment: Deployment, organisation: escrow.Organisation, earlier: bytes
) -> None:
    """Raise VerificationFailed unless today's log extends the one ``earlier`` describes."""
    old_size = int(earlier.split(b"\n")[1])
    async with deployment.public_channel("gateway") as channel:
        gateway = escrow.public(channel)
        latest = (await gateway.GetCheckpoint(gateway_pb2.GetCheckpointRequest())).checkpoint
        new_size = int(latest.split(b"\n")[1])
        if new_size < old_size:
            raise client.VerificationFailed("CONSISTENCY_INVALID", "the log shrank")
        proof = list(
            (
                await gateway.GetConsistencyProof(
                    gateway_pb2.GetConsistencyProofRequest(old_size=old_size, new_size=new_size)
                )
            ).proof
        )
    trust = organisation.trust
    client.verify_consistency(earlier, latest, proof, trust.log_public_key, trust.log_origin)


async def _refused_by_the_witness(deployment: Deployment) -> None:
    """The gateway can no longer get a checkpoint signed for the log it now holds."""
    async with deployment.public_channel("gateway") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await escrow.public(channel).GetCheckpoint(gateway_pb2.GetCheckpointRequest())
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION, info.value.details()
    assert reason_of(info.value) == "CHECKPOINT_INCONSISTENT"


async def test_untouched_log_is_consistent(deployment: Deployment) -> None:
    organisation, earlier = await _fill(deployment, 3)
    deployment.stop("gateway")
    deployment.start("gateway")
    await _consistent_with_today(deployment, organisation, earlier)


async def test_changed_entry_is_detected(deployment: Deployment) -> None:
    await _fill(deployment, 3)
    _rewrite(
        deployment,
        (
            # One byte of entry 2 (inside its record) becomes 0x00; still a BLOB.
            "UPDATE log_entries SET entry = CAST(substr(entry, 1, 30) || x'00'"
            " || substr(entry, 32) AS BLOB) WHERE entry_index = 2",
            (),
        ),
    )
    _started_without_the_stored_tree(deployment)
    await _refused_by_the_witness(deployment)


async def test_deleted_entries_are_detected(deployment: Deployment) -> None:
    organisation, earlier = await _fill(deployment, 3)
    genuine = _entries(deployment)
    # Deleting the newest entry (truncation): a smaller tree than the witness signed. (Here
    # the attacker always deletes the stored tree nodes too: only the witness is left.)
    _rewrite(
        deployment,
        (
            "DELETE FROM log_entries WHERE entry_index = (SELECT MAX(entry_index)"
            " FROM log_entries)",
            (),
        ),
        drop_tree=True,
    )
    deployment.start("gateway")
    await _refused_by_the_witness(deployment)
    # Writing other history on top of the truncation: longer than before, but it does not
    # extend the tree the witness signed.
    _, last_entry, created_at = genuine[-1]
    append = (
        "INSERT INTO log_entries (entry_index, entry, created_at)"
        " SELECT MAX(entry_index) + 1, ?, ? FROM log_entries"
    )
    _rewrite(
        deployment,
        (append, (last_entry + b"\x00", created_at)),
        (append, (last_entry + b"\x01", created_at)),
        drop_tree=True,
    )
    deployment.start("gateway")
    await _refused_by_the_witness(deployment)
    # Deleting an entry in the middle leaves a hole: the gateway refuses to start on it.
    _rewrite(deployment, ("DELETE FROM log_entries WHERE entry_index = 1", ()), drop_tree=True)
    with pytest.raises(RuntimeError, match="entry 1 is missing"):
        deployment.start("gateway")
    # Closing the hole by renumbering the later entries changes the tree: refused too.
    _renumber_after(deployment, 1)
    _change_ledger(deployment, drop_tree=True)
    deployment.start("gateway")
    await _refused_by_the_witness(deployment)
    # Put back as it was signed, the log is served again and extends the earlier checkpoint.
    assert deployment.stop("gateway", signal.SIGTERM) == 0
    _put_back(deployment, genuine)
    deployment.start("gateway")
    await _consistent_with_today(deployment, organisation, earlier)


def _entries(deployment: Deployment) -> list[tuple[int, bytes, int]]:
    ledger = deployment.state_dir / "gateway" / "ledger.db"
    with contextlib.closing(sqlite3.connect(ledger)) as db:
        return list(db.execute("SELECT entry_index, entry, created_at FROM log_entries ORDER BY 1"))


def _put_back(deployment: Deployment, entries: list[tuple[int, bytes, int]]) -> None:
    ledger = deployment.state_dir / "gateway" / "ledger.db"
    with contextlib.closing(sqlite3.connect(ledger)) as db:
        db.execute("DELETE FROM log_entries")
        db.execute("DELETE FROM tree_nodes")
        db.executemany("INSERT INTO log_entries VALUES (?, ?, ?)", entries)
        db.commit()


def _renumber_after(deployment: Deployment, hole: int) -> None:
    ledger = deployment.state_dir / "gateway" / "ledger.db"
    with contextlib.closing(sqlite3.connect(ledger)) as db:
        db.execute(
            "UPDATE log_entries SET entry_index = -entry_index WHERE entry_index > ?", (hole,)
        )
        db.execute("UPDATE log_entries SET entry_index = -entry_index - 1 WHERE entry_index < 0")
        db.commit()


async def test_reordered_entries_are_detected(deployment: Deployment) -> None:
    await _fill(deployment, 3)
    _rewrite(
        deployment,
        ("UPDATE log_entries SET entry_index = -1 WHERE entry_index = 1", ()),
        ("UPDATE log_entries SET entry_index = 1 WHERE entry_index = 2", ()),
        ("UPDATE log_entries SET entry_index = 2 WHERE entry_index = -1", ()),
    )
    _started_without_the_stored_tree(deployment)
    await _refused_by_the_witness(deployment)
