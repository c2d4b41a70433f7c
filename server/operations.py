"""Use of organisation keys (flows S3 and S4): service records and their execution.

Order of a use, each step durable before the next: the gateway checks the certificate and the
grant (the RA's answers) and fixes the record's bytes (prepare), storing nothing: the record's
gateway nonce is a MAC under the gateway's record key, and the phone brings the record back; the
user co-signs it; the gateway checks that it prepared it and verifies that signature, then in
one transaction consumes quota and appends the co-signed record to the audit log; the HSM proxy,
as the log's witness, signs a checkpoint of a tree that includes it (one checkpoint serves every
use logged before it); only then does the gateway ask the proxy to use the key, and the proxy
checks the record again next to the key, with its inclusion under that checkpoint, and the RA's
signed grant, whose uses it counts itself; the outcome is logged; the result goes back with a
receipt. No record in the log, no service.

The gateway counts each grant's uses too, in the transaction that logs the record, so that a use
beyond the quota is refused before it reaches the log; the HSM proxy's count is the one that
holds if the gateway does not.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import secrets
import time
import weakref
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from mobilesign import grants, ids, records
from mobilesign.errors import Kind
from mobilesign.hosting import metrics
from mobilesign.v1 import gateway_pb2, hsm_pb2
from server.audit import AuditLog
from server.cosigner_client import CosignerClient
from server.errors import GatewayError
from server.hsm_proxy_client import HsmClient
from server.ledger import GrantRow, Ledger, QuotaExceeded, RecordExists, RecordRow
from server.ra_client import Registry
from server.sessions import Session

#: A prepared record must be signed and executed within this time (the HSM proxy's window).
RECORD_LIFETIME_SECONDS = 240

_RETRYABLE = frozenset({Kind.EXHAUSTED, Kind.UNAVAILABLE})


def grant_row(grant: gateway_pb2.Grant) -> GrantRow:
    """The RA's grant as the ledger keeps it (its own counts start at zero)."""
    return GrantRow(
        grant_id=grant.grant_id,
        user_id=grant.user_id,
        key_id=grant.key_id,
        operations=tuple(grants.operation_name(op) for op in grant.operations),
        not_before=grant.not_before_unix,
        not_after=grant.not_after_unix,
        quota_total=grant.quota_total,
        quota_daily=grant.quota_daily,
        purpose=grant.purpose,
        revoked=grant.revoked,
        used_total=0,
        used_today=0,
        signed_grant=grant.signed_grant,
    )


def check_usable(grant: GrantRow, operation: str, now: float) -> None:
    """Refuse a grant that is revoked, outside its validity window at ``now``, or that does not
    allow ``operation`` (its quota is the ledger's to count)."""
    if grant.revoked:
        raise GatewayError(Kind.DENIED, "GRANT_REVOKED", "the grant has been revoked")
    if now < grant.not_before:
        raise GatewayError(Kind.DENIED, "GRANT_NOT_YET_VALID", "the grant is not valid yet")
    if now >= grant.not_after:
        raise GatewayError(Kind.DENIED, "GRANT_EXPIRED", "the grant has expired")
    if operation not in grant.operations:
        raise GatewayError(
            Kind.DENIED, "OPERATION_NOT_GRANTED", "the grant does not allow this operation"
        )


@dataclass(frozen=True)
class Executed:
    """The result of an operation and the receipt that proves it was recorded."""

    result: bytes
    receipt: gateway_pb2.Receipt


