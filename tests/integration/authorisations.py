"""Builds what a gateway would hand the HSM proxy for an organisation-key operation, from inside
a test: as the RA (the "ra" identity), a CA key and a grant key in the token, a user certificate
for a software Ed25519 key and a signed grant; as the gateway (the "gateway" identity), a service
record, the user's signature, and the record's entry in a log the proxy witnessed (the test keeps
the log's leaves, as the gateway does, and asks the proxy to sign each new checkpoint). Tests then
break one piece at a time."""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import secrets
import time
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, utils

from mobilesign import auditlog, grants, pkix, records
from mobilesign.ca.authority import key_identifier
from mobilesign.v1 import hsm_pb2, hsm_pb2_grpc


class DigestSigner(Protocol):
    """Signs a SHA-256 digest with ECDSA P-256 (DER), as SignDigest does."""

    async def sign_digest(self, digest: bytes) -> bytes:
        """The signature over ``digest``."""
        ...


class SoftwareSigner:
    """A P-256 key in this process: a grant signer the proxy must not trust."""

    def __init__(self) -> None:
        self.private = ec.generate_private_key(ec.SECP256R1())

    async def sign_digest(self, digest: bytes) -> bytes:
        """ECDSA over the precomputed digest."""
        return self.private.sign(digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))


class HsmKeySigner:
    """A pkix signer over SignDigest with one of the RA's keys (CA, ticket or grant): the stub
    must have the RA's identity."""

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
    """The RA (a CA key and a grant key in the test's token) with one certified user, and the
    gateway that keeps the witnessed log and presents authorisations."""

    ra: hsm_pb2_grpc.HsmServiceAsyncStub
    gateway: hsm_pb2_grpc.HsmServiceAsyncStub
    ca: HsmKeySigner
    grant_key: HsmKeySigner
    log: WitnessedLog
    user_key: ed25519.Ed25519PrivateKey
    user_certificate: bytes
    attestation: bytes
    user_id: str = "tester"

    @classmethod
    async def create(
        cls,
        ra: hsm_pb2_grpc.HsmServiceAsyncStub,
        gateway: hsm_pb2_grpc.HsmServiceAsyncStub,
        cosigner: hsm_pb2_grpc.HsmServiceAsyncStub,
        ca_label: str = "test-ca",
        user_id: str = "tester",
        attested_user: str | None = None,
    ) -> Authority:
        """Make (or reuse) the CA and grant keys in the token (``ra``: a stub with the RA's
        identity), certify a new user, and have ``cosigner`` (a stub with the cosigner's
        identity) attest the user's key (for ``attested_user`` when given, as if the cosigner
        had enrolled it for someone else). ``gateway`` has the gateway's identity: it logs
        records, asks for checkpoints and presents authorisations."""
        ca_key = await _key(ra, ca_label, hsm_pb2.KEY_PURPOSE_CA)
        grant_key = await _key(ra, "test-grants", hsm_pb2.KEY_PURPOSE_GRANT)
        state = await gateway.GetLogState(hsm_pb2.GetLogStateRequest())
        log = _LOGS.setdefault(state.public_key_spki, WitnessedLog())
        ca = HsmKeySigner(ra, ca_key.key_id)
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
            ra,
            gateway,
            ca,
            HsmKeySigner(ra, grant_key.key_id),
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

    @property
    def certificate_serial(self) -> str:
        """The user certificate's serial, as records and revocations write it."""
        return format(x509.load_der_x509_certificate(self.user_certificate).serial_number, "x")

    def statement(self, record: records.ServiceRecord, **changes: object) -> grants.Statement:
        """A grant that allows ``record`` now (an hour's window, ample quotas); ``changes``
        override fields."""
        now = int(time.time())
        operation = next(n for n, ops in grants.OPERATIONS.items() if record.operation in ops)
        statement = grants.Statement(
            grant_id=record.grant_id,
            user_id=record.user_id,
            key_id=record.organisation_key_id,
            operations=(operation,),
            not_before=now - 60,
            not_after=now + 3600,
            quota_total=1000,
            quota_daily=1000,
            purpose=record.purpose,
            issued_at=now - 60,
        )
        return dataclasses.replace(statement, **changes)  # type: ignore[arg-type]

    async def sign_grant(
        self, statement: grants.Statement, signer: DigestSigner | None = None
    ) -> bytes:
        """The signed grant, as the RA issues it: signed in the token with the grant key (or by
        ``signer``)."""
        encoded = grants.encode(statement)
        signature = await (signer or self.grant_key).sign_digest(grants.signing_digest(encoded))
        return grants.assemble(encoded, signature)

    async def authorise(
        self,
        record: records.ServiceRecord,
        *,
        user_key: ed25519.Ed25519PrivateKey | None = None,
        witnessed: bool = True,
        signed_grant: bytes | None = None,
    ) -> hsm_pb2.OrganisationKeyAuthorisation:
        """The record co-signed by the user (or ``user_key``), logged, and (unless not
        ``witnessed``) under a checkpoint the proxy signed, with ``signed_grant`` (by default a
        grant the RA signed that allows the record)."""
        if signed_grant is None:
            signed_grant = await self.sign_grant(self.statement(record))
        encoded = record.encode()
        signature = (user_key or self.user_key).sign(encoded)
        index = self.log.append(records.RecordEntry(encoded, signature).encode())
        size = await self.log.witness(self.gateway) if witnessed else len(self.log.leaves)
        return hsm_pb2.OrganisationKeyAuthorisation(
            record=encoded,
            user_signature=signature,
            user_certificate=self.user_certificate,
            cosigner_attestation=self.attestation,
            entry_index=index,
            tree_size=size,
            inclusion_proof=self.log.tree.inclusion_proof(index, size),
            signed_grant=signed_grant,
        )
