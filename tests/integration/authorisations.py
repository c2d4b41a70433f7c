"""Builds what a gateway would hand the HSM proxy for an organisation-key operation, from inside
a test: a CA key and the authoriser key in the token, a user certificate for a software Ed25519
key, a service record, the user's signature and the gateway's authorisation. Tests then break
one piece at a time."""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import secrets
import time

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from mobilesign import pkix, records
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


@dataclasses.dataclass
class Authority:
    """A CA, an authoriser and one certified user, all anchored in the test's token."""

    stub: hsm_pb2_grpc.HsmServiceAsyncStub
    ca: HsmKeySigner
    authoriser: HsmKeySigner
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
    ) -> Authority:
        """Make (or reuse) the CA and authoriser keys in the token, certify a new user, and have
        ``cosigner`` (a stub with the cosigner's identity) attest the user's key."""
        ca_key = await _key(stub, ca_label, hsm_pb2.KEY_PURPOSE_CA)
        authoriser = await _key(stub, "gateway-authorisation", hsm_pb2.KEY_PURPOSE_SERVICE)
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
            subject=pkix.name({"common_name": "tester"}),
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
                plaintext=records.key_attestation(raw.hex()),
                associated_data=records.KEY_ATTESTATION_AAD,
            )
        )
        return cls(
            stub,
            ca,
            HsmKeySigner(stub, authoriser.key_id),
            user_key,
            certificate,
            attestation.sealed,
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
        self, record: records.ServiceRecord, *, user_key: ed25519.Ed25519PrivateKey | None = None
    ) -> hsm_pb2.OrganisationKeyAuthorisation:
        """The record co-signed by the user (or ``user_key``) and authorised by the gateway."""
        encoded = record.encode()
        signature = (user_key or self.user_key).sign(encoded)
        return hsm_pb2.OrganisationKeyAuthorisation(
            record=encoded,
            user_signature=signature,
            user_certificate=self.user_certificate,
            gateway_signature=await self.authoriser.sign_digest(
                records.authorisation_digest(encoded, signature)
            ),
            cosigner_attestation=self.attestation,
        )
