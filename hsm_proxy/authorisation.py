"""The check next to the key: the HSM proxy uses an organisation key only for a service record
co-signed by a certified user and authorised by the gateway, once.

Every trust anchor is in the token itself: the user's certificate must be signed by a CA key
(purpose CA) held in this token, the user's key must be attested by the cosigner (a blob sealed
with the cosigner's sealing key, which only the cosigner can have made), and the gateway's
authorisation must be signed by the service key labelled ``authoriser_label``. A compromised
gateway therefore cannot use an organisation key without a record co-signed with a two-party key
the cosigner holds (even though it can have the CA certify any key), and a record cannot be used
twice or for another key, operation or input.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, utils

from hsm_proxy import keys
from hsm_proxy.errors import HsmProxyError
from hsm_proxy.replay import UsedRecords
from mobilesign import records
from mobilesign.errors import Kind
from mobilesign.v1 import hsm_pb2

#: How far a record's time may be from the proxy's clock.
MAX_RECORD_AGE_SECONDS = 300
MAX_FIELD_BYTES = 4096

KeyLister = Callable[[keys.Purpose], Awaitable[list[keys.KeyRecord]]]
#: Opens a blob sealed by the cosigner (with the cosigner's sealing key, whoever asks).
CosignerUnsealer = Callable[[bytes, bytes], Awaitable[bytes]]


def _load(spki: bytes) -> object:
    return serialization.load_der_public_key(spki)


class AuthorisationChecker:
    """Checks an :class:`OrganisationKeyAuthorisation` before an organisation key is used."""

    def __init__(
        self,
        list_keys: KeyLister,
        unseal_cosigner: CosignerUnsealer,
        used: UsedRecords,
        authoriser_label: str,
    ) -> None:
        self._list_keys = list_keys
        self._unseal_cosigner = unseal_cosigner
        self._used = used
        self._authoriser_label = authoriser_label
        # Public halves of token keys, read once: keys are never deleted or relabelled, so a
        # key seen stays valid; the CA list is read again only when no known CA key verifies.
        self._ca_cache: list[ec.EllipticCurvePublicKey] = []
        self._authoriser_cache: ec.EllipticCurvePublicKey | None = None

    async def _ca_keys(self) -> list[ec.EllipticCurvePublicKey]:
        found = []
        for record in await self._list_keys(keys.Purpose.CA):
            public = _load(record.spki)
            if isinstance(public, ec.EllipticCurvePublicKey):
                found.append(public)
        self._ca_cache = found
        return found

    async def _authoriser(self) -> ec.EllipticCurvePublicKey:
        if self._authoriser_cache is not None:
            return self._authoriser_cache
        for record in await self._list_keys(keys.Purpose.SERVICE):
            if record.label == self._authoriser_label:
                public = _load(record.spki)
                if isinstance(public, ec.EllipticCurvePublicKey):
                    self._authoriser_cache = public
                    return public
        raise HsmProxyError(
            Kind.DENIED,
            "GATEWAY_AUTHORISATION_INVALID",
            "no gateway authorisation key in the token",
        )

    @staticmethod
    def _issued_by_one_of(
        certificate: x509.Certificate, ca_keys: list[ec.EllipticCurvePublicKey]
    ) -> bool:
        for ca_key in ca_keys:
            try:
                ca_key.verify(
                    certificate.signature,
                    certificate.tbs_certificate_bytes,
                    ec.ECDSA(hashes.SHA256()),
                )
            except InvalidSignature:
                continue
            return True
        return False

    async def _certificate(self, der: bytes) -> x509.Certificate:
        try:
            certificate = x509.load_der_x509_certificate(der)
        except ValueError:
            raise HsmProxyError(
                Kind.DENIED, "USER_CERTIFICATE_UNTRUSTED", "the user certificate is malformed"
            ) from None
        if not self._issued_by_one_of(certificate, self._ca_cache) and not self._issued_by_one_of(
            certificate, await self._ca_keys()
        ):
            raise HsmProxyError(
                Kind.DENIED,
                "USER_CERTIFICATE_UNTRUSTED",
                "the user certificate is not from a CA in this token",
            )
        now = datetime.datetime.now(datetime.UTC)
        if not certificate.not_valid_before_utc <= now < certificate.not_valid_after_utc:
            raise HsmProxyError(
                Kind.DENIED, "USER_CERTIFICATE_EXPIRED", "the user certificate is not valid now"
            )
        try:
            usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
        except x509.ExtensionNotFound:
            raise HsmProxyError(
                Kind.DENIED, "USER_CERTIFICATE_UNTRUSTED", "the certificate has no key usage"
            ) from None
        if not (usage.digital_signature and usage.content_commitment):
            raise HsmProxyError(
                Kind.DENIED, "USER_CERTIFICATE_UNTRUSTED", "the certificate does not allow signing"
            )
        return certificate

    async def _check_attestation(self, user_key_id: str, attestation: bytes) -> None:
        # The CA key is used by the gateway, so a certificate proves nothing on its own; only
        # the cosigner can seal this, and it does so for keys it holds a share of.
        try:
            opened = await self._unseal_cosigner(attestation, records.KEY_ATTESTATION_AAD)
        except HsmProxyError as exc:
            if exc.reason != "SEALED_BLOB_INVALID":
                raise  # e.g. the HSM queue is full: not the attestation's fault
            opened = b""
        if not hmac.compare_digest(opened, records.key_attestation(user_key_id)):
            raise HsmProxyError(
                Kind.DENIED,
                "COSIGNER_ATTESTATION_INVALID",
                "the cosigner does not vouch for the user's key",
            )

    async def check(
        self,
        key_id: bytes,
        operation: records.Operation,
        data: bytes,
        authorisation: hsm_pb2.OrganisationKeyAuthorisation,
    ) -> str:
        """Refuse unless ``authorisation`` allows ``operation`` on ``data`` with this key, now,
        for the first time. The record id is consumed (durably) only once every check passed;
        it is returned."""
        if not authorisation.record:
            raise HsmProxyError(
                Kind.DENIED, "AUTHORISATION_REQUIRED", "organisation keys need a co-signed record"
            )
        if any(
            len(f) > MAX_FIELD_BYTES
            for f in (
                authorisation.record,
                authorisation.user_signature,
                authorisation.user_certificate,
                authorisation.gateway_signature,
            )
        ):
            raise HsmProxyError(
                Kind.DENIED, "RECORD_MALFORMED", "an authorisation field is too large"
            )
        try:
            record = records.decode_record(authorisation.record)
        except records.RecordError:
            raise HsmProxyError(
                Kind.DENIED, "RECORD_MALFORMED", "the service record is malformed"
            ) from None
        if record.organisation_key_id != key_id.hex():
            raise HsmProxyError(Kind.DENIED, "RECORD_KEY_MISMATCH", "the record names another key")
        if record.operation is not operation:
            raise HsmProxyError(
                Kind.DENIED, "RECORD_OPERATION_MISMATCH", "the record allows another operation"
            )
        if hashlib.sha256(data).digest() != record.input_sha256:
            raise HsmProxyError(
                Kind.DENIED, "RECORD_INPUT_MISMATCH", "the record is for other data"
            )
        if abs(time.time() * 1000 - record.time_ms) > MAX_RECORD_AGE_SECONDS * 1000:
            raise HsmProxyError(
                Kind.DENIED, "RECORD_STALE", "the record is too old or from the future"
            )
        certificate = await self._certificate(authorisation.user_certificate)
        user_key = certificate.public_key()
        if not isinstance(user_key, ed25519.Ed25519PublicKey) or not records.names_certificate(
            record, certificate
        ):
            raise HsmProxyError(
                Kind.DENIED, "RECORD_CERTIFICATE_MISMATCH", "the record names another certificate"
            )
        try:
            user_key.verify(authorisation.user_signature, authorisation.record)
        except InvalidSignature:
            raise HsmProxyError(
                Kind.DENIED, "USER_SIGNATURE_INVALID", "the user did not sign this record"
            ) from None
        await self._check_attestation(record.user_key_id, authorisation.cosigner_attestation)
        try:
            (await self._authoriser()).verify(
                authorisation.gateway_signature,
                records.authorisation_digest(authorisation.record, authorisation.user_signature),
                ec.ECDSA(utils.Prehashed(hashes.SHA256())),
            )
        except InvalidSignature:
            raise HsmProxyError(
                Kind.DENIED,
                "GATEWAY_AUTHORISATION_INVALID",
                "the gateway did not authorise this record",
            ) from None
        if not await self._used.consume(record.record_id, key_id.hex(), int(time.time())):
            raise HsmProxyError(
                Kind.DENIED, "AUTHORISATION_REPLAYED", "this record was already used"
            )
        return record.record_id

    async def failed_before_use(self, record_id: str) -> None:
        """The token did not act (busy, unavailable): the record may be presented again."""
        await self._used.release(record_id)
