"""Using an organisation key from the phone (flows S3 and S4).

The phone logs into the gateway with its device key, asks for an operation under a grant, checks
the service record the gateway built, co-signs it with the cosigner, and gets the result with a
receipt, which it verifies before returning.

The gateway is not trusted to build the record honestly, nor to describe grants and keys: the
phone checks the grant's signature with the RA's grant key it received at enrolment (through the
cosigner, not the gateway), and before co-signing that the record names exactly what the user
asked for: the user and key, the grant and the organisation key that grant covers, the hash of
that key's certificate (which must chain to the CA the phone trusts), an operation the grant
allows in the exact form for that key's algorithm, inside the grant's window, the data and the
purpose.
"""

from __future__ import annotations

import datetime
import hashlib
import time
from dataclasses import dataclass

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from client.errors import ClientError
from client.keystore import Keystore
from client.sdk import SigningSession
from client.verifier import TrustAnchors, VerificationFailed, verify_receipt
from mobilesign import deviceauth, pkix, records
from mobilesign.grants import GrantError, Statement, check_use
from mobilesign.grants import verify as verify_grant
from mobilesign.v1 import gateway_pb2, gateway_pb2_grpc

_MAX_CLOCK_SKEW_MS = 300_000


@dataclass(frozen=True)
class OrganisationKey:
    """An organisation key as the phone checked it: its certificate chains to the trusted CA."""

    key_id: str
    organisation_id: str
    label: str
    certificate: bytes
    certificate_sha256: bytes
    public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey

    def operation_for(self, operation: int) -> records.Operation:
        """The record operation an API operation must be, for this key's algorithm."""
        if operation == gateway_pb2.OPERATION_SIGN_DIGEST:
            if isinstance(self.public_key, ec.EllipticCurvePublicKey):
                return records.Operation.SIGN_ECDSA_SHA256
            return records.Operation.SIGN_RSA_PSS_SHA256
        if operation == gateway_pb2.OPERATION_DECRYPT and isinstance(
            self.public_key, rsa.RSAPublicKey
        ):
            return records.Operation.DECRYPT_RSA_OAEP_SHA256
        raise ClientError("OPERATION_INVALID", "this key does not offer that operation")


@dataclass(frozen=True)
class Use:
    """The result of an organisation-key operation, its verified receipt, the record the user
    co-signed and the organisation key it named (its ``label`` is what to show the user)."""

    result: bytes
    receipt: gateway_pb2.Receipt
    record: records.ServiceRecord
    key: OrganisationKey


def _checked_key(
    message: gateway_pb2.OrganisationKey, key_id: str, ca_certificate: bytes
) -> OrganisationKey:
    try:
        certificate = x509.load_der_x509_certificate(message.certificate)
        pkix.verify_issued_by(
            certificate,
            x509.load_der_x509_certificate(ca_certificate),
            datetime.datetime.now(datetime.UTC),
        )
    except (ValueError, pkix.ChainError) as exc:
        raise ClientError(
            "ORGANISATION_CERTIFICATE_UNTRUSTED", "the organisation certificate does not verify"
        ) from exc
    public_key = certificate.public_key()
    if message.key_id != key_id or not isinstance(
        public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey
    ):
        raise ClientError("ORGANISATION_KEY_MISMATCH", "the gateway described another key")
    return OrganisationKey(
        key_id=key_id,
        organisation_id=message.organisation_id,
        label=message.label,
        certificate=message.certificate,
        certificate_sha256=hashlib.sha256(message.certificate).digest(),
        public_key=public_key,
    )


@dataclass(frozen=True)
class Approved:
    """A record the user co-signed for an approval, kept to fetch its result later."""

    record_id: str
    encoded: bytes
    signature: bytes
    digest: bytes
    record: records.ServiceRecord
    key: OrganisationKey


