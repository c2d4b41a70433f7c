"""Shared by the crash tests: phones using an organisation key step by step (so that a record
caught by a kill can be executed again), reconnection after a restart, and the checks that
nothing acknowledged was lost."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence

import grpc
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

import client
from mobilesign import auditlog, records
from mobilesign.rpc.status import reason_of
from mobilesign.storage.schema import Location, PostgresStore
from mobilesign.testing import Deployment
from mobilesign.v1 import gateway_pb2, hsm_pb2, hsm_pb2_grpc
from tests.conftest import peek
from tests.integration import escrow

#: How a record caught by a kill may end when executed again: completed now, or closed with a
#: reason; never executed twice (the HSM proxy refuses a replay, logged as RESULT_LOST).
RETRY_OUTCOMES = frozenset({"OK", "RESULT_LOST", "RECORD_FAILED", "RECORD_EXPIRED"})


@dataclasses.dataclass
class Acknowledged:
    """A use whose result reached the phone."""

    receipt: gateway_pb2.Receipt
    grant_id: str


@dataclasses.dataclass
class InFlight:
    """A record co-signed whose execution got no answer."""

    record_id: str
    record: bytes
    signature: bytes
    data: bytes
    grant_id: str


async def use_once(
    phone: escrow.Phone,
    grant_id: str,
    data: bytes,
    seen: list[Acknowledged],
    in_flight: list[tuple[escrow.Phone, InFlight]],
) -> bool:
    """One use by the raw steps; False (keeping a record in flight) when a call failed."""
    stub = phone.gateway._stub
    try:
        prepared = await stub.PrepareOperation(
            gateway_pb2.PrepareOperationRequest(
                grant_id=grant_id, operation=gateway_pb2.OPERATION_SIGN_DIGEST, input=data
            ),
            metadata=phone.gateway._metadata,
            timeout=30,
        )
    except grpc.aio.AioRpcError:
        return False
    signature = await phone.signing.sign(prepared.record)
    try:
        executed = await stub.ExecuteOperation(
            gateway_pb2.ExecuteOperationRequest(
                record_id=prepared.record_id,
                record=prepared.record,
                user_signature=signature,
                input=data,
            ),
            metadata=phone.gateway._metadata,
            timeout=30,
        )
    except grpc.aio.AioRpcError:
        in_flight.append(
            (phone, InFlight(prepared.record_id, prepared.record, signature, data, grant_id))
        )
        return False
    seen.append(Acknowledged(executed.receipt, grant_id))
    return True


def datum(index: int, n: int) -> bytes:
    """A distinct digest per phone and step."""
    return hashlib.sha256(bytes([index]) + n.to_bytes(8, "big")).digest()


async def retry(
    phone: escrow.Phone, flight: InFlight, seen: list[Acknowledged], outcomes: list[str]
) -> None:
    """Execute a record again after the restart, as a phone whose answer was lost would."""
    try:
        executed = await phone.gateway._stub.ExecuteOperation(
            gateway_pb2.ExecuteOperationRequest(
                record_id=flight.record_id,
                record=flight.record,
                user_signature=flight.signature,
                input=flight.data,
            ),
            metadata=phone.gateway._metadata,
            timeout=30,
        )
    except grpc.aio.AioRpcError as exc:
        outcomes.append(reason_of(exc) or exc.code().name)
        return
    outcomes.append("OK")
    seen.append(Acknowledged(executed.receipt, flight.grant_id))


async def reconnect(deployment: Deployment, phone: escrow.Phone) -> None:
    """A new signing session and a new gateway login after a crash (new channels)."""
    phone.signing.abort()
    for channel in phone.channels:
        await channel.close()
    cosigner = deployment.public_channel("cosigner")
    gateway_channel = deployment.public_channel("gateway")
    phone.channels[:] = [cosigner, gateway_channel]
    phone.signing = client.SigningSession(cosigner, phone.keystore, escrow.PIN)
    await phone.signing.open()
    phone.gateway = client.GatewaySession(gateway_channel, phone.keystore)
    await phone.gateway.login()


async def check_log(
    deployment: Deployment,
    organisation: escrow.Organisation,
    seen: list[Acknowledged],
    grants: list[str],
    checkpoints: Sequence[bytes] = (),
    gateway: str = "gateway",
) -> None:
    """The log verifies from entry 0; every acknowledged use is in it with a receipt that
    verifies; every checkpoint seen is a prefix of today's; the quotas (the RA's and the HSM
    proxy's count) are exactly the logged records; the gateway's ledger agrees."""
    trust = organisation.trust
    log_key = serialization.load_der_public_key(trust.log_public_key)
    assert isinstance(log_key, ec.EllipticCurvePublicKey)
    verifier = auditlog.NoteVerifier(trust.log_origin, log_key)
    async with deployment.public_channel(gateway) as channel:
        stub = escrow.public(channel)
        note = (await stub.GetCheckpoint(gateway_pb2.GetCheckpointRequest())).checkpoint
        final = auditlog.verify_checkpoint(note, verifier)
        entries = [
            (await stub.GetLogEntry(gateway_pb2.GetLogEntryRequest(entry_index=i))).entry
            for i in range(final.size)
        ]
        # The log verifies from its first entry: the root recomputed from every entry.
        assert auditlog.merkle_tree_hash(entries) == final.root_hash
        for ack in seen:
            receipt = ack.receipt
            assert entries[receipt.entry_index] == receipt.entry
            client.verify_receipt(
                receipt, trust.ca_certificate, trust.log_public_key, trust.log_origin
            )
        # Every checkpoint anyone saw (in a receipt or asked for) is a prefix of today's.
        for old_note in [*checkpoints, *(a.receipt.checkpoint for a in seen)]:
            old = auditlog.verify_checkpoint(old_note, verifier)
            assert old.size <= final.size
            assert auditlog.merkle_tree_hash(entries[: old.size]) == old.root_hash
            proof = list(
                (
                    await stub.GetConsistencyProof(
                        gateway_pb2.GetConsistencyProofRequest(
                            old_size=old.size, new_size=final.size
                        )
                    )
                ).proof
            )
            client.verify_consistency(old_note, note, proof, trust.log_public_key, trust.log_origin)
    # No quota without a logged record: uses counted == record entries, per grant, both at
    # the RA and next to the key.
    decoded = [records.decode_entry(e) for e in entries]
    logged = [
        records.decode_record(e.record) for e in decoded if isinstance(e, records.RecordEntry)
    ]
    assert len({r.record_id for r in logged}) == len(logged)
    async with deployment.channel("hsm-proxy", "ra") as channel:
        usage = (
            await hsm_pb2_grpc.HsmServiceStub(channel).GetGrantUsage(
                hsm_pb2.GetGrantUsageRequest(grant_ids=grants)
            )
        ).usage
    for grant_id, counted in zip(grants, usage, strict=True):
        assert counted.grant_id == grant_id
        expected = sum(1 for r in logged if r.grant_id == grant_id)
        assert counted.used_total == expected, (grant_id, counted.used_total, expected)
        state = await escrow.grant_state(deployment, grant_id)
        assert state is not None
        assert state.used_total == expected
    # The ledger agrees: each record past 'prepared' has exactly one record entry.
    ledger: Location = deployment.state_dir / "gateway" / "ledger.db"
    if "gateway" in deployment.databases:
        ledger = PostgresStore(deployment.databases["gateway"], "ledger")
    with peek(ledger) as db:
        rows = db.execute(
            "SELECT record_id, entry_index FROM records WHERE state != 'prepared'"
        ).fetchall()
    assert sorted(r[0] for r in rows) == sorted(r.record_id for r in logged)
    for record_id, entry_index in rows:
        entry = decoded[entry_index]
        assert isinstance(entry, records.RecordEntry)
        assert records.decode_record(entry.record).record_id == record_id
