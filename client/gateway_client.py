"""Using an organisation key from the phone (flows S3 and S4).

The phone logs into the gateway with its device key, asks for an operation under a grant, checks
the service record the gateway built (it must say exactly what the user asked for), co-signs it
with the cosigner, and gets the result with a receipt, which it verifies before returning.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import grpc

from client.errors import ClientError
from client.keystore import Keystore
from client.sdk import SigningSession
from client.verifier import TrustAnchors, VerificationFailed, verify_receipt
from mobilesign import deviceauth, records
from mobilesign.v1 import gateway_pb2, gateway_pb2_grpc

_MAX_CLOCK_SKEW_MS = 300_000


@dataclass(frozen=True)
class Use:
    """The result of an organisation-key operation and its verified receipt."""

    result: bytes
    receipt: gateway_pb2.Receipt
    record: records.ServiceRecord


class GatewaySession:
    """A device-authenticated session with the gateway's public edge."""

    def __init__(self, channel: grpc.aio.Channel, keystore: Keystore) -> None:
        self._stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        self._keystore = keystore
        self._token = ""

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
        return list(reply.grants)

    def _check_record(
        self, encoded: bytes, grant_id: str, operation: int, data: bytes, purpose: str
    ) -> records.ServiceRecord:
        try:
            record = records.decode_record(encoded)
        except records.RecordError as exc:
            raise ClientError("RECORD_MALFORMED", str(exc)) from None
        wants_sign = operation == gateway_pb2.OPERATION_SIGN_DIGEST
        if (
            record.user_id != self._keystore.user_id
            or record.user_key_id != self._keystore.key_id
            or record.grant_id != grant_id
            or record.input_sha256 != hashlib.sha256(data).digest()
            or record.operation.is_sign != wants_sign
            or (purpose and record.purpose != purpose)
            or abs(record.time_ms - time.time() * 1000) > _MAX_CLOCK_SKEW_MS
        ):
            raise ClientError("RECORD_MISMATCH", "the record is not what was asked for")
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
        """Sign a digest or decrypt a ciphertext with an organisation key under a grant."""
        try:
            prepared = await self._stub.PrepareOperation(
                gateway_pb2.PrepareOperationRequest(
                    grant_id=grant_id, operation=operation, input=data, purpose=purpose
                ),
                metadata=self._metadata,
                timeout=30,
            )
        except grpc.aio.AioRpcError as exc:
            raise ClientError.from_rpc(exc) from None
        record = self._check_record(prepared.record, grant_id, operation, data, purpose)
        user_signature = await signing.sign(prepared.record)
        try:
            executed = await self._stub.ExecuteOperation(
                gateway_pb2.ExecuteOperationRequest(
                    record_id=prepared.record_id, user_signature=user_signature, input=data
                ),
                metadata=self._metadata,
                timeout=30,
            )
        except grpc.aio.AioRpcError as exc:
            raise ClientError.from_rpc(exc) from None
        if executed.receipt.record != prepared.record:
            raise ClientError("RECEIPT_MISMATCH", "the receipt is for another record")
        try:
            verify_receipt(
                executed.receipt, trust.ca_certificate, trust.log_public_key, trust.log_origin
            )
        except VerificationFailed as exc:
            raise ClientError(exc.reason, str(exc)) from None
        return Use(executed.result, executed.receipt, record)