class GatewaySession:
    """A device-authenticated session with the gateway's public edge."""

    def __init__(self, channel: grpc.aio.Channel, keystore: Keystore) -> None:
        self._stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        self._keystore = keystore
        self._token = ""
        # What a grant covers and a key's certificate do not change: fetched once, then checked.
        self._grants: dict[str, gateway_pb2.Grant] = {}
        self._keys: dict[str, OrganisationKey] = {}

    @property
    def _metadata(self) -> tuple[tuple[str, str]]:
        return (("authorization", f"Bearer {self._token}"),)

    async def login(self) -> None:
        """Answer the gateway's challenge with the device key and keep the session token."""
        key_id = self._keystore.key_id
        try:
            started = await self._stub.StartSession(
                gateway_pb2.StartSessionRequest(key_id=key_id), timeout=10
            )
            transcript = deviceauth.gateway_session_transcript(
                bytes.fromhex(key_id), started.challenge
            )
            finished = await self._stub.FinishSession(
                gateway_pb2.FinishSessionRequest(
                    key_id=key_id,
                    challenge=started.challenge,
                    device_signature=deviceauth.sign(self._keystore.device_key, transcript),
                ),
                timeout=10,
            )
        except grpc.aio.AioRpcError as exc:
            raise ClientError.from_rpc(exc) from None
        self._token = finished.session_token

    async def grants(self) -> list[gateway_pb2.Grant]:
        """The user's grants."""
        try:
            reply = await self._stub.ListMyGrants(
                gateway_pb2.ListMyGrantsRequest(), metadata=self._metadata, timeout=10
            )
        except grpc.aio.AioRpcError as exc:
            raise ClientError.from_rpc(exc) from None
        self._grants.update((g.grant_id, g) for g in reply.grants)
        return list(reply.grants)

    async def _grant(self, grant_id: str) -> gateway_pb2.Grant:
        if grant_id not in self._grants:
            await self.grants()
        grant = self._grants.get(grant_id)
        if grant is None:
            raise ClientError("NO_GRANT", "the user has no such grant")
        return grant

    async def organisation_key(self, key_id: str, ca_certificate: bytes) -> OrganisationKey:
        """An organisation key and its certificate, checked against the trusted CA."""
        if key_id not in self._keys:
            try:
                reply = await self._stub.GetOrganisationKey(
                    gateway_pb2.GetOrganisationKeyRequest(key_id=key_id), timeout=10
                )
            except grpc.aio.AioRpcError as exc:
                raise ClientError.from_rpc(exc) from None
            self._keys[key_id] = _checked_key(reply.key, key_id, ca_certificate)
        return self._keys[key_id]

    def _statement(self, grant: gateway_pb2.Grant, trust: TrustAnchors) -> Statement:
        """The grant as the RA signed it: the gateway's description of it is not used."""
        try:
            grant_key = serialization.load_der_public_key(trust.grant_key_spki)
        except ValueError:
            raise ClientError("GRANT_KEY_REQUIRED", "the RA's grant key is needed") from None
        if not isinstance(grant_key, ec.EllipticCurvePublicKey):
            raise ClientError("GRANT_KEY_REQUIRED", "the RA's grant key is an EC P-256 key")
        try:
            statement = verify_grant(grant.signed_grant, [grant_key])
        except GrantError as exc:
            raise ClientError(exc.reason, str(exc)) from None
        if statement.grant_id != grant.grant_id or statement.user_id != self._keystore.user_id:
            raise ClientError("GRANT_MISMATCH", "the grant is not this user's")
        return statement

    def _check_record(
        self,
        encoded: bytes,
        statement: Statement,
        key: OrganisationKey,
        operation: int,
        data: bytes,
        purpose: str,
    ) -> records.ServiceRecord:
        try:
            record = records.decode_record(encoded)
        except records.RecordError as exc:
            raise ClientError("RECORD_MALFORMED", str(exc)) from None
        if (
            record.user_id != self._keystore.user_id
            or record.user_key_id != self._keystore.key_id
            or record.grant_id != statement.grant_id
            or record.organisation_key_id != statement.key_id
            or record.organisation_certificate_sha256 != key.certificate_sha256
            or record.operation is not key.operation_for(operation)
            or record.input_sha256 != hashlib.sha256(data).digest()
            or record.purpose != (purpose or statement.purpose)
            or abs(record.time_ms - time.time() * 1000) > _MAX_CLOCK_SKEW_MS
        ):
            raise ClientError("RECORD_MISMATCH", "the record is not what was asked for")
        try:
            check_use(statement, record, int(time.time()))
        except GrantError as exc:
            raise ClientError(exc.reason, str(exc)) from None
        return record

    async def use_key(
        self,
        signing: SigningSession,
        *,
        grant_id: str,
        operation: gateway_pb2.Operation.ValueType,
        data: bytes,
        purpose: str = "",
        trust: TrustAnchors,
    ) -> Use:
        """Sign a digest or decrypt a ciphertext with an organisation key under a grant.

        Nothing is co-signed unless the grant verifies with the RA's grant key in ``trust`` and
        the record names exactly that grant's key, its certificate, the operation and the data
        (``RECORD_MISMATCH`` otherwise)."""
        statement = self._statement(await self._grant(grant_id), trust)
        key = await self.organisation_key(statement.key_id, trust.ca_certificate)
        key.operation_for(operation)  # refuse what this key cannot do before asking for it
        prepared, record = await self._prepare(statement, key, operation, data, purpose)
        user_signature = await signing.sign(prepared.record)
        return await self._execute(
            prepared.record_id, prepared.record, user_signature, data, record, key, trust
        )

    async def _prepare(
        self,
        statement: Statement,
        key: OrganisationKey,
        operation: gateway_pb2.Operation.ValueType,
        data: bytes,
        purpose: str,
    ) -> tuple[gateway_pb2.PrepareOperationResponse, records.ServiceRecord]:
        """The gateway's record for the operation, checked to be exactly what was asked."""
        try:
            prepared = await self._stub.PrepareOperation(
                gateway_pb2.PrepareOperationRequest(
                    grant_id=statement.grant_id, operation=operation, input=data, purpose=purpose
                ),
                metadata=self._metadata,
                timeout=30,
            )
        except grpc.aio.AioRpcError as exc:
            raise ClientError.from_rpc(exc) from None
        record = self._check_record(prepared.record, statement, key, operation, data, purpose)
        return prepared, record

    async def _execute(
        self,
        record_id: str,
        encoded: bytes,
        user_signature: bytes,
        data: bytes,
        record: records.ServiceRecord,
        key: OrganisationKey,
        trust: TrustAnchors,
    ) -> Use:
        """Execute a co-signed record (or fetch the result of one executed before) and verify
        its receipt."""
        try:
            executed = await self._stub.ExecuteOperation(
                gateway_pb2.ExecuteOperationRequest(
                    record_id=record_id,
                    user_signature=user_signature,
                    input=data,
                    record=encoded,
                ),
                metadata=self._metadata,
                timeout=30,
            )
        except grpc.aio.AioRpcError as exc:
            raise ClientError.from_rpc(exc) from None
        if executed.receipt.record != encoded:
            raise ClientError("RECEIPT_MISMATCH", "the receipt is for another record")
        try:
            verify_receipt(
                executed.receipt, trust.ca_certificate, trust.log_public_key, trust.log_origin
            )
        except VerificationFailed as exc:
            raise ClientError(exc.reason, str(exc)) from None
        return Use(executed.result, executed.receipt, record, key)

    # Approvals (signatures a registered application asked for through the CSC endpoint) ----
    async def approvals(self) -> list[gateway_pb2.Approval]:
        """The user's pending approvals, oldest first."""
        try:
            reply = await self._stub.ListApprovals(
                gateway_pb2.ListApprovalsRequest(), metadata=self._metadata, timeout=10
            )
        except grpc.aio.AioRpcError as exc:
            raise ClientError.from_rpc(exc) from None
        return list(reply.approvals)

    async def approve(
        self, signing: SigningSession, approval: gateway_pb2.Approval, *, trust: TrustAnchors
    ) -> list[Approved]:
        """Approve ``approval``: one record per digest, each checked as :meth:`use_key` checks
        its record (the grant as the RA signed it, the key and its certificate, signing, the
        digest and the approval's purpose), co-signed, and handed to the gateway. The
        application's signHash then executes them; :meth:`result_of` fetches each result and
        its receipt."""
        statement = self._statement(await self._grant(approval.grant_id), trust)
        key = await self.organisation_key(statement.key_id, trust.ca_certificate)
        sign = gateway_pb2.OPERATION_SIGN_DIGEST
        key.operation_for(sign)
        prepared = [
            await self._prepare(statement, key, sign, digest, approval.purpose)
            for digest in approval.digests
        ]
        signatures = await signing.sign_many([p.record for p, _ in prepared])
        approved = [
            Approved(p.record_id, p.record, signature, digest, record, key)
            for (p, record), signature, digest in zip(
                prepared, signatures, approval.digests, strict=True
            )
        ]
        try:
            await self._stub.Approve(
                gateway_pb2.ApproveRequest(
                    approval_id=approval.approval_id,
                    records=[
                        gateway_pb2.CoSignedRecord(
                            record_id=a.record_id, record=a.encoded, user_signature=a.signature
                        )
                        for a in approved
                    ],
                ),
                metadata=self._metadata,
                timeout=30,
            )
        except grpc.aio.AioRpcError as exc:
            raise ClientError.from_rpc(exc) from None
        return approved

    async def decline(self, approval_id: str) -> None:
        """Refuse an approval."""
        try:
            await self._stub.Decline(
                gateway_pb2.DeclineRequest(approval_id=approval_id),
                metadata=self._metadata,
                timeout=10,
            )
        except grpc.aio.AioRpcError as exc:
            raise ClientError.from_rpc(exc) from None

    async def result_of(self, approved: Approved, *, trust: TrustAnchors) -> Use:
        """The signature of an approved record with its verified receipt (executing the record
        if the application has not yet)."""
        return await self._execute(
            approved.record_id,
            approved.encoded,
            approved.signature,
            approved.digest,
            approved.record,
            approved.key,
            trust,
        )
