"""The check next to the key: the HSM proxy uses an organisation key only for a service record
co-signed by a certified user, under a grant the RA signed, already in the audit log, once, and
within the grant's quotas.

Every trust anchor is the proxy's own: the grant must be signed by a grant key (purpose GRANT)
held in this token, the user's certificate by a CA key (purpose CA) held in this token, the
user's key must be attested by the cosigner (a blob sealed with the cosigner's sealing key, which
only the cosigner can have made), and the record's log entry must be included in a tree the
proxy itself signed a checkpoint for, as the log's witness. The proxy counts each grant's uses
and keeps the RA's revocations itself. A compromised gateway therefore cannot use an
organisation key without a grant from the RA, beyond its quotas or after a revocation, without a
record co-signed with a two-party key the cosigner holds, without that record being in the
append-only log for every verifier to see, or twice, or for another key, operation or input.
"""

from __future__ import annotations

import datetime
import hashlib
import time
from collections.abc import Awaitable, Callable

from cachetools import LRUCache
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from hsm_proxy import keys
from hsm_proxy.errors import HsmProxyError
from hsm_proxy.uses import Use, UseStore
from mobilesign import auditlog, grants, records
from mobilesign.errors import Kind
from mobilesign.v1 import hsm_pb2

#: How far a record's time may be from the proxy's clock.
MAX_RECORD_AGE_SECONDS = 300
MAX_FIELD_BYTES = 4096
#: An inclusion proof in a tree of at most 2**64 entries has at most 64 hashes.
MAX_INCLUSION_HASHES = 64
#: Verified grants, certificates and attestations remembered (least recently used dropped).
VERIFIED_ENTRIES = 16_384

KeyLister = Callable[[keys.Purpose], Awaitable[list[keys.KeyRecord]]]
#: Opens a blob sealed by the cosigner (with the cosigner's sealing key, whoever asks).
CosignerUnsealer = Callable[[bytes, bytes], Awaitable[bytes]]
#: The root of a tree size the proxy signed a checkpoint for, or None (``Witness.root_at``).
WitnessedRoot = Callable[[int], Awaitable[bytes | None]]


def _load(spki: bytes) -> object:
    return serialization.load_der_public_key(spki)


