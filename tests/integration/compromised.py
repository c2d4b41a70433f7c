"""What an attacker holding the credentials of one service has to work with, for the tests of
``test_one_service_alone.py``: that service's mutual-TLS identity (its certificate from the
development PKI) towards the other services, what it can read in its state directory, keys of
its own in this process, and, for the gateway, the phones' calls as a gateway sees them.

Nothing here holds a second service's powers: a helper that calls a service (``TokenKey``)
takes the stub, with whichever identity the test chose, and the test says when it lends an
attacker another service's help.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, utils
from cryptography.x509.oid import NameOID

from mobilesign import auditlog, grants, pkix, records, tickets
from mobilesign.rpc.status import reason_of
from mobilesign.testing import Deployment
from mobilesign.v1 import (
    cosigner_pb2_grpc,
    gateway_pb2,
    hsm_pb2,
    hsm_pb2_grpc,
    ra_pb2_grpc,
)

GATEWAY_SERVICE = "mobilesign.v1.GatewayService"


async def refused(call: Awaitable[Any], code: grpc.StatusCode, reason: str) -> None:
    """``call`` fails with ``code`` and the stable ``reason``."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert (info.value.code(), reason_of(info.value)) == (code, reason), info.value.details()


# One service's credentials ---------------------------------------------------------------------


@dataclass
class Attacker:
    """Stubs to the other services' internal listeners, all with one service's identity, and
    that service's state directory."""

    identity: str
    state: Path
    hsm: hsm_pb2_grpc.HsmServiceAsyncStub
    admin: ra_pb2_grpc.AdminServiceAsyncStub
    registry: ra_pb2_grpc.RegistrationServiceAsyncStub
    cosigner: cosigner_pb2_grpc.CosignerServiceAsyncStub


@contextlib.asynccontextmanager
async def acting_as(deployment: Deployment, identity: str) -> AsyncIterator[Attacker]:
    """An :class:`Attacker` with ``identity``'s client certificate and state directory."""
    async with (
        deployment.channel("hsm-proxy", identity) as hsm,
        deployment.channel("ra", identity) as ra,
        deployment.channel("cosigner", identity) as cosigner,
    ):
        yield Attacker(
            identity,
            deployment.state_dir / identity,
            hsm_pb2_grpc.HsmServiceStub(hsm),
            ra_pb2_grpc.AdminServiceStub(ra),
            ra_pb2_grpc.RegistrationServiceStub(ra),
            cosigner_pb2_grpc.CosignerServiceStub(cosigner),
        )


# Keys of the attacker's own --------------------------------------------------------------------


class SoftwareKey:
    """An EC P-256 key in the attacker's process: what it signs is trusted by nobody."""

    def __init__(self) -> None:
        self.private = ec.generate_private_key(ec.SECP256R1())

    @property
    def algorithm(self) -> pkix.SignatureAlgorithm:
        return pkix.SignatureAlgorithm.ECDSA_SHA256

    async def sign(self, data: bytes) -> bytes:
        return await self.sign_digest(hashlib.sha256(data).digest())

    async def sign_digest(self, digest: bytes) -> bytes:
        """ECDSA over a precomputed SHA-256 digest, as SignDigest does."""
        return self.private.sign(digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))


class TokenKey:
    """One of the RA's keys in the token, used through SignDigest: ``stub`` must carry the RA's
    identity for the proxy to agree."""

    def __init__(self, stub: hsm_pb2_grpc.HsmServiceAsyncStub, key_id: str) -> None:
        self._stub = stub
        self._key_id = key_id

    @property
    def algorithm(self) -> pkix.SignatureAlgorithm:
        return pkix.SignatureAlgorithm.ECDSA_SHA256

    async def sign(self, data: bytes) -> bytes:
        return await self.sign_digest(hashlib.sha256(data).digest())

    async def sign_digest(self, digest: bytes) -> bytes:
        reply = await self._stub.SignDigest(
            hsm_pb2.SignDigestRequest(
                key_id=self._key_id,
                mechanism=hsm_pb2.SIGNATURE_MECHANISM_ECDSA_SHA256,
                digest=digest,
            )
        )
        return reply.signature


Signer = SoftwareKey | TokenKey


def raw_key_id(key: ed25519.Ed25519PrivateKey) -> str:
    """The user key id (hex of the raw Ed25519 public key) of ``key``."""
    return (
        key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    ).hex()


async def ticket(signer: Signer, user_id: str, ttl: int = 600) -> bytes:
    """An enrolment ticket for ``user_id`` signed by ``signer``."""
    now = int(time.time())
    claims = tickets.encode(
        tickets.Claims(secrets.token_hex(16), user_id, now, now + ttl, additional_key=True)
    )
    return tickets.assemble(claims, await signer.sign_digest(tickets.signing_digest(claims)))


async def signed_grant(signer: Signer, statement: grants.Statement) -> bytes:
    """``statement`` signed by ``signer``, as the RA hands a grant out."""
    encoded = grants.encode(statement)
    return grants.assemble(encoded, await signer.sign_digest(grants.signing_digest(encoded)))


async def user_certificate(signer: Signer, user_id: str, key: ed25519.Ed25519PrivateKey) -> bytes:
    """A personal certificate (CN=``user_id``) for ``key``, issued by ``signer``."""
    now = datetime.datetime.now(datetime.UTC)
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return await pkix.build_certificate(
        signer=signer,
        serial=pkix.random_serial(),
        issuer=pkix.name({"common_name": "mobilesign Root CA", "organization_name": "mobilesign"}),
        subject=pkix.name({"common_name": user_id}),
        subject_public_key_info=spki,
        not_before=now - datetime.timedelta(minutes=5),
        not_after=now + datetime.timedelta(days=1),
        extensions=[
            pkix.basic_constraints(ca=False),
            pkix.key_usage("digital_signature", "non_repudiation"),
        ],
    )


