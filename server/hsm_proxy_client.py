"""The gateway's client of the HSM proxy: service, CA and organisation keys, and signatures."""

from __future__ import annotations

import asyncio
import hashlib

import grpc

from mobilesign import pkix
from mobilesign.errors import Kind
from mobilesign.rpc.status import kind_of, reason_of
from mobilesign.v1 import hsm_pb2, hsm_pb2_grpc
from server.errors import GatewayError

_MECHANISMS = {
    pkix.SignatureAlgorithm.ECDSA_SHA256: hsm_pb2.SIGNATURE_MECHANISM_ECDSA_SHA256,
    pkix.SignatureAlgorithm.RSA_PKCS1_SHA256: hsm_pb2.SIGNATURE_MECHANISM_RSA_PKCS1V15_SHA256,
}


def _failed(error: grpc.aio.AioRpcError) -> GatewayError:
    if error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return GatewayError(Kind.UNAVAILABLE, "HSM_UNAVAILABLE", "the HSM proxy cannot be reached")
    # The proxy's own refusal (e.g. LABEL_IN_USE) is passed on as it came.
    return GatewayError(
        kind_of(error.code()), reason_of(error) or "HSM_ERROR", error.details() or ""
    )


class HsmClient:
    """Calls the HSM proxy over a mutual-TLS channel as the ``gateway`` identity."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = hsm_pb2_grpc.HsmServiceStub(channel)
        self._lock = asyncio.Lock()

    async def ensure_key(
        self,
        label: str,
        purpose: hsm_pb2.KeyPurpose.ValueType,
        algorithm: hsm_pb2.KeyAlgorithm.ValueType = hsm_pb2.KEY_ALGORITHM_EC_P256,
    ) -> hsm_pb2.KeyInfo:
        """The key of ``purpose`` labelled ``label``, generated in the token on first use."""
        async with self._lock:
            try:
                listed = await self._stub.ListKeys(
                    hsm_pb2.ListKeysRequest(purpose=purpose), timeout=10
                )
                for key in listed.keys:
                    if key.label == label:
                        return key
                reply = await self._stub.GenerateKeyPair(
                    hsm_pb2.GenerateKeyPairRequest(
                        label=label, purpose=purpose, algorithm=algorithm
                    ),
                    timeout=60,
                )
            except grpc.aio.AioRpcError as exc:
                raise _failed(exc) from None
            return reply.key

    async def sign_digest(
        self,
        key_id: str,
        mechanism: hsm_pb2.SignatureMechanism.ValueType,
        digest: bytes,
        authorisation: hsm_pb2.OrganisationKeyAuthorisation | None = None,
    ) -> bytes:
        """A signature over a SHA-256 digest (DER for ECDSA); organisation keys need the
        co-signed record's ``authorisation``."""
        try:
            reply = await self._stub.SignDigest(
                hsm_pb2.SignDigestRequest(
                    key_id=key_id, mechanism=mechanism, digest=digest, authorisation=authorisation
                ),
                timeout=10,
            )
        except grpc.aio.AioRpcError as exc:
            raise _failed(exc) from None
        return reply.signature

    async def decrypt(
        self, key_id: str, ciphertext: bytes, authorisation: hsm_pb2.OrganisationKeyAuthorisation
    ) -> bytes:
        """RSA-OAEP (SHA-256) decryption with an organisation key."""
        try:
            reply = await self._stub.Decrypt(
                hsm_pb2.DecryptRequest(
                    key_id=key_id,
                    mechanism=hsm_pb2.DECRYPT_MECHANISM_RSA_OAEP_SHA256,
                    ciphertext=ciphertext,
                    authorisation=authorisation,
                ),
                timeout=10,
            )
        except grpc.aio.AioRpcError as exc:
            raise _failed(exc) from None
        return reply.plaintext

    async def log_state(self) -> hsm_pb2.GetLogStateResponse:
        """The log key, the log's origin and the last checkpoint the proxy signed."""
        try:
            return await self._stub.GetLogState(hsm_pb2.GetLogStateRequest(), timeout=10)
        except grpc.aio.AioRpcError as exc:
            raise _failed(exc) from None

    async def sign_checkpoint(
        self, old_size: int, tree_size: int, root_hash: bytes, proof: list[bytes]
    ) -> bytes:
        """The proxy's signed note for a tree that extends the one of ``old_size`` entries."""
        try:
            reply = await self._stub.SignCheckpoint(
                hsm_pb2.SignCheckpointRequest(
                    old_size=old_size,
                    tree_size=tree_size,
                    root_hash=root_hash,
                    consistency_proof=proof,
                ),
                timeout=10,
            )
        except grpc.aio.AioRpcError as exc:
            raise _failed(exc) from None
        return reply.checkpoint

    async def certificate_request(self, key_id: str, subject: bytes) -> bytes:
        """A PKCS#10 request built and signed by the HSM proxy with the key itself."""
        try:
            reply = await self._stub.CreateCertificateRequest(
                hsm_pb2.CreateCertificateRequestRequest(key_id=key_id, subject=subject),
                timeout=30,
            )
        except grpc.aio.AioRpcError as exc:
            raise _failed(exc) from None
        return reply.csr


class HsmSigner:
    """A :class:`pkix.Signer` whose key is in the HSM."""

    def __init__(self, hsm: HsmClient, key: hsm_pb2.KeyInfo) -> None:
        self._hsm = hsm
        self._key_id = key.key_id
        if key.algorithm == hsm_pb2.KEY_ALGORITHM_EC_P256:
            self._algorithm = pkix.SignatureAlgorithm.ECDSA_SHA256
        else:
            self._algorithm = pkix.SignatureAlgorithm.RSA_PKCS1_SHA256

    @property
    def algorithm(self) -> pkix.SignatureAlgorithm:
        """ECDSA with SHA-256 for EC keys, RSA PKCS#1 v1.5 with SHA-256 for RSA keys."""
        return self._algorithm

    async def sign(self, data: bytes) -> bytes:
        """Hash ``data`` here and have the token sign the digest."""
        return await self._hsm.sign_digest(
            self._key_id, _MECHANISMS[self._algorithm], hashlib.sha256(data).digest()
        )
