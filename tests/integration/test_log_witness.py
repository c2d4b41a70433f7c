"""The HSM proxy as the log's witness, tried with the gateway's credentials alone (its client
certificate, as a compromised gateway would hold it) against a real proxy process and token:
the log key signs checkpoints that extend the last one signed and nothing else, whatever the
gateway asks, and the proxy keeps what it signed across a restart."""

from __future__ import annotations

import hashlib
import signal
from collections.abc import Iterator

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mobilesign import auditlog
from mobilesign.rpc.status import reason_of
from mobilesign.testing import Deployment
from mobilesign.v1 import hsm_pb2, hsm_pb2_grpc

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """An HSM proxy process over its own SoftHSM2 token."""
    deployment = Deployment(tmp_path_factory.mktemp("witness"))
    deployment.start("hsm-proxy")
    yield deployment
    deployment.stop_all()


def _tree(entries: int, salt: bytes = b"") -> auditlog.MerkleTree:
    return auditlog.MerkleTree.from_leaves(
        [auditlog.leaf_hash(salt + i.to_bytes(4, "big")) for i in range(entries)]
    )


async def _refused(call: object, code: grpc.StatusCode, reason: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    assert (info.value.code(), reason_of(info.value)) == (code, reason), info.value.details()


async def test_the_gateway_cannot_get_a_fork_truncation_or_rewrite_signed(
    deployment: Deployment,
) -> None:
    honest = _tree(40)
    rewritten = _tree(40, salt=b"rewritten")
    inconsistent = (grpc.StatusCode.FAILED_PRECONDITION, "CHECKPOINT_INCONSISTENT")
    async with deployment.channel("hsm-proxy", "gateway") as channel:
        stub = hsm_pb2_grpc.HsmServiceStub(channel)
        state = await stub.GetLogState(hsm_pb2.GetLogStateRequest())
        log_key = serialization.load_der_public_key(state.public_key_spki)
        assert isinstance(log_key, ec.EllipticCurvePublicKey)
        verifier = auditlog.NoteVerifier(state.origin, log_key)

        async def sign(old: int, size: int, tree: auditlog.MerkleTree) -> bytes:
            proof = tree.consistency_proof(old, size) if 0 < old < size else []
            reply = await stub.SignCheckpoint(_request(old, size, tree, proof))
            return reply.checkpoint

        first = auditlog.verify_checkpoint(await sign(state.tree_size, 10, honest), verifier)
        assert (first.size, first.root_hash) == (10, honest.root(10))
        # Truncation, a fork at the same size, a rewrite of the history, and the honest tree
        # with a proof for the rewritten one: none is signed.
        await _refused(stub.SignCheckpoint(_request(10, 9, honest, [])), *inconsistent)
        await _refused(stub.SignCheckpoint(_request(10, 10, rewritten, [])), *inconsistent)
        await _refused(
            stub.SignCheckpoint(_request(10, 20, rewritten, rewritten.consistency_proof(10, 20))),
            *inconsistent,
        )
        await _refused(
            stub.SignCheckpoint(_request(10, 20, honest, rewritten.consistency_proof(10, 20))),
            *inconsistent,
        )
        # Pretending nothing was signed yet does not start a new log either.
        await _refused(
            stub.SignCheckpoint(_request(0, 20, rewritten, [])),
            grpc.StatusCode.FAILED_PRECONDITION,
            "WITNESS_STATE_STALE",
        )
        state = await stub.GetLogState(hsm_pb2.GetLogStateRequest())
        assert (state.tree_size, state.root_hash) == (10, honest.root(10))
        extended = auditlog.verify_checkpoint(await sign(10, 25, honest), verifier)
        assert (extended.size, extended.root_hash) == (25, honest.root(25))


def _request(
    old: int, size: int, tree: auditlog.MerkleTree, proof: list[bytes]
) -> hsm_pb2.SignCheckpointRequest:
    return hsm_pb2.SignCheckpointRequest(
        old_size=old, tree_size=size, root_hash=tree.root(size), consistency_proof=proof
    )


async def test_the_log_key_signs_nothing_but_checkpoints(deployment: Deployment) -> None:
    reserved = (grpc.StatusCode.PERMISSION_DENIED, "LOG_KEY_RESERVED")
    async with (
        deployment.channel("hsm-proxy", "gateway") as channel,
        deployment.channel("hsm-proxy", "ra") as ra_channel,
    ):
        stub = hsm_pb2_grpc.HsmServiceStub(channel)
        ra = hsm_pb2_grpc.HsmServiceStub(ra_channel)
        listed = await stub.ListKeys(hsm_pb2.ListKeysRequest(purpose=hsm_pb2.KEY_PURPOSE_LOG))
        (log_key,) = listed.keys
        state = await stub.GetLogState(hsm_pb2.GetLogStateRequest())
        assert log_key.public_key_spki == state.public_key_spki
        # A digest of the caller's choosing (here: the digest of a forged checkpoint body),
        # asked for by the gateway or by the RA, which signs with its own keys.
        forged = auditlog.Checkpoint(state.origin, 99, bytes(32)).to_body()
        for caller in (stub, ra):
            await _refused(
                caller.SignDigest(
                    hsm_pb2.SignDigestRequest(
                        key_id=log_key.key_id,
                        mechanism=hsm_pb2.SIGNATURE_MECHANISM_ECDSA_SHA256,
                        digest=hashlib.sha256(forged).digest(),
                    )
                ),
                *reserved,
            )
        # Nor a certificate request (the RA's power, for organisation keys).
        await _refused(
            ra.CreateCertificateRequest(
                hsm_pb2.CreateCertificateRequestRequest(key_id=log_key.key_id, subject=b"0\x00")
            ),
            *reserved,
        )
        # A second log key cannot be made: the RA, which makes keys, is refused; the gateway
        # makes no key at all.
        request = hsm_pb2.GenerateKeyPairRequest(
            label="my-log", purpose=hsm_pb2.KEY_PURPOSE_LOG, algorithm=hsm_pb2.KEY_ALGORITHM_EC_P256
        )
        await _refused(ra.GenerateKeyPair(request), *reserved)
        await _refused(
            stub.GenerateKeyPair(request),
            grpc.StatusCode.PERMISSION_DENIED,
            "CALLER_NOT_AUTHORISED",
        )
        listed = await stub.ListKeys(hsm_pb2.ListKeysRequest(purpose=hsm_pb2.KEY_PURPOSE_LOG))
        assert [k.key_id for k in listed.keys] == [log_key.key_id]


@pytest.mark.parametrize("identity", ["ra", "cosigner", "admin"])
async def test_only_the_gateway_asks_for_checkpoints(deployment: Deployment, identity: str) -> None:
    async with deployment.channel("hsm-proxy", identity) as channel:
        await _refused(
            hsm_pb2_grpc.HsmServiceStub(channel).SignCheckpoint(_request(0, 1, _tree(1), [])),
            grpc.StatusCode.PERMISSION_DENIED,
            "CALLER_NOT_AUTHORISED",
        )


async def test_malformed_checkpoint_requests(deployment: Deployment) -> None:
    async with deployment.channel("hsm-proxy", "gateway") as channel:
        stub = hsm_pb2_grpc.HsmServiceStub(channel)
        state = await stub.GetLogState(hsm_pb2.GetLogStateRequest())
        for request in (
            hsm_pb2.SignCheckpointRequest(old_size=state.tree_size, tree_size=1, root_hash=b"x"),
            hsm_pb2.SignCheckpointRequest(
                old_size=state.tree_size, tree_size=2**63, root_hash=bytes(32)
            ),
            hsm_pb2.SignCheckpointRequest(
                old_size=state.tree_size,
                tree_size=state.tree_size + 1,
                root_hash=bytes(32),
                consistency_proof=[bytes(32)] * 129,
            ),
        ):
            await _refused(
                stub.SignCheckpoint(request),
                grpc.StatusCode.INVALID_ARGUMENT,
                "CHECKPOINT_MALFORMED",
            )
        assert await stub.GetLogState(hsm_pb2.GetLogStateRequest()) == state


async def test_what_was_signed_survives_a_kill(deployment: Deployment) -> None:
    async with deployment.channel("hsm-proxy", "gateway") as channel:
        before = await hsm_pb2_grpc.HsmServiceStub(channel).GetLogState(
            hsm_pb2.GetLogStateRequest()
        )
    assert before.tree_size > 0  # the first test signed checkpoints
    deployment.stop("hsm-proxy", signal.SIGKILL)
    deployment.start("hsm-proxy")
    async with deployment.channel("hsm-proxy", "gateway") as channel:
        stub = hsm_pb2_grpc.HsmServiceStub(channel)
        after = await stub.GetLogState(hsm_pb2.GetLogStateRequest())
        assert after == before
        await _refused(
            stub.SignCheckpoint(
                hsm_pb2.SignCheckpointRequest(
                    old_size=after.tree_size, tree_size=1, root_hash=_tree(1).root(1)
                )
            ),
            grpc.StatusCode.FAILED_PRECONDITION,
            "CHECKPOINT_INCONSISTENT",
        )


async def test_oversized_requests_get_a_reason(deployment: Deployment) -> None:
    """Over the proxy's 64 KiB limit: INVALID_ARGUMENT MESSAGE_TOO_LARGE, nothing changed; far
    beyond it (twice the limit) grpc refuses the message itself."""
    async with deployment.channel("hsm-proxy", "gateway") as channel:
        stub = hsm_pb2_grpc.HsmServiceStub(channel)
        state = await stub.GetLogState(hsm_pb2.GetLogStateRequest())
        over = hsm_pb2.SignCheckpointRequest(
            old_size=state.tree_size, tree_size=1, root_hash=bytes(70 * 1024)
        )
        await _refused(
            stub.SignCheckpoint(over), grpc.StatusCode.INVALID_ARGUMENT, "MESSAGE_TOO_LARGE"
        )
        far = hsm_pb2.SignCheckpointRequest(
            old_size=state.tree_size, tree_size=1, root_hash=bytes(130 * 1024)
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.SignCheckpoint(far)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert await stub.GetLogState(hsm_pb2.GetLogStateRequest()) == state