def certificate_request(user_id: str, key: ed25519.Ed25519PrivateKey) -> bytes:
    """A PKCS#10 request (DER) for ``key``, CN=``user_id``, signed by the key itself."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, user_id)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, None)
    return csr.public_bytes(serialization.Encoding.DER)


def serial_of(certificate: bytes) -> str:
    """A certificate's serial as records write it."""
    return format(x509.load_der_x509_certificate(certificate).serial_number, "x")


# The gateway's state directory -----------------------------------------------------------------


@dataclass(frozen=True)
class LedgerRecord:
    """A service record as the gateway's ledger keeps it."""

    record: bytes
    state: str
    grant_id: str
    entry_index: int | None
    user_signature: bytes | None


@dataclass(frozen=True)
class GatewayFiles:
    """What the gateway's ledger (``<state>/gateway/ledger.db``) holds: the audit log's entries,
    the service records, and the RA's signed grants."""

    entries: list[bytes]
    records: dict[str, LedgerRecord]
    signed_grants: dict[str, bytes]

    @classmethod
    def read(cls, gateway_state: Path) -> GatewayFiles:
        """Read the ledger, as anyone with the gateway's files can (the gateway is running)."""
        db = sqlite3.connect(gateway_state / "ledger.db")
        try:
            entries = [
                bytes(row[0])
                for row in db.execute("SELECT entry FROM log_entries ORDER BY entry_index")
            ]
            rows = db.execute(
                "SELECT record_id, record, state, grant_id, entry_index, user_signature"
                " FROM records"
            )
            found = {
                row[0]: LedgerRecord(
                    bytes(row[1]), row[2], row[3], row[4], bytes(row[5]) if row[5] else None
                )
                for row in rows
            }
            signed = {
                row[0]: bytes(row[1])
                for row in db.execute("SELECT grant_id, signed_grant FROM grants")
            }
        finally:
            db.close()
        return cls(entries, found, signed)

    @property
    def leaves(self) -> list[bytes]:
        """The log's leaf hashes."""
        return [auditlog.leaf_hash(entry) for entry in self.entries]

    @property
    def tree(self) -> auditlog.MerkleTree:
        """The log's Merkle tree."""
        return auditlog.MerkleTree.from_leaves(self.leaves)


# The phones' calls, as a gateway sees them -----------------------------------------------------


@dataclass
class InterceptingGateway:
    """The public edge of a compromised gateway: a server in this process that forwards the
    phone's calls to the real gateway process, except that it keeps each co-signed record the
    phone sends for execution (``ExecuteOperation``) for itself, instead of logging it, and
    answers UNAVAILABLE."""

    upstream: grpc.aio.Channel
    kept: list[gateway_pb2.ExecuteOperationRequest] = field(default_factory=list)

    async def _forward(self, method: str, request: bytes, context: Any) -> bytes:
        metadata = [(k, v) for k, v in context.invocation_metadata() or () if k == "authorization"]
        call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = self.upstream.unary_unary(
            f"/{GATEWAY_SERVICE}/{method}"
        )
        try:
            reply: bytes = await call(request, metadata=metadata, timeout=30)
        except grpc.aio.AioRpcError as exc:
            await context.abort(exc.code(), exc.details() or "", exc.trailing_metadata())
            raise  # abort raises
        return reply

    def _handler(self, method: str) -> grpc.RpcMethodHandler[bytes, bytes]:
        async def forward(request: bytes, context: Any) -> bytes:
            return await self._forward(method, request, context)

        async def keep(request: bytes, context: Any) -> bytes:
            self.kept.append(gateway_pb2.ExecuteOperationRequest.FromString(request))
            await context.abort(grpc.StatusCode.UNAVAILABLE, "try again later")
            raise AssertionError("abort raises")

        return grpc.unary_unary_rpc_method_handler(
            keep if method == "ExecuteOperation" else forward
        )

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[grpc.aio.Channel]:
        """Serve on a loopback port; yield a phone's channel to it."""
        methods = ("StartSession", "FinishSession", "ListMyGrants", "GetOrganisationKey")
        handlers = {m: self._handler(m) for m in (*methods, "PrepareOperation", "ExecuteOperation")}
        server = grpc.aio.server()
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(GATEWAY_SERVICE, handlers),)
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                yield channel
        finally:
            await server.stop(None)


def authorisation(
    record: bytes,
    user_signature: bytes,
    *,
    user_certificate: bytes,
    cosigner_attestation: bytes,
    signed_grant: bytes,
    tree: auditlog.MerkleTree,
    entry_index: int,
    tree_size: int,
) -> hsm_pb2.OrganisationKeyAuthorisation:
    """An authorisation whose inclusion proof is taken from ``tree`` (the attacker's idea of
    the log) for ``entry_index`` in the tree of ``tree_size`` entries."""
    return hsm_pb2.OrganisationKeyAuthorisation(
        record=record,
        user_signature=user_signature,
        user_certificate=user_certificate,
        cosigner_attestation=cosigner_attestation,
        entry_index=entry_index,
        tree_size=tree_size,
        inclusion_proof=tree.inclusion_proof(entry_index, tree_size),
        signed_grant=signed_grant,
    )


def entry_of(record: bytes, user_signature: bytes) -> bytes:
    """The log entry of a co-signed record."""
    return records.RecordEntry(record, user_signature).encode()