class AuthorisationChecker:
    """Checks an :class:`OrganisationKeyAuthorisation` before an organisation key is used."""

    def __init__(
        self,
        list_keys: KeyLister,
        unseal_cosigner: CosignerUnsealer,
        uses: UseStore,
        witnessed_root: WitnessedRoot,
    ) -> None:
        self._list_keys = list_keys
        self._unseal_cosigner = unseal_cosigner
        self._uses = uses
        self._witnessed_root = witnessed_root
        # Public halves of token keys, read once: keys are never deleted or relabelled, so a
        # key seen stays valid; a list is read again only when none of its known keys verifies.
        self._ca_cache: list[ec.EllipticCurvePublicKey] = []
        self._grant_cache: list[ec.EllipticCurvePublicKey] = []
        # What verified once verifies for ever (the keys that signed or sealed it stay in the
        # token): signed grants, certificates' issuer signature and key usage (their validity
        # period is checked each time), and the cosigner's attestations.
        self._verified_grants: LRUCache[bytes, grants.Statement] = LRUCache(VERIFIED_ENTRIES)
        self._verified_certificates: LRUCache[bytes, x509.Certificate] = LRUCache(VERIFIED_ENTRIES)
        self._attested: LRUCache[bytes, records.KeyAttestation] = LRUCache(VERIFIED_ENTRIES)

    async def _token_keys(self, purpose: keys.Purpose) -> list[ec.EllipticCurvePublicKey]:
        found = []
        for record in await self._list_keys(purpose):
            public = _load(record.spki)
            if isinstance(public, ec.EllipticCurvePublicKey):
                found.append(public)
        return found

    async def _ca_keys(self) -> list[ec.EllipticCurvePublicKey]:
        self._ca_cache = await self._token_keys(keys.Purpose.CA)
        return self._ca_cache

    async def _grant(self, signed: bytes) -> grants.Statement:
        """The statement of a grant signed by a grant key in this token."""
        if not signed:
            raise HsmProxyError(
                Kind.DENIED, "GRANT_REQUIRED", "organisation keys need the grant the RA signed"
            )
        known = self._verified_grants.get(signed)
        if known is not None:
            return known
        try:
            try:
                statement = grants.verify(signed, self._grant_cache)
            except grants.GrantError as exc:
                if exc.kind is not Kind.DENIED:
                    raise  # malformed: no key would change that
                self._grant_cache = await self._token_keys(keys.Purpose.GRANT)
                statement = grants.verify(signed, self._grant_cache)
        except grants.GrantError as exc:
            # Every refusal of an authorisation is PERMISSION_DENIED, a malformed grant too.
            raise HsmProxyError(Kind.DENIED, exc.reason, exc.message) from None
        self._verified_grants[signed] = statement
        return statement

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
        certificate = self._verified_certificates.get(der)
        if certificate is None:
            certificate = await self._issued_certificate(der)
            self._verified_certificates[der] = certificate
        now = datetime.datetime.now(datetime.UTC)
        if not certificate.not_valid_before_utc <= now < certificate.not_valid_after_utc:
            raise HsmProxyError(
                Kind.DENIED, "USER_CERTIFICATE_EXPIRED", "the user certificate is not valid now"
            )
        return certificate

    async def _issued_certificate(self, der: bytes) -> x509.Certificate:
        """``der`` parsed, issued by a CA key in this token, for signing."""
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

    async def _check_attestation(self, record: records.ServiceRecord, attestation: bytes) -> None:
        # A certificate alone is the RA's word; only the cosigner can seal this, and it does so
        # for keys it holds a share of, naming the user each was enrolled for.
        attested = self._attested.get(attestation)
        if attested is None:
            try:
                opened = await self._unseal_cosigner(attestation, records.KEY_ATTESTATION_AAD)
                attested = records.decode_key_attestation(opened)
            except records.RecordError:
                attested = None
            except HsmProxyError as exc:
                if exc.reason != "SEALED_BLOB_INVALID":
                    raise  # e.g. the HSM queue is full: not the attestation's fault
                attested = None
            if attested is not None:
                self._attested[attestation] = attested
        if attested is None or attested.user_key_id != record.user_key_id:
            raise HsmProxyError(
                Kind.DENIED,
                "COSIGNER_ATTESTATION_INVALID",
                "the cosigner does not vouch for the user's key",
            )
        if attested.user_id != record.user_id:
            raise HsmProxyError(
                Kind.DENIED,
                "ATTESTATION_USER_MISMATCH",
                "the cosigner enrolled this key for another user",
            )

    async def check(
        self,
        key_id: bytes,
        operation: records.Operation,
        data: bytes,
        authorisation: hsm_pb2.OrganisationKeyAuthorisation,
    ) -> str:
        """Refuse unless ``authorisation`` allows ``operation`` on ``data`` with this key, now,
        for the first time, under an unrevoked grant with quota left. The record id is consumed
        and the grant's use counted (durably, together) only once every other check passed; the
        record id is returned."""
        if not authorisation.record:
            raise HsmProxyError(
                Kind.DENIED, "AUTHORISATION_REQUIRED", "organisation keys need a co-signed record"
            )
        if (
            any(
                len(f) > MAX_FIELD_BYTES
                for f in (
                    authorisation.record,
                    authorisation.user_signature,
                    authorisation.user_certificate,
                )
            )
            or len(authorisation.inclusion_proof) > MAX_INCLUSION_HASHES
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
        statement = await self._grant(authorisation.signed_grant)
        try:
            grants.check_use(statement, record, int(time.time()))
        except grants.GrantError as exc:
            raise HsmProxyError(exc.kind, exc.reason, exc.message) from None
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
        await self._check_attestation(record, authorisation.cosigner_attestation)
        await self._check_logged(authorisation)
        # Last, and in one transaction: revocations, replay, quotas, then the use is counted.
        await self._uses.consume(
            Use(
                record_id=record.record_id,
                key_id=key_id.hex(),
                grant_id=statement.grant_id,
                # names_certificate held: the record's serial is the certificate's, in its form.
                certificate_serial=record.certificate_serial,
                quota_total=statement.quota_total,
                quota_daily=statement.quota_daily,
            ),
            int(time.time()),
        )
        return record.record_id

    async def _check_logged(self, authorisation: hsm_pb2.OrganisationKeyAuthorisation) -> None:
        # No record in the log, no service: the entry must be in a tree this proxy witnessed.
        root = await self._witnessed_root(authorisation.tree_size)
        if root is None:
            raise HsmProxyError(
                Kind.DENIED,
                "RECORD_NOT_WITNESSED",
                "no checkpoint of that tree size was signed by the log's witness",
            )
        entry = records.RecordEntry(authorisation.record, authorisation.user_signature).encode()
        try:
            auditlog.verify_inclusion(
                index=authorisation.entry_index,
                size=authorisation.tree_size,
                leaf_hash=auditlog.leaf_hash(entry),
                proof=list(authorisation.inclusion_proof),
                root=root,
            )
        except auditlog.ProofError:
            raise HsmProxyError(
                Kind.DENIED, "RECORD_NOT_IN_LOG", "the record is not in the witnessed log"
            ) from None

    async def failed_before_use(self, record_id: str) -> None:
        """The token did not act (busy, unavailable): the record may be presented again, and
        the grant's use is not counted."""
        await self._uses.release(record_id)