class Operations:
    """The prepare/execute exchange of an organisation-key use."""

    def __init__(
        self,
        *,
        ledger: Ledger,
        audit: AuditLog,
        hsm: HsmClient,
        registry: Registry,
        cosigner: CosignerClient,
        record_key: bytes,
    ) -> None:
        self._ledger = ledger
        self._record_key = record_key
        self._audit = audit
        self._hsm = hsm
        self._registry = registry
        self._cosigner = cosigner
        # The cosigner's attestation of each user key, asked for once.
        self._attestations: dict[str, bytes] = {}
        self._record_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    async def _usable_grant(self, grant_id: str, session: Session, operation: str) -> GrantRow:
        """The RA's grant (its revocation as the RA says now) with the ledger's count of it,
        refused unless the session's user may use it for ``operation`` now."""
        grant = await self._registry.grant(grant_id) if ids.GRANT_ID.matches(grant_id) else None
        if grant is None or grant.user_id != session.user_id:
            raise GatewayError(Kind.DENIED, "NO_GRANT", "the user has no such grant")
        now = time.time()
        row = await self._ledger.remember_grant(grant_row(grant), now)
        check_usable(row, operation, now)
        if row.used_total >= row.quota_total or row.used_today >= row.quota_daily:
            raise GatewayError(Kind.EXHAUSTED, "QUOTA_EXCEEDED", "the grant's quota is used up")
        return row

    # Prepare -----------------------------------------------------------------------------
    async def prepare(
        self, session: Session, *, grant_id: str, operation: str, data: bytes, purpose: str
    ) -> tuple[str, bytes]:
        """Check the grant and fix the record's bytes for ``operation`` (``sign`` or
        ``decrypt``) on ``data``; returns (record id, record)."""
        name = operation
        if name not in grants.OPERATIONS:
            raise GatewayError(Kind.INVALID, "OPERATION_INVALID", "unknown operation")
        if len(purpose) > records.MAX_PURPOSE:
            raise GatewayError(
                Kind.INVALID, "PURPOSE_TOO_LONG", f"at most {records.MAX_PURPOSE} characters"
            )
        grant = await self._usable_grant(grant_id, session, name)
        try:
            key = await self._registry.organisation_key(grant.key_id)
        except GatewayError as exc:
            if exc.kind is not Kind.NOT_FOUND:
                raise
            raise GatewayError(
                Kind.PRECONDITION, "ORGANISATION_KEY_UNUSABLE", "no certificate"
            ) from None
        if (await self._registry.key_status(grant.key_id)).revoked:
            raise GatewayError(
                Kind.PRECONDITION,
                "ORGANISATION_CERTIFICATE_REVOKED",
                "the organisation certificate has been revoked",
            )
        if name == "sign":
            if len(data) != 32:
                raise GatewayError(Kind.INVALID, "INPUT_INVALID", "sign a 32-byte SHA-256 digest")
            record_operation = (
                records.Operation.SIGN_ECDSA_SHA256
                if key.algorithm == gateway_pb2.ORGANISATION_KEY_ALGORITHM_EC_P256
                else records.Operation.SIGN_RSA_PSS_SHA256
            )
        else:
            size = 256 if key.algorithm == gateway_pb2.ORGANISATION_KEY_ALGORITHM_RSA_2048 else 384
            if len(data) != size:
                raise GatewayError(
                    Kind.INVALID, "INPUT_INVALID", f"the ciphertext must be {size} bytes"
                )
            record_operation = records.Operation.DECRYPT_RSA_OAEP_SHA256
        unsealed = records.ServiceRecord(
            record_id=secrets.token_hex(16),
            user_id=session.user_id,
            user_key_id=session.user_key_id,
            certificate_serial=session.certificate.serial,
            organisation_key_id=grant.key_id,
            organisation_certificate_sha256=hashlib.sha256(key.certificate).digest(),
            operation=record_operation,
            input_sha256=hashlib.sha256(data).digest(),
            purpose=purpose or grant.purpose,
            grant_id=grant.grant_id,
            time_ms=int(time.time() * 1000),
            gateway_nonce=bytes(records.NONCE_BYTES),
        )
        nonce = records.prepared_nonce(self._record_key, unsealed)
        record = dataclasses.replace(unsealed, gateway_nonce=nonce)
        return record.record_id, record.encode()

    # Execute -----------------------------------------------------------------------------
    async def execute(
        self,
        session: Session,
        *,
        record_id: str,
        record: bytes,
        data: bytes,
        user_signature: bytes,
    ) -> Executed:
        """Verify the user's ``user_signature`` on ``record`` (prepared here as ``record_id``),
        log it, execute it on ``data``, log the outcome, and return the result with a receipt.
        Once it is logged, executing it again needs only its id."""
        ids.RECORD_ID.check(record_id)
        lock = self._record_locks.setdefault(record_id, asyncio.Lock())
        async with lock:
            row = await self._ledger.record(record_id)
            if row is None:
                prepared = self._prepared(session, record_id, record)
                self._check_input(prepared, data)
                try:
                    entry_index = await self._log(session, prepared, record, user_signature)
                except RecordExists:  # logged meanwhile (through another gateway)
                    row = await self._ledger.record(record_id)
                else:
                    return await self._finish(
                        session, prepared, record, user_signature, entry_index, data
                    )
            assert row is not None
            return await self._again(session, row, data)

    def _prepared(
        self, session: Session, record_id: str, presented: bytes
    ) -> records.ServiceRecord:
        """The record as this gateway prepared it for this session's key, or NOT_FOUND."""
        try:
            record = records.decode_record(presented) if presented else None
        except records.RecordError:
            record = None
        if (
            record is None
            or record.record_id != record_id
            or record.user_key_id != session.user_key_id
            or record.user_id != session.user_id
            or not records.prepared_with(self._record_key, record)
        ):
            raise GatewayError(
                Kind.NOT_FOUND, "RECORD_NOT_FOUND", "no such record was prepared for this key"
            )
        return record

    @staticmethod
    def _verify(
        session: Session, record: records.ServiceRecord, encoded: bytes, user_signature: bytes
    ) -> None:
        """Refuse a record past its lifetime, or not signed with the session user's key."""
        if time.time() * 1000 - record.time_ms > RECORD_LIFETIME_SECONDS * 1000:
            raise GatewayError(Kind.PRECONDITION, "RECORD_EXPIRED", "prepare the operation again")
        user_key = session.certificate.parsed.public_key()
        assert isinstance(user_key, ed25519.Ed25519PublicKey)
        try:
            user_key.verify(user_signature, encoded)
        except InvalidSignature:
            raise GatewayError(
                Kind.DENIED,
                "USER_SIGNATURE_INVALID",
                "the signature on the record is not the user's",
            ) from None

    def check_cosigned(
        self,
        session: Session,
        *,
        record_id: str,
        record: bytes,
        data: bytes,
        user_signature: bytes,
    ) -> records.ServiceRecord:
        """The record, when a gateway sharing this one's record key prepared it for the
        session's key, for ``data``, and the user signed it in its lifetime: what
        :meth:`execute` checks before it logs anything, without logging anything."""
        ids.RECORD_ID.check(record_id)
        prepared = self._prepared(session, record_id, record)
        self._check_input(prepared, data)
        self._verify(session, prepared, record, user_signature)
        return prepared

    @staticmethod
    def _check_input(record: records.ServiceRecord, data: bytes) -> None:
        if hashlib.sha256(data).digest() != record.input_sha256:
            raise GatewayError(
                Kind.INVALID, "INPUT_MISMATCH", "the input is not the one in the record"
            )

    async def _again(self, session: Session, row: RecordRow, data: bytes) -> Executed:
        """A record logged before: its kept result, its failure, or, logged before a crash and
        not yet executed, the rest of its execution."""
        if row.user_key_id != session.user_key_id:
            raise GatewayError(Kind.NOT_FOUND, "RECORD_NOT_FOUND", "no such record")
        record = records.decode_record(row.record)
        self._check_input(record, data)
        if row.state == "done":
            if row.result is None or row.entry_index is None or row.user_signature is None:
                raise GatewayError(
                    Kind.PRECONDITION,
                    "RECORD_ALREADY_EXECUTED",
                    "the record was executed; decrypted data is not kept",
                )
            _, receipt = await self._receipt(
                session, row.record, row.user_signature, row.entry_index
            )
            return Executed(row.result, receipt)
        if row.state == "failed":
            raise GatewayError(
                Kind.PRECONDITION,
                "RECORD_FAILED",
                f"the record's operation failed: {row.reason}",
            )
        if row.state == "prepared":  # stored by a version that stored prepared records
            raise GatewayError(Kind.PRECONDITION, "RECORD_EXPIRED", "prepare the operation again")
        # Logged before a crash, not yet executed: carry on.
        assert row.entry_index is not None
        assert row.user_signature is not None
        return await self._finish(
            session, record, row.record, row.user_signature, row.entry_index, data
        )

    async def _finish(
        self,
        session: Session,
        record: records.ServiceRecord,
        encoded: bytes,
        user_signature: bytes,
        entry_index: int,
        data: bytes,
    ) -> Executed:
        # The witnessed checkpoint comes first: the HSM proxy checks the record's inclusion.
        tree_size, receipt = await self._receipt(session, encoded, user_signature, entry_index)
        authorisation = await self._authorisation(receipt, tree_size, session, record.grant_id)
        result = await self._run(record, authorisation, data)
        return Executed(result, receipt)

    async def _log(
        self,
        session: Session,
        record: records.ServiceRecord,
        encoded: bytes,
        user_signature: bytes,
    ) -> int:
        self._verify(session, record, encoded, user_signature)
        name = "sign" if record.operation.is_sign else "decrypt"
        await self._usable_grant(record.grant_id, session, name)
        entry = records.RecordEntry(encoded, user_signature).encode()
        try:
            index = await self._ledger.log_use(
                record.record_id,
                user_id=record.user_id,
                user_key_id=record.user_key_id,
                grant_id=record.grant_id,
                record=encoded,
                entry=entry,
                user_signature=user_signature,
                now=time.time(),
            )
        except QuotaExceeded:
            # Say which: revoked or expired meanwhile, or the quota.
            await self._usable_grant(record.grant_id, session, name)
            raise GatewayError(
                Kind.EXHAUSTED, "QUOTA_EXCEEDED", "the grant's quota is used up"
            ) from None
        metrics.AUDIT_APPENDS.labels("use").inc()
        return index

    async def _authorisation(
        self, receipt: gateway_pb2.Receipt, tree_size: int, session: Session, grant_id: str
    ) -> hsm_pb2.OrganisationKeyAuthorisation:
        """The co-signed record, its place in the witnessed log, the user's certificate, the
        cosigner's attestation of the user's key and the RA's signed grant: what the HSM proxy
        checks next to the key."""
        attestation = self._attestations.get(session.user_key_id)
        if attestation is None:
            key = await self._cosigner.key(session.user_key_id)
            if key is None:
                raise GatewayError(
                    Kind.DENIED, "KEY_NOT_ENROLLED", "the cosigner holds no share of this key"
                )
            attestation = self._attestations[session.user_key_id] = key.attestation
        return hsm_pb2.OrganisationKeyAuthorisation(
            record=receipt.record,
            user_signature=receipt.user_signature,
            user_certificate=session.certificate.der,
            cosigner_attestation=attestation,
            entry_index=receipt.entry_index,
            tree_size=tree_size,
            inclusion_proof=receipt.inclusion_proof,
            signed_grant=await self._ledger.signed_grant(grant_id),
        )

    async def _run(
        self,
        record: records.ServiceRecord,
        authorisation: hsm_pb2.OrganisationKeyAuthorisation,
        data: bytes,
    ) -> bytes:
        try:
            if record.operation is records.Operation.DECRYPT_RSA_OAEP_SHA256:
                result = await self._hsm.decrypt(record.organisation_key_id, data, authorisation)
            else:
                mechanism = (
                    hsm_pb2.SIGNATURE_MECHANISM_ECDSA_SHA256
                    if record.operation is records.Operation.SIGN_ECDSA_SHA256
                    else hsm_pb2.SIGNATURE_MECHANISM_RSA_PSS_SHA256
                )
                result = await self._hsm.sign_digest(
                    record.organisation_key_id, mechanism, data, authorisation
                )
        except GatewayError as exc:
            if exc.kind in _RETRYABLE:
                # The HSM did not act: the record stays logged and the phone may execute again.
                raise
            # Refused as a replay while still unfinished here: the HSM acted before a crash
            # and the result never came back. The log says so rather than "refused".
            if exc.reason == "AUTHORISATION_REPLAYED":
                exc = GatewayError(
                    Kind.PRECONDITION,
                    "RESULT_LOST",
                    "the operation ran before a restart and its result was lost",
                )
            outcome = records.OutcomeEntry(record.record_id, False, exc.reason, bytes(32))
            await self._ledger.log_outcome(
                record.record_id, outcome.encode(), False, None, exc.reason
            )
            metrics.AUDIT_APPENDS.labels("outcome").inc()
            raise exc from None
        outcome = records.OutcomeEntry(record.record_id, True, "", hashlib.sha256(result).digest())
        # A signature is kept so that a retry gets it again; a plaintext never is.
        kept = result if record.operation.is_sign else None
        await self._ledger.log_outcome(record.record_id, outcome.encode(), True, kept, "")
        metrics.AUDIT_APPENDS.labels("outcome").inc()
        return result

    async def _receipt(
        self, session: Session, record: bytes, user_signature: bytes, entry_index: int
    ) -> tuple[int, gateway_pb2.Receipt]:
        """(tree size, receipt) under a witnessed checkpoint that includes the record's entry."""
        size, note = await self._audit.checkpoint(covering=entry_index + 1)
        return size, gateway_pb2.Receipt(
            record=record,
            user_signature=user_signature,
            # The record names this certificate: it was the session's when it was prepared.
            user_certificate=session.certificate.der,
            entry_index=entry_index,
            entry=records.RecordEntry(record, user_signature).encode(),
            inclusion_proof=await self._audit.inclusion_proof(entry_index, size),
            checkpoint=note,
        )
