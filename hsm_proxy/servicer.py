"""gRPC servicer of the HSM proxy: checks requests, moves them to the token's worker threads,
and maps PKCS#11 failures to status codes with stable reasons."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import grpc
import pkcs11
from asn1crypto import x509
from pkcs11 import exceptions as p11e

from hsm_proxy import keys
from hsm_proxy.authorisation import AuthorisationChecker
from hsm_proxy.errors import HsmProxyError
from hsm_proxy.token import PoolFull, SessionPool
from hsm_proxy.uses import Revoked, UseStore
from hsm_proxy.witness import Witness
from mobilesign import ids, pkix, records
from mobilesign.errors import Kind
from mobilesign.hosting import access, metrics, tracing
from mobilesign.v1 import hsm_pb2, hsm_pb2_grpc

T = TypeVar("T")
_Context = grpc.aio.ServicerContext[Any, Any]
_log = logging.getLogger("mobilesign.hsm")

SERVICE = "mobilesign.v1.HsmService"

#: Which caller identity may call which RPC; ``KEY_USERS`` then says whose each key is. Each
#: service holds one power: the RA makes keys and certifies, grants and revokes; the gateway
#: logs and presents complete authorisations; the cosigner may only seal and unseal.
POLICY = access.AccessPolicy(
    {
        "GenerateKeyPair": frozenset({"ra"}),
        "ListKeys": frozenset({"ra", "gateway", "admin"}),
        "GetPublicKey": frozenset({"ra", "gateway", "admin"}),
        "SignDigest": frozenset({"ra", "gateway"}),
        # Once per organisation key, at its creation (the RA fixes the subject).
        "CreateCertificateRequest": frozenset({"ra"}),
        "Decrypt": frozenset({"gateway"}),
        "Seal": frozenset({"cosigner"}),
        "Unseal": frozenset({"cosigner"}),
        "GetLogState": frozenset({"gateway", "admin"}),
        # The log's sequencer asks; the proxy signs only what extends what it signed before.
        "SignCheckpoint": frozenset({"gateway"}),
        "RecordRevocation": frozenset({"ra"}),
        "GetGrantUsage": frozenset({"ra", "admin"}),
    }
)
#: The one identity that may have a key of each purpose sign (the log key signs only through
#: SignCheckpoint): organisation keys for a complete authorisation, the rest for the RA alone.
KEY_USERS = {
    keys.Purpose.ORGANISATION: "gateway",
    keys.Purpose.CA: "ra",
    keys.Purpose.TICKET: "ra",
    keys.Purpose.GRANT: "ra",
}
#: GetGrantUsage answers for at most this many grants at once.
MAX_USAGE_GRANTS = 1000

_PURPOSES = {
    hsm_pb2.KEY_PURPOSE_ORGANISATION: keys.Purpose.ORGANISATION,
    hsm_pb2.KEY_PURPOSE_CA: keys.Purpose.CA,
    hsm_pb2.KEY_PURPOSE_TICKET: keys.Purpose.TICKET,
    hsm_pb2.KEY_PURPOSE_LOG: keys.Purpose.LOG,
    hsm_pb2.KEY_PURPOSE_GRANT: keys.Purpose.GRANT,
}
_ALGORITHMS = {
    hsm_pb2.KEY_ALGORITHM_EC_P256: keys.Algorithm.EC_P256,
    hsm_pb2.KEY_ALGORITHM_RSA_2048: keys.Algorithm.RSA_2048,
    hsm_pb2.KEY_ALGORITHM_RSA_3072: keys.Algorithm.RSA_3072,
}
_MECHANISMS = {
    hsm_pb2.SIGNATURE_MECHANISM_ECDSA_SHA256: keys.SignMechanism.ECDSA_SHA256,
    hsm_pb2.SIGNATURE_MECHANISM_RSA_PKCS1V15_SHA256: keys.SignMechanism.RSA_PKCS1V15_SHA256,
    hsm_pb2.SIGNATURE_MECHANISM_RSA_PSS_SHA256: keys.SignMechanism.RSA_PSS_SHA256,
}
_PURPOSE_VALUES = {v: k for k, v in _PURPOSES.items()}
# Failures after which the token certainly did not use the key.
_NOT_ACTED = frozenset({Kind.EXHAUSTED, Kind.UNAVAILABLE})
# The record operation an organisation-key signature mechanism must be authorised as.
_RECORD_OPERATIONS = {
    keys.SignMechanism.ECDSA_SHA256: records.Operation.SIGN_ECDSA_SHA256,
    keys.SignMechanism.RSA_PSS_SHA256: records.Operation.SIGN_RSA_PSS_SHA256,
}
_ALGORITHM_VALUES = {v: k for k, v in _ALGORITHMS.items()}


def _enum(table: Mapping[Any, T], value: int, reason: str, what: str) -> T:
    try:
        return table[value]
    except KeyError:
        raise HsmProxyError(Kind.INVALID, reason, f"{what} is required") from None


def _key_info(record: keys.KeyRecord) -> hsm_pb2.KeyInfo:
    return hsm_pb2.KeyInfo(
        key_id=record.key_id.hex(),
        label=record.label,
        purpose=_PURPOSE_VALUES[record.purpose],
        algorithm=_ALGORITHM_VALUES[record.algorithm],
        public_key_spki=record.spki,
    )


def _log_key_reserved() -> HsmProxyError:
    return HsmProxyError(
        Kind.DENIED, "LOG_KEY_RESERVED", "the log key signs checkpoints only (SignCheckpoint)"
    )


def _caller() -> str:
    identity = access.caller.get()
    assert identity is not None  # the access policy admits authenticated callers only
    return identity


def _check_key_user(record: keys.KeyRecord) -> None:
    """Refuse a caller whose power does not include signing with this key."""
    if record.purpose is keys.Purpose.LOG:
        raise _log_key_reserved()
    if _caller() == KEY_USERS[record.purpose]:
        return
    if record.purpose is keys.Purpose.ORGANISATION:
        raise HsmProxyError(
            Kind.DENIED,
            "KEY_RESERVED_FOR_GATEWAY",
            "organisation keys are used only for the gateway, with a complete authorisation",
        )
    raise HsmProxyError(
        Kind.DENIED, "KEY_RESERVED_FOR_RA", f"{record.purpose.value} keys sign for the RA only"
    )


async def run_in_token(
    pool: SessionPool, operation: Callable[[pkcs11.Session], T], *, name: str
) -> T:
    """Run ``operation`` on the pool, PKCS#11 failures mapped to statuses with stable reasons.

    ``name`` (a fixed word: ``sign``, ``unseal``, ...) labels its metrics and its span: the
    time it waited for a worker, the time it ran in the token, and the queue it stood in."""
    submitted = time.perf_counter()

    def timed(session: pkcs11.Session) -> T:
        # On the worker thread: the wait ends, and the token's own time begins, here.
        started = time.perf_counter()
        metrics.HSM_QUEUE_WAIT_SECONDS.observe(started - submitted)
        outcome = "error"
        try:
            result = operation(session)
            outcome = "ok"
            return result
        finally:
            metrics.HSM_OPERATION_SECONDS.labels(name, outcome).observe(
                time.perf_counter() - started
            )

    metrics.HSM_QUEUE_DEPTH.inc()
    try:
        with tracing.span(f"hsm.{name}"):
            return await pool.run(timed)
    except PoolFull:
        raise HsmProxyError(Kind.EXHAUSTED, "HSM_QUEUE_FULL", "the HSM queue is full") from None
    except (p11e.MechanismInvalid, p11e.KeyTypeInconsistent, p11e.KeyHandleInvalid):
        raise HsmProxyError(
            Kind.PRECONDITION,
            "MECHANISM_NOT_ALLOWED",
            "the token refuses this mechanism for this key",
        ) from None
    except (p11e.DataLenRange, p11e.DataInvalid):
        raise HsmProxyError(Kind.INVALID, "DATA_INVALID", "the token refuses the input") from None
    except (
        p11e.UserNotLoggedIn,
        p11e.SessionClosed,
        p11e.SessionHandleInvalid,
        p11e.DeviceRemoved,
        p11e.TokenNotPresent,
        p11e.DeviceError,
        p11e.DeviceMemory,
    ):
        _log.error("token unavailable")
        raise HsmProxyError(Kind.UNAVAILABLE, "HSM_UNAVAILABLE", "the HSM is unavailable") from None
    except p11e.PKCS11Error as exc:
        _log.error("PKCS#11 failure", extra={"fields": {"error": type(exc).__name__}})
        raise HsmProxyError(Kind.INTERNAL, "HSM_ERROR", "the HSM failed") from None
    finally:
        metrics.HSM_QUEUE_DEPTH.dec()


class _TokenSigner:
    """Signs the PKCS#10 request the proxy built, with the key it certifies."""

    def __init__(self, servicer: HsmServicer, record: keys.KeyRecord) -> None:
        self._servicer = servicer
        self._record = record
        if record.algorithm is keys.Algorithm.EC_P256:
            self._algorithm = pkix.SignatureAlgorithm.ECDSA_SHA256
            self._mechanism = keys.SignMechanism.ECDSA_SHA256
        else:
            self._algorithm = pkix.SignatureAlgorithm.RSA_PKCS1_SHA256
            self._mechanism = keys.SignMechanism.RSA_PKCS1V15_SHA256

    @property
    def algorithm(self) -> pkix.SignatureAlgorithm:
        return self._algorithm

    async def sign(self, data: bytes) -> bytes:
        digest = hashlib.sha256(data).digest()
        return await self._servicer._run(
            "sign", lambda s: keys.sign_digest(s, self._record, self._mechanism, digest)
        )


