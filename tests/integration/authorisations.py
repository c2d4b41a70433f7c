"""Builds what a gateway would hand the HSM proxy for an organisation-key operation, from inside
a test: a CA key in the token, a user certificate for a software Ed25519 key, a service record,
the user's signature, and the record's entry in a log the proxy witnessed (the test keeps the
log's leaves, as the gateway does, and asks the proxy to sign each new checkpoint). Tests then
break one piece at a time."""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import secrets
import time

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from mobilesign import auditlog, pkix, records
from mobilesign.ca.authority import key_identifier
from mobilesign.v1 import hsm_pb2, hsm_pb2_grpc


class HsmKeySigner:
    """A pkix signer over SignDigest with a CA or service key (raw signing is allowed there)."""

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


async def _key(
    stub: hsm_pb2_grpc.HsmServiceAsyncStub, label: str, purpose: hsm_pb2.KeyPurpose.ValueType
) -> hsm_pb2.KeyInfo:
    listed = await stub.ListKeys(hsm_pb2.ListKeysRequest(purpose=purpose))
    for key in listed.keys:
        if key.label == label:
            return key
    reply = await stub.GenerateKeyPair(
        hsm_pb2.GenerateKeyPairRequest(
            label=label, purpose=purpose, algorithm=hsm_pb2.KEY_ALGORITHM_EC_P256
        )
    )
    return reply.key


class WitnessedLog:
    """The test's audit log: its leaves here, its checkpoints signed by the HSM proxy."""

    def __init__(self) -> None:
        self.leaves: list[bytes] = []

    def append(self, entry: bytes) -> int:
        """Add an entry (unwitnessed); return its index."""
        self.leaves.append(auditlog.leaf_hash(entry))
        return len(self.leaves) - 1

    @property
    def tree(self) -> auditlog.MerkleTree:
        """The tree over every leaf appended."""
        return auditlog.MerkleTree.from_leaves(self.leaves)

    async def witness(self, stub: hsm_pb2_grpc.HsmServiceAsyncStub) -> int:
        """Have the proxy sign a checkpoint of the whole log (gateway identity); its size."""
        state = await stub.GetLogState(hsm_pb2.GetLogStateRequest())
        old, size, tree = state.tree_size, len(self.leaves), self.tree
        await stub.SignCheckpoint(
            hsm_pb2.SignCheckpointRequest(
                old_size=old,
                tree_size=size,
                root_hash=tree.root(size),
                consistency_proof=tree.consistency_proof(old, size) if 0 < old < size else [],
            )
        )
        return size


#: One log per HSM proxy, keyed by its log key: every test of a deployment appends to it.
_LOGS: dict[bytes, WitnessedLog] = {}


@dataclasses.dataclass
class Authority:
    """A CA and one certified user anchored in the test's token, and the witnessed log."""

    stub: hsm_pb2_grpc.HsmServiceAsyncStub
    ca: HsmKeySigner
    log: WitnessedLog
    user_key: ed25519.Ed25519PrivateKey
    user_certificate: bytes
    attestation: bytes
    user_id: str = "tester"

    @classmethod
    async def create(
        cls,
        stub: hsm_pb2_grpc.HsmServiceAsyncStub,
        cosigner: hsm_pb2_grpc.HsmServiceAsyncStub,
        ca_label: str = "test-ca",
        user_id: str = "tester",
        attested_user: str | None = None,
    ) -> Authority:
        """Make (or reuse) the CA key in the token, certify a new user, and have ``cosigner``
        (a stub with the cosigner's identity) attest the user's key (for ``attested_user``
        when given, as if the cosigner had enrolled it for someone else). ``stub`` has the gateway's
        identity: it logs records and asks for checkpoints."""
        ca_key = await _key(stub, ca_label, hsm_pb2.KEY_PURPOSE_CA)
        state = await stub.GetLogState(hsm_pb2.GetLogStateRequest())
        log = _LOGS.setdefault(state.public_key_spki, WitnessedLog())
        ca = HsmKeySigner(stub, ca_key.key_id)
        user_key = ed25519.Ed25519PrivateKey.generate()
        now = datetime.datetime.now(datetime.UTC)
        issuer = pkix.name({"common_name": "test CA"})
        spki = user_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        certificate = await pkix.build_certificate(
            signer=ca,
            serial=pkix.random_serial(),
            issuer=issuer,
            subject=pkix.name({"common_name": user_id}),
            subject_public_key_info=spki,
            not_before=now - datetime.timedelta(minutes=5),
            not_after=now + datetime.timedelta(days=1),
            extensions=[
                pkix.basic_constraints(ca=False),
                pkix.key_usage("digital_signature", "non_repudiation"),
                pkix.authority_key_identifier(key_identifier(ca_key.public_key_spki)),
            ],
        )
        raw = user_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        attestation = await cosigner.Seal(
            hsm_pb2.SealRequest(
                plaintext=records.KeyAttestation(
                    raw.hex(), attested_user or user_id, secrets.token_hex(16)
                ).encode(),
                associated_data=records.KEY_ATTESTATION_AAD,
            )
        )
        return cls(
            stub,
            ca,
            log,
            user_key,
            certificate,
            attestation.sealed,
            user_id,
        )

    def record(
        self, key_id: str, operation: records.Operation, data: bytes, **changes: object
    ) -> records.ServiceRecord:
        """A fresh record for ``data`` with ``key_id``; ``changes`` override fields."""
        certificate = x509.load_der_x509_certificate(self.user_certificate)
        raw = self.user_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        record = records.ServiceRecord(
            record_id=secrets.token_hex(16),
            user_id=self.user_id,
            user_key_id=raw.hex(),
            certificate_serial=format(certificate.serial_number, "x"),
            organisation_key_id=key_id,
            organisation_certificate_sha256=bytes(32),
            operation=operation,
            input_sha256=hashlib.sha256(data).digest(),
            purpose="test",
            grant_id=secrets.token_hex(16),
            time_ms=int(time.time() * 1000),
            gateway_nonce=secrets.token_bytes(16),
        )
        return dataclasses.replace(record, **changes)  # type: ignore[arg-type]

    async def authorise(
        self,
        record: records.ServiceRecord,
        *,
        user_key: ed25519.Ed25519PrivateKey | None = None,
        witnessed: bool = True,
    ) -> hsm_pb2.OrganisationKeyAuthorisation:
        """The record co-signed by the user (or ``user_key``), logged, and (unless not
        ``witnessed``) under a checkpoint the proxy signed."""
        encoded = record.encode()
        signature = (user_key or self.user_key).sign(encoded)
        index = self.log.append(records.RecordEntry(encoded, signature).encode())
        size = await self.log.witness(self.stub) if witnessed else len(self.log.leaves)
        return hsm_pb2.OrganisationKeyAuthorisation(
            record=encoded,
            user_signature=signature,
            user_certificate=self.user_certificate,
            cosigner_attestation=self.attestation,
            entry_index=index,
            tree_size=size,
            inclusion_proof=self.log.tree.inclusion_proof(index, size),
        )
