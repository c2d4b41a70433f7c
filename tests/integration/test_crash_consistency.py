"""Nothing acknowledged is lost: the gateway is killed (SIGKILL) at random points while phones
use an organisation key; after each restart the log still verifies from its first entry, every
use whose result reached a phone is in it, and no quota was consumed without a logged record."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import random
import signal
import sqlite3
from collections.abc import Iterator

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

import client
from mobilesign import auditlog, records
from mobilesign.rpc.status import reason_of
from mobilesign.testing import Deployment
from mobilesign.v1 import gateway_pb2
from tests.integration import escrow

pytestmark = pytest.mark.integration
CYCLES = 4


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """All four services."""
    deployment = Deployment(tmp_path_factory.mktemp("crash"))
    deployment.start_all()
    yield deployment
    deployment.stop_all()


@dataclasses.dataclass
class _Acknowledged:
    receipt: gateway_pb2.Receipt
    grant_id: str


@dataclasses.dataclass
class _InFlight:
    record_id: str
    signature: bytes
    data: bytes
    grant_id: str


async def _traffic(
    organisation: escrow.Organisation,
    phone: escrow.Phone,
    grant_id: str,
    seen: list[_Acknowledged],
    in_flight: list[tuple[escrow.Phone, _InFlight]],
    index: int,
) -> None:
    """Use the key step by step until the gateway dies; keep what reached the phone, and the
    record that was co-signed but not answered (to execute again after the restart)."""
    stub = phone.gateway._stub  # (the raw steps, to keep the record in flight)
    n = 0
    while True:
        data = hashlib.sha256(bytes([index]) + n.to_bytes(8, "big")).digest()
        n += 1
        try:
            prepared = await stub.PrepareOperation(
                gateway_pb2.PrepareOperationRequest(
                    grant_id=grant_id, operation=gateway_pb2.OPERATION_SIGN_DIGEST, input=data
                ),
                metadata=phone.gateway._metadata,
            )
        except grpc.aio.AioRpcError:
            return
        signature = await phone.signing.sign(prepared.record)
        try:
            executed = await stub.ExecuteOperation(
                gateway_pb2.ExecuteOperationRequest(
                    record_id=prepared.record_id, user_signature=signature, input=data
                ),
                metadata=phone.gateway._metadata,
            )
        except grpc.aio.AioRpcError:
            in_flight.append((phone, _InFlight(prepared.record_id, signature, data, grant_id)))
            return
        seen.append(_Acknowledged(executed.receipt, grant_id))


async def _retry(
    phone: escrow.Phone, flight: _InFlight, seen: list[_Acknowledged], outcomes: list[str]
) -> None:
    """Execute a record again after the restart, as a phone whose answer was lost would."""
    try:
        executed = await phone.gateway._stub.ExecuteOperation(
            gateway_pb2.ExecuteOperationRequest(
                record_id=flight.record_id, user_signature=flight.signature, input=flight.data
            ),
            metadata=phone.gateway._metadata,
        )
    except grpc.aio.AioRpcError as exc:
        outcomes.append(reason_of(exc) or exc.code().name)
        return
    outcomes.append("OK")
    seen.append(_Acknowledged(executed.receipt, flight.grant_id))


async def _reconnect(deployment: Deployment, phone: escrow.Phone) -> None:
    """A new signing session and a new gateway login after a crash."""
    phone.signing.abort()
    cosigner = phone.channels[0]
    phone.signing = client.SigningSession(cosigner, phone.keystore, escrow.PIN)
    await phone.signing.open()
    for channel in phone.channels[1:]:
        await channel.close()
    gateway_channel = deployment.public_channel("gateway")
    phone.channels[1:] = [gateway_channel]
    phone.gateway = client.GatewaySession(gateway_channel, phone.keystore)
    await phone.gateway.login()


async def test_killing_the_gateway_loses_nothing_acknowledged(deployment: Deployment) -> None:
    chance = random.Random(20261125)
    organisation = await escrow.organisation(deployment, "crashco")
    phones = [await escrow.phone(deployment, organisation, f"crash{i}") for i in range(2)]
    grants = [
        (
            await escrow.grant(
                deployment,
                p.user_id,
                organisation.seal,
                [gateway_pb2.OPERATION_SIGN_DIGEST],
                quota_total=100_000,
                quota_daily=100_000,
            )
        ).grant_id
        for p in phones
    ]
    seen: list[_Acknowledged] = []
    outcomes: list[str] = []
    try:
        for _ in range(CYCLES):
            in_flight: list[tuple[escrow.Phone, _InFlight]] = []
            workers = [
                asyncio.create_task(_traffic(organisation, p, g, seen, in_flight, i))
                for i, (p, g) in enumerate(zip(phones, grants, strict=True))
            ]
            await asyncio.sleep(chance.uniform(0.2, 1.5))
            deployment.stop("gateway", signal.SIGKILL)
            await asyncio.wait_for(asyncio.gather(*workers), timeout=30)
            deployment.start("gateway")
            for p in phones:
                await _reconnect(deployment, p)
            for p, flight in in_flight:
                await _retry(p, flight, seen, outcomes)
        assert len(seen) >= CYCLES  # traffic did flow between the kills
        # A record caught by the kill either completes now or is closed with a reason; it is
        # never executed twice (the HSM proxy refuses a replay, logged as RESULT_LOST).
        assert set(outcomes) <= {"OK", "RESULT_LOST", "RECORD_FAILED", "RECORD_EXPIRED"}
        await _check_log(deployment, organisation, seen, grants)
    finally:
        for p in phones:
            await p.close()


async def _check_log(
    deployment: Deployment,
    organisation: escrow.Organisation,
    seen: list[_Acknowledged],
    grants: list[str],
) -> None:
    trust = organisation.trust
    log_key = serialization.load_der_public_key(trust.log_public_key)
    assert isinstance(log_key, ec.EllipticCurvePublicKey)
    verifier = auditlog.NoteVerifier(trust.log_origin, log_key)
    async with deployment.public_channel("gateway") as channel:
        gateway = escrow.public(channel)
        note = (await gateway.GetCheckpoint(gateway_pb2.GetCheckpointRequest())).checkpoint
        final = auditlog.verify_checkpoint(note, verifier)
        entries = [
            (await gateway.GetLogEntry(gateway_pb2.GetLogEntryRequest(entry_index=i))).entry
            for i in range(final.size)
        ]
        # The log verifies from its first entry: the root recomputed from every entry.
        assert auditlog.merkle_tree_hash(entries) == final.root_hash
        # Every acknowledged use is in it, and its receipt's checkpoint is a prefix of today's.
        for ack in seen:
            receipt = ack.receipt
            assert entries[receipt.entry_index] == receipt.entry
            client.verify_receipt(
                receipt, trust.ca_certificate, trust.log_public_key, trust.log_origin
            )
            old = auditlog.verify_checkpoint(receipt.checkpoint, verifier)
            proof = list(
                (
                    await gateway.GetConsistencyProof(
                        gateway_pb2.GetConsistencyProofRequest(
                            old_size=old.size, new_size=final.size
                        )
                    )
                ).proof
            )
            client.verify_consistency(
                receipt.checkpoint, note, proof, trust.log_public_key, trust.log_origin
            )
        # No quota without a logged record: uses counted == record entries, per grant.
        decoded = [records.decode_entry(e) for e in entries]
        logged = [
            records.decode_record(e.record) for e in decoded if isinstance(e, records.RecordEntry)
        ]
        assert len({r.record_id for r in logged}) == len(logged)
        for grant_id in grants:
            state = await escrow.grant_state(deployment, grant_id)
            assert state is not None
            assert state.used_total == sum(1 for r in logged if r.grant_id == grant_id)
    # The ledger agrees: each record past 'prepared' has exactly one record entry.
    ledger = deployment.state_dir / "gateway" / "ledger.db"
    with contextlib.closing(sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)) as db:
        rows = db.execute(
            "SELECT record_id, entry_index FROM records WHERE state != 'prepared'"
        ).fetchall()
    assert sorted(r[0] for r in rows) == sorted(r.record_id for r in logged)
    for record_id, entry_index in rows:
        entry = decoded[entry_index]
        assert isinstance(entry, records.RecordEntry)
        assert records.decode_record(entry.record).record_id == record_id