class HsmServicer(hsm_pb2_grpc.HsmServiceServicer):
    """Implements ``mobilesign.v1.HsmService`` over a :class:`SessionPool`."""

    def __init__(
        self, pool: SessionPool, checker: AuthorisationChecker, witness: Witness, uses: UseStore
    ) -> None:
        self._pool = pool
        self._checker = checker
        self._witness = witness
        self._uses = uses
        self._records: dict[bytes, keys.KeyRecord] = {}
        # Serialises key generation so that the label check and the creation are atomic.
        self._generate_lock = asyncio.Lock()
        # Serialises certificate requests so that each key signs one, stored before it is sent.
        self._csr_lock = asyncio.Lock()

    async def _describe(self, key_id: bytes) -> keys.KeyRecord:
        # Key pairs are never deleted or changed, so a description read once stays true.
        record = self._records.get(key_id)
        if record is None:
            record = await self._run("describe", lambda s: keys.describe(s, key_id))
            self._records[key_id] = record
        return record

    async def _authorised(
        self, record_id: str, name: str, operation: Callable[[pkcs11.Session], bytes]
    ) -> bytes:
        """Run an organisation-key operation for a checked record; a failure before the token
        acted (queue full, token unavailable) frees the record for a retry."""
        try:
            return await self._run(name, operation)
        except HsmProxyError as exc:
            if exc.kind in _NOT_ACTED:
                await self._checker.failed_before_use(record_id)
            raise

    async def _run(self, name: str, operation: Callable[[pkcs11.Session], T]) -> T:
        return await run_in_token(self._pool, operation, name=name)

    async def GenerateKeyPair(
        self, request: hsm_pb2.GenerateKeyPairRequest, context: _Context
    ) -> hsm_pb2.GenerateKeyPairResponse:
        ids.KEY_LABEL.check(request.label)
        purpose = _enum(_PURPOSES, request.purpose, "PURPOSE_REQUIRED", "a key purpose")
        algorithm = _enum(_ALGORITHMS, request.algorithm, "ALGORITHM_REQUIRED", "a key algorithm")
        if purpose is keys.Purpose.LOG:
            raise _log_key_reserved()
        async with self._generate_lock:
            record = await self._run(
                "generate", lambda s: keys.generate(s, request.label, purpose, algorithm)
            )
        _log.info(
            "key generated",
            extra={
                "fields": {
                    "key_id": record.key_id.hex(),
                    "purpose": purpose.value,
                    "algorithm": algorithm.value,
                }
            },
        )
        return hsm_pb2.GenerateKeyPairResponse(key=_key_info(record))

    async def ListKeys(
        self, request: hsm_pb2.ListKeysRequest, context: _Context
    ) -> hsm_pb2.ListKeysResponse:
        purpose = None
        if request.purpose != hsm_pb2.KEY_PURPOSE_UNSPECIFIED:
            purpose = _enum(_PURPOSES, request.purpose, "PURPOSE_INVALID", "a known purpose")
        records = await self._run("list_keys", lambda s: keys.list_keys(s, purpose))
        return hsm_pb2.ListKeysResponse(keys=[_key_info(r) for r in records])

    async def GetPublicKey(
        self, request: hsm_pb2.GetPublicKeyRequest, context: _Context
    ) -> hsm_pb2.GetPublicKeyResponse:
        key_id = keys.parse_key_id(request.key_id)
        record = await self._describe(key_id)
        return hsm_pb2.GetPublicKeyResponse(key=_key_info(record))

    async def SignDigest(
        self, request: hsm_pb2.SignDigestRequest, context: _Context
    ) -> hsm_pb2.SignDigestResponse:
        key_id = keys.parse_key_id(request.key_id)
        mechanism = _enum(_MECHANISMS, request.mechanism, "MECHANISM_REQUIRED", "a mechanism")
        if len(request.digest) != keys.DIGEST_BYTES:
            raise HsmProxyError(Kind.INVALID, "DIGEST_LENGTH", "a SHA-256 digest is 32 bytes")
        record = await self._describe(key_id)
        _check_key_user(record)
        if record.purpose is keys.Purpose.ORGANISATION:
            operation = _RECORD_OPERATIONS.get(mechanism)
            if operation is None:
                raise HsmProxyError(
                    Kind.PRECONDITION,
                    "MECHANISM_NOT_ALLOWED",
                    "organisation keys sign with ECDSA or RSA-PSS",
                )
            record_id = await self._checker.check(
                key_id, operation, request.digest, request.authorisation
            )
            signature = await self._authorised(
                record_id, "sign", lambda s: keys.sign_digest(s, record, mechanism, request.digest)
            )
            return hsm_pb2.SignDigestResponse(signature=signature)
        if request.HasField("authorisation"):
            raise HsmProxyError(
                Kind.INVALID,
                "AUTHORISATION_UNEXPECTED",
                "only organisation keys take an authorisation",
            )
        signature = await self._run(
            "sign", lambda s: keys.sign_digest(s, record, mechanism, request.digest)
        )
        return hsm_pb2.SignDigestResponse(signature=signature)

    async def CreateCertificateRequest(
        self, request: hsm_pb2.CreateCertificateRequestRequest, context: _Context
    ) -> hsm_pb2.CreateCertificateRequestResponse:
        key_id = keys.parse_key_id(request.key_id)
        try:
            subject = x509.Name.load(request.subject)
            subject.native  # noqa: B018 (forces a full parse of the DER)
        except (ValueError, TypeError):
            raise HsmProxyError(
                Kind.INVALID, "MALFORMED_SUBJECT", "the subject is not DER"
            ) from None
        record = await self._describe(key_id)
        if record.purpose is keys.Purpose.LOG:
            raise _log_key_reserved()
        if record.purpose is not keys.Purpose.ORGANISATION:
            raise HsmProxyError(
                Kind.PRECONDITION,
                "CSR_ORGANISATION_KEYS_ONLY",
                "only organisation keys sign a certificate request",
            )
        async with self._csr_lock:
            stored = await self._uses.certificate_request(key_id.hex())
            if stored is None:
                csr = await pkix.build_csr(
                    signer=_TokenSigner(self, record),
                    subject=request.subject,
                    subject_public_key_info=record.spki,
                )
                # Kept before it is sent: a caller that lost the answer asks again and gets it.
                stored = await self._uses.keep_certificate_request(
                    key_id.hex(), request.subject, csr, int(time.time())
                )
        subject, csr = stored
        if subject != request.subject:
            raise HsmProxyError(
                Kind.PRECONDITION,
                "CSR_ALREADY_MADE",
                "this key signed its certificate request already, for another subject",
            )
        return hsm_pb2.CreateCertificateRequestResponse(csr=csr)

    async def Decrypt(
        self, request: hsm_pb2.DecryptRequest, context: _Context
    ) -> hsm_pb2.DecryptResponse:
        key_id = keys.parse_key_id(request.key_id)
        if request.mechanism != hsm_pb2.DECRYPT_MECHANISM_RSA_OAEP_SHA256:
            raise HsmProxyError(Kind.INVALID, "MECHANISM_REQUIRED", "a mechanism is required")
        record = await self._describe(key_id)
        keys.check_decryptable(record, request.ciphertext)
        record_id = await self._checker.check(
            key_id,
            records.Operation.DECRYPT_RSA_OAEP_SHA256,
            request.ciphertext,
            request.authorisation,
        )
        plaintext = await self._authorised(
            record_id, "decrypt", lambda s: keys.decrypt_oaep(s, record, request.ciphertext)
        )
        return hsm_pb2.DecryptResponse(plaintext=plaintext)

    async def Seal(self, request: hsm_pb2.SealRequest, context: _Context) -> hsm_pb2.SealResponse:
        caller = _caller()
        sealed = await self._run(
            "seal", lambda s: keys.seal(s, caller, request.plaintext, request.associated_data)
        )
        return hsm_pb2.SealResponse(sealed=sealed)

    async def Unseal(
        self, request: hsm_pb2.UnsealRequest, context: _Context
    ) -> hsm_pb2.UnsealResponse:
        caller = _caller()
        plaintext = await self._run(
            "unseal", lambda s: keys.unseal(s, caller, request.sealed, request.associated_data)
        )
        return hsm_pb2.UnsealResponse(plaintext=plaintext)

    async def GetLogState(
        self, request: hsm_pb2.GetLogStateRequest, context: _Context
    ) -> hsm_pb2.GetLogStateResponse:
        state, note = await self._witness.latest()
        return hsm_pb2.GetLogStateResponse(
            public_key_spki=self._witness.public_key_spki,
            origin=self._witness.origin,
            tree_size=state.tree_size,
            root_hash=state.root_hash,
            checkpoint=note,
        )

    async def SignCheckpoint(
        self, request: hsm_pb2.SignCheckpointRequest, context: _Context
    ) -> hsm_pb2.SignCheckpointResponse:
        note = await self._witness.sign(
            old_size=request.old_size,
            tree_size=request.tree_size,
            root_hash=request.root_hash,
            proof=list(request.consistency_proof),
            now=int(time.time()),
        )
        return hsm_pb2.SignCheckpointResponse(checkpoint=note)

    async def RecordRevocation(
        self, request: hsm_pb2.RecordRevocationRequest, context: _Context
    ) -> hsm_pb2.RecordRevocationResponse:
        which = request.WhichOneof("subject")
        if which == "grant_id":
            kind, subject = Revoked.GRANT, ids.GRANT_ID.check(request.grant_id)
        elif which == "certificate_serial":
            serial = ids.CERTIFICATE_SERIAL.check(request.certificate_serial)
            # One spelling per serial, the one records carry: no leading zeros.
            kind, subject = Revoked.CERTIFICATE, format(int(serial, 16), "x")
        elif which == "organisation_key_id":
            kind = Revoked.ORGANISATION_KEY
            subject = keys.parse_key_id(request.organisation_key_id).hex()
        else:
            raise HsmProxyError(Kind.INVALID, "REVOCATION_SUBJECT_REQUIRED", "name what is revoked")
        await self._uses.revoke(kind, subject, int(time.time()))
        return hsm_pb2.RecordRevocationResponse()

    async def GetGrantUsage(
        self, request: hsm_pb2.GetGrantUsageRequest, context: _Context
    ) -> hsm_pb2.GetGrantUsageResponse:
        if len(request.grant_ids) > MAX_USAGE_GRANTS:
            raise HsmProxyError(
                Kind.INVALID,
                "TOO_MANY_GRANT_IDS",
                f"at most {MAX_USAGE_GRANTS} grants per request",
            )
        grant_ids = [ids.GRANT_ID.check(g) for g in request.grant_ids]
        counted = await self._uses.usage(grant_ids, int(time.time()))
        return hsm_pb2.GetGrantUsageResponse(
            usage=[
                hsm_pb2.GrantUsage(grant_id=g, used_total=c.used_total, used_today=c.used_today)
                for g, c in zip(grant_ids, counted, strict=True)
            ]
        )
