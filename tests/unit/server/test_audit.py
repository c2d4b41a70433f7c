"""The gateway's checkpoints when several gateways share one log and one witness: a gateway that
finds the witness moved on by another uses the other's checkpoint when it covers its entries
and is of its tree, and otherwise has the tree as it now is signed; a checkpoint of another
tree is never taken."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from hsm_proxy.errors import HsmProxyError
from hsm_proxy.witness import Witness
from mobilesign import auditlog
from mobilesign.storage.schema import Location, PostgresStore
from mobilesign.v1 import hsm_pb2
from server.audit import AuditLog
from server.errors import GatewayError
from server.ledger import Ledger
from tests.unit.hsm_proxy.test_witness import ORIGIN, Key
from tests.unit.server.test_ledger import NOW, _grant, _log, fixed_time  # noqa: F401

Pair = tuple[AuditLog, AuditLog]


class WitnessClient:
    """The gateway's HSM proxy client, reduced to the witness, in this process."""

    def __init__(self, witness: Witness) -> None:
        self.witness = witness

    async def log_state(self) -> hsm_pb2.GetLogStateResponse:
        state, note = await self.witness.latest()
        return hsm_pb2.GetLogStateResponse(
            public_key_spki=self.witness.public_key_spki,
            origin=self.witness.origin,
            tree_size=state.tree_size,
            root_hash=state.root_hash,
            checkpoint=note,
        )

    async def sign_checkpoint(
        self, old_size: int, tree_size: int, root_hash: bytes, proof: list[bytes]
    ) -> bytes:
        try:
            return await self.witness.sign(
                old_size=old_size, tree_size=tree_size, root_hash=root_hash, proof=proof, now=NOW
            )
        except HsmProxyError as exc:  # as the gateway receives it, relayed
            raise GatewayError(exc.kind, exc.reason, "relayed") from None


@pytest.fixture
def key() -> Key:
    return Key()


@pytest.fixture
async def gateways(
    postgres_dsn: str, where: Callable[[str], Location], key: Key, request: pytest.FixtureRequest
) -> AsyncIterator[Pair]:
    """Two gateways' audit logs over two ledgers on one PostgreSQL store, and one witness (on
    each back end in turn)."""
    store = PostgresStore(postgres_dsn, f"audit_{abs(hash(request.node.nodeid)) % 10**9}")
    witness = await Witness.open(where("witness"), ORIGIN, key.spki, key.sign_digest)
    client = WitnessClient(witness)
    ledgers = [await Ledger.open(store), await Ledger.open(store)]
    for ledger in ledgers:
        await ledger.remember_grant(_grant("g1", quota_total=1000, quota_daily=1000), NOW)
    state = await client.log_state()
    yield (
        AuditLog(ledgers[0], client, state),  # type: ignore[arg-type]
        AuditLog(ledgers[1], client, state),  # type: ignore[arg-type]
    )
    for ledger in ledgers:
        await ledger.close()
    await witness.close()


def _verified(note: bytes, key: Key) -> auditlog.Checkpoint:
    return auditlog.verify_checkpoint(note, auditlog.NoteVerifier(ORIGIN, key.private.public_key()))


async def test_a_gateway_that_lost_the_race_takes_the_winners_checkpoint(
    gateways: Pair, key: Key
) -> None:
    first, second = gateways
    mine = await _log(first.ledger, "r0", "g1")
    await _log(second.ledger, "r1", "g1")
    size, theirs = await second.checkpoint(covering=2)
    assert (size, len(key.signed)) == (2, 1)
    # The first gateway still believes the witness is at 0: it is refused as stale, reads the
    # witness's state and takes the checkpoint the second got, which covers its entry.
    got = await first.checkpoint(covering=mine + 1)
    assert got == (2, theirs)
    assert len(key.signed) == 1
    assert _verified(got[1], key).root_hash == await first.ledger.root(2)


async def test_a_checkpoint_that_does_not_cover_the_entry_is_extended(
    gateways: Pair, key: Key
) -> None:
    first, second = gateways
    await _log(second.ledger, "r0", "g1")
    await second.checkpoint(covering=1)
    mine = await _log(first.ledger, "r1", "g1")
    size, note = await first.checkpoint(covering=mine + 1)
    assert size == 2
    assert _verified(note, key).size == 2
    assert len(key.signed) == 2


async def test_many_uses_through_two_gateways_each_get_a_covering_checkpoint(
    gateways: Pair, key: Key
) -> None:
    async def use(n: int) -> None:
        audit = gateways[n % 2]
        index = await _log(audit.ledger, f"r{n}", "g1")
        size, note = await audit.checkpoint(covering=index + 1)
        checkpoint = _verified(note, key)
        assert checkpoint.size == size > index
        assert checkpoint.root_hash == await audit.ledger.root(size)

    await asyncio.gather(*(use(n) for n in range(120)))
    # Fewer signatures than uses: the gateways share checkpoints.
    assert len(key.signed) < 120
