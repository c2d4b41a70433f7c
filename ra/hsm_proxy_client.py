"""The RA's client of the HSM proxy: its CA, ticket and grant keys, organisation keys and their
certificate requests, revocations and grant counts."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence

import grpc

from mobilesign import pkix
from mobilesign.rpc.status import relayed
from mobilesign.v1 import hsm_pb2, hsm_pb2_grpc
from ra.errors import RaError

_MECHANISMS = {
    pkix.SignatureAlgorithm.ECDSA_SHA256: hsm_pb2.SIGNATURE_MECHANISM_ECDSA_SHA256,
    pkix.SignatureAlgorithm.RSA_PKCS1_SHA256: hsm_pb2.SIGNATURE_MECHANISM_RSA_PKCS1V15_SHA256,
}
#: GetGrantUsage takes at most this many ids per call.
_USAGE_BATCH = 1000


def _failed(error: grpc.aio.AioRpcError) -> RaError:
    return relayed(error, RaError, "HSM proxy", "HSM_UNAVAILABLE")


class HsmClient:
    """Calls the HSM proxy over a mutual-TLS channel as the ``ra`` identity."""

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

    async def list_keys(self, purpose: hsm_pb2.KeyPurpose.ValueType) -> list[hsm_pb2.KeyInfo]:
        """Every key of ``purpose`` in the token."""
        try:
            listed = await self._stub.ListKeys(hsm_pb2.ListKeysRequest(purpose=purpose), timeout=10)
        except grpc.aio.AioRpcError as exc:
            raise _failed(exc) from None
        return list(listed.keys)

    async def find_key(
        self, label: str, purpose: hsm_pb2.KeyPurpose.ValueType
    ) -> hsm_pb2.KeyInfo | None:
        """The key of ``purpose`` labelled ``label`` in the token, or None."""
        return next((k for k in await self.list_keys(purpose) if k.label == label), None)

    async def generate_key(
        self,
        label: str,
        purpose: hsm_pb2.KeyPurpose.ValueType,
        algorithm: hsm_pb2.KeyAlgorithm.ValueType,
    ) -> hsm_pb2.KeyInfo:
        """A new key pair in the token."""
        try:
            reply = await self._stub.GenerateKeyPair(
                hsm_pb2.GenerateKeyPairRequest(label=label, purpose=purpose, algorithm=algorithm),
                timeout=60,
            )
        except grpc.aio.AioRpcError as exc:
            raise _failed(exc) from None
        return reply.key

    async def sign_digest(
        self, key_id: str, mechanism: hsm_pb2.SignatureMechanism.ValueType, digest: bytes
    ) -> bytes:
        """A signature over a SHA-256 digest (DER for ECDSA) with one of the RA's keys."""
        try:
            reply = await self._stub.SignDigest(
                hsm_pb2.SignDigestRequest(key_id=key_id, mechanism=mechanism, digest=digest),
                timeout=10,
            )
        except grpc.aio.AioRpcError as exc:
            raise _failed(exc) from None
        return reply.signature

    async def certificate_request(self, key_id: str, subject: bytes) -> bytes:
        """A PKCS#10 request built and signed by the HSM proxy with the organisation key
        itself (once per key; asking again with the same subject returns the same request)."""
        try:
            reply = await self._stub.CreateCertificateRequest(
                hsm_pb2.CreateCertificateRequestRequest(key_id=key_id, subject=subject),
                timeout=30,
            )
        except grpc.aio.AioRpcError as exc:
            raise _failed(exc) from None
        return reply.csr

    async def record_revocation(self, request: hsm_pb2.RecordRevocationRequest) -> None:
        """Have the HSM proxy store a revocation durably (it refuses dependent uses from then)."""
        try:
            await self._stub.RecordRevocation(request, timeout=10)
        except grpc.aio.AioRpcError as exc:
            raise _failed(exc) from None

    async def grant_usage(self, grant_ids: Sequence[str]) -> list[hsm_pb2.GrantUsage]:
        """The proxy's count of each grant's uses, in the order asked."""
        found: list[hsm_pb2.GrantUsage] = []
        for start in range(0, len(grant_ids), _USAGE_BATCH):
            batch = grant_ids[start : start + _USAGE_BATCH]
            try:
                reply = await self._stub.GetGrantUsage(
                    hsm_pb2.GetGrantUsageRequest(grant_ids=batch), timeout=10
                )
            except grpc.aio.AioRpcError as exc:
                raise _failed(exc) from None
            found.extend(reply.usage)
        return found


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
