"""Tamper evidence: rewriting the audit log's storage (changing, deleting or reordering an
entry) is detected by a verifier holding an earlier checkpoint."""

from __future__ import annotations

import contextlib
import hashlib
import signal
import sqlite3
from collections.abc import Iterator

import pytest

import client
from mobilesign.testing import Deployment
from mobilesign.v1 import gateway_pb2
from tests.integration import escrow

pytestmark = pytest.mark.integration


@pytest.fixture
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """All three services, fresh for each manipulation."""
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


def _rewrite(deployment: Deployment, *statements: tuple[str, tuple[object, ...]]) -> None:
    """Stop the gateway, change its ledger database directly, as an attacker with disk access."""
    assert deployment.stop("gateway", signal.SIGTERM) == 0
    ledger = deployment.state_dir / "gateway" / "ledger.db"
    with contextlib.closing(sqlite3.connect(ledger)) as db:
        for sql, parameters in statements:
            assert db.execute(sql, parameters).rowcount == 1
        db.commit()


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


async def test_untouched_log_is_consistent(deployment: Deployment) -> None:
    organisation, earlier = await _fill(deployment, 3)
    deployment.stop("gateway")
    deployment.start("gateway")
    await _consistent_with_today(deployment, organisation, earlier)


async def test_changed_entry_is_detected(deployment: Deployment) -> None:
    organisation, earlier = await _fill(deployment, 3)
    _rewrite(
        deployment,
        (
            # One byte of entry 2 (inside its record) becomes 0x00; still a BLOB.
            "UPDATE log_entries SET entry = CAST(substr(entry, 1, 30) || x'00'"
            " || substr(entry, 32) AS BLOB) WHERE entry_index = 2",
            (),
        ),
    )
    deployment.start("gateway")
    with pytest.raises(client.VerificationFailed, match="CONSISTENCY_INVALID"):
        await _consistent_with_today(deployment, organisation, earlier)


async def test_deleted_entries_are_detected(deployment: Deployment) -> None:
    organisation, earlier = await _fill(deployment, 3)
    # Deleting the newest entry (truncation), then writing new history on top of it: the log
    # is longer again, but it does not extend the log the earlier checkpoint describes.
    _rewrite(
        deployment,
        (
            "DELETE FROM log_entries WHERE entry_index = (SELECT MAX(entry_index)"
            " FROM log_entries)",
            (),
        ),
    )
    deployment.start("gateway")
    phone = await escrow.phone(deployment, organisation, "rewriter")
    try:
        grant = await escrow.grant(
            deployment, phone.user_id, organisation.seal, [gateway_pb2.OPERATION_SIGN_DIGEST]
        )
        await phone.gateway.use_key(
            phone.signing,
            grant_id=grant.grant_id,
            operation=gateway_pb2.OPERATION_SIGN_DIGEST,
            data=hashlib.sha256(b"new history").digest(),
            trust=organisation.trust,
        )
    finally:
        await phone.close()
    async with deployment.public_channel("gateway") as channel:
        note = (
            await escrow.public(channel).GetCheckpoint(gateway_pb2.GetCheckpointRequest())
        ).checkpoint
    # Longer than before: only the consistency proof can tell.
    assert int(note.split(b"\n")[1]) > int(earlier.split(b"\n")[1])
    with pytest.raises(client.VerificationFailed, match="CONSISTENCY_INVALID"):
        await _consistent_with_today(deployment, organisation, earlier)
    # Deleting an entry in the middle leaves a hole: the gateway refuses to start on it.
    _rewrite(deployment, ("DELETE FROM log_entries WHERE entry_index = 1", ()))
    with pytest.raises(RuntimeError, match="entry 1 is missing"):
        deployment.start("gateway")
    # Closing the hole by renumbering the later entries changes the tree: detected too.
    _renumber_after(deployment, 1)
    deployment.start("gateway")
    with pytest.raises(client.VerificationFailed, match="CONSISTENCY_INVALID"):
        await _consistent_with_today(deployment, organisation, earlier)


def _renumber_after(deployment: Deployment, hole: int) -> None:
    ledger = deployment.state_dir / "gateway" / "ledger.db"
    with contextlib.closing(sqlite3.connect(ledger)) as db:
        db.execute(
            "UPDATE log_entries SET entry_index = -entry_index WHERE entry_index > ?", (hole,)
        )
        db.execute("UPDATE log_entries SET entry_index = -entry_index - 1 WHERE entry_index < 0")
        db.commit()


async def test_reordered_entries_are_detected(deployment: Deployment) -> None:
    organisation, earlier = await _fill(deployment, 3)
    _rewrite(
        deployment,
        ("UPDATE log_entries SET entry_index = -1 WHERE entry_index = 1", ()),
        ("UPDATE log_entries SET entry_index = 1 WHERE entry_index = 2", ()),
        ("UPDATE log_entries SET entry_index = 2 WHERE entry_index = -1", ()),
    )
    deployment.start("gateway")
    with pytest.raises(client.VerificationFailed, match="CONSISTENCY_INVALID"):
        await _consistent_with_today(deployment, organisation, earlier)
