"""The registration authority: decides who gets which certificate, then has the CA issue it.

- Organisation certificates (S1): an administrator asks; the key is generated in the HSM, the
  HSM signs a PKCS#10 request for it (proof that the token holds the key), and the RA checks that
  request before the CA issues.
- Personal certificates (S2): the phone sends the jointly signed PKCS#10 request with its
  enrolment ticket to the cosigner, which forwards it with its attestation of the key (the user
  and the ticket it enrolled the key for) over mutual TLS. The RA checks the request's signature
  (made by phone and cosigner together, so it proves the two-party key exists), that the subject
  is the ticket's user, that the attestation names exactly this key, this user and this ticket,
  that it issued the ticket, that the phone proved the ticket's activation code (which only the
  user was given, beside the ticket) over this CSR, and that the user holds no other unrevoked
  key unless the ticket allows another. One certificate per ticket; the answer carries the RA's
  proof of the same code, so that the cosigner cannot change it on the way back.

Revocations are stored by the CA, then pushed to the HSM proxy before they are acknowledged.
"""

from __future__ import annotations

import asyncio
import logging
import time

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from mobilesign import activation, pkix, records, tickets
from mobilesign.ca import CertificateAuthority, Issued, Status
from mobilesign.errors import Kind
from mobilesign.v1 import hsm_pb2
from ra.changes import ChangeFeed
from ra.errors import RaError
from ra.hsm_proxy_client import HsmClient
from ra.key_creations import KeyCreations, PendingCreation
from ra.organisations import Organisation, OrganisationKey, OrganisationStore
from ra.users import UserStore

MAX_CSR_BYTES = 4096
_log = logging.getLogger("mobilesign.ra.organisation_keys")


def _spki(key: x509.Certificate | x509.CertificateSigningRequest) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def parse_csr(der: bytes) -> x509.CertificateSigningRequest:
    """A PKCS#10 request whose signature verifies, or INVALID_ARGUMENT."""
    if not der or len(der) > MAX_CSR_BYTES:
        raise RaError(Kind.INVALID, "CSR_MALFORMED", "the CSR is empty or too large")
    try:
        csr = x509.load_der_x509_csr(der)
        valid = csr.is_signature_valid
    except (ValueError, TypeError, x509.InvalidVersion, UnsupportedAlgorithm):
        raise RaError(Kind.INVALID, "CSR_MALFORMED", "the CSR is not DER PKCS#10") from None
    if not valid:
        raise RaError(
            Kind.INVALID,
            "CSR_SIGNATURE_INVALID",
            "the CSR's signature does not verify (no proof of possession)",
        )
    return csr


class RegistrationAuthority:
    """Checks certificate requests and has the CA issue them."""

    def __init__(
        self,
        *,
        ca: CertificateAuthority,
        users: UserStore,
        organisations: OrganisationStore,
        hsm: HsmClient,
        ticket_key: hsm_pb2.KeyInfo,
        creations: KeyCreations,
        changes: ChangeFeed,
    ) -> None:
        self._ca = ca
        self._changes = changes
        self._creations = creations
        self._users = users
        self._organisations = organisations
        self._hsm = hsm
        public = serialization.load_der_public_key(ticket_key.public_key_spki)
        assert isinstance(public, ec.EllipticCurvePublicKey)
        self._ticket_key = public
        # Check-then-issue for one ticket must not interleave with another request for it.
        self._personal_lock = asyncio.Lock()
        self._organisation_lock = asyncio.Lock()

    async def create_organisation_key(
        self, organisation_id: str, label: str, algorithm: hsm_pb2.KeyAlgorithm.ValueType
    ) -> tuple[OrganisationKey, Issued, bytes]:
        """Generate an organisation key in the HSM, have it sign its CSR, and certify it.

        The creation is recorded before the token is asked, so that one cut short by a crash is
        finished at the next start (:meth:`reconcile_organisation_keys`); asking again with the
        same label, organisation and algorithm finishes it too."""
        organisation = await self._organisations.get(organisation_id)
        async with self._organisation_lock:
            if await self._organisations.key_by_label(label) is not None:
                raise RaError(
                    Kind.CONFLICT,
                    "LABEL_IN_USE",
                    "an organisation key has this label",
                )
            pending = await self._creations.get(label)
            if pending is not None and (pending.organisation_id, pending.algorithm) != (
                organisation_id,
                int(algorithm),
            ):
                raise RaError(
                    Kind.CONFLICT,
                    "LABEL_IN_USE",
                    "an interrupted creation of another key has this label",
                )
            key = await self._hsm.find_key(label, hsm_pb2.KEY_PURPOSE_ORGANISATION)
            if key is not None and key.algorithm != algorithm:
                raise RaError(Kind.CONFLICT, "LABEL_IN_USE", "the token has this label")
            if key is not None and pending is None:
                # A key in the token no creation accounts for (the start-up log names it):
                # generated for this label by the RA and never certified, so taken up here.
                _log.warning(
                    "adopting an organisation key no organisation held",
                    extra={"fields": {"key_id": key.key_id, "label": label}},
                )
            if pending is None:
                await self._creations.begin(
                    PendingCreation(label, organisation_id, int(algorithm), int(time.time()))
                )
            if key is None:
                key = await self._hsm.generate_key(
                    label, hsm_pb2.KEY_PURPOSE_ORGANISATION, algorithm
                )
            return await self._certify_organisation_key(organisation, key, label)

    async def _certify_organisation_key(
        self, organisation: Organisation, key: hsm_pb2.KeyInfo, label: str
    ) -> tuple[OrganisationKey, Issued, bytes]:
        """The token's CSR for ``key``, its certificate (issued once: a certificate issued
        before a crash is reused), then the key recorded and its creation forgotten."""
        csr_der = await self._hsm.certificate_request(
            key.key_id,
            pkix.name({"common_name": label, "organization_name": organisation.name}),
        )
        csr = parse_csr(csr_der)
        if _spki(csr) != key.public_key_spki:
            raise RaError(Kind.INTERNAL, "CSR_KEY_MISMATCH", "the CSR names another key")
        earlier = await self._ca.current_for_key(key.key_id)
        if earlier is not None and earlier.kind == "organisation" and earlier.revoked_at is None:
            issued = Issued(earlier.serial, earlier.der)
        else:
            issued = await self._ca.issue_organisation(
                organisation=organisation.name,
                label=label,
                key_id=key.key_id,
                spki=key.public_key_spki,
                encipherment=isinstance(csr.public_key(), rsa.RSAPublicKey),
            )
        record = OrganisationKey(key.key_id, organisation.organisation_id, label, key.algorithm)
        await self._organisations.add_key(record, int(time.time()))
        await self._creations.finish(label)
        await self._changes.publish(key_ids=[key.key_id])
        return record, issued, csr_der

    async def reconcile_organisation_keys(self) -> None:
        """At start: finish every creation cut short, and name in the log every organisation
        key in the token that no organisation holds (never deleting one: a key may be needed
        to decrypt data, and removing it is an administrator's decision)."""
        async with self._organisation_lock:
            token = await self._hsm.list_keys(hsm_pb2.KEY_PURPOSE_ORGANISATION)
            for pending in await self._creations.all():
                await self._finish_pending(pending, token)
            for key in token:
                if await self._organisations.key(key.key_id) is None:
                    _log.warning(
                        "organisation key in the token that no organisation holds; left in place",
                        extra={"fields": {"key_id": key.key_id, "label": key.label}},
                    )

    async def _finish_pending(self, pending: PendingCreation, token: list[hsm_pb2.KeyInfo]) -> None:
        fields: dict[str, object] = {
            "label": pending.label,
            "organisation_id": pending.organisation_id,
        }
        if await self._organisations.key_by_label(pending.label) is not None:
            await self._creations.finish(pending.label)  # recorded just before the crash
            return
        key = next((k for k in token if k.label == pending.label), None)
        if key is None or key.algorithm != pending.algorithm:
            # Cut short before the token made the key (or the label holds another key, which
            # the report of unknown keys names): nothing to adopt.
            _log.info(
                "organisation key creation cut short before the key existed",
                extra={"fields": fields},
            )
            await self._creations.finish(pending.label)
            return
        fields["key_id"] = key.key_id
        try:
            organisation = await self._organisations.get(pending.organisation_id)
            _, issued, _ = await self._certify_organisation_key(organisation, key, pending.label)
        except RaError as exc:
            # Left pending: the next start, or the administrator asking again, retries.
            _log.error(
                "could not adopt an organisation key left by an interrupted creation",
                extra={"fields": {**fields, "reason": exc.reason}},
            )
            return
        _log.warning(
            "adopted an organisation key left by an interrupted creation",
            extra={"fields": {**fields, "serial": issued.serial}},
        )

    async def request_personal_certificate(
        self, ticket: bytes, csr_der: bytes, attestation: bytes, application_proof: bytes
    ) -> tuple[Issued, bytes]:
        """Check a jointly signed CSR against its ticket, the cosigner's attestation of the key
        and the phone's proof of the ticket's activation code; issue once per ticket. Returns
        the certificate and the activation code (for the proof over the answer)."""
        csr = parse_csr(csr_der)
        public = csr.public_key()
        if not isinstance(public, ed25519.Ed25519PublicKey):
            raise RaError(
                Kind.INVALID,
                "CSR_KEY_UNSUPPORTED",
                "a personal certificate is for a joint Ed25519 key",
            )
        claims = tickets.verify(ticket, self._ticket_key, int(time.time()))
        expected = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, claims.user_id)])
        if csr.subject != expected:
            raise RaError(
                Kind.DENIED, "SUBJECT_MISMATCH", "the CSR subject must be CN=<the ticket's user>"
            )
        key_id = public.public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        ).hex()
        try:
            attested = records.decode_key_attestation(attestation)
        except records.RecordError:
            attested = None
        if attested != records.KeyAttestation(key_id, claims.user_id, claims.ticket_id):
            raise RaError(
                Kind.DENIED,
                "KEY_NOT_ENROLLED",
                "the cosigner does not attest this key for this user and ticket",
            )
        async with self._personal_lock:
            state = await self._users.ticket_state(claims.ticket_id)
            # A validly signed ticket the RA has no record of was not issued through it.
            if state is None or state.user_id != claims.user_id:
                raise RaError(Kind.DENIED, "TICKET_UNKNOWN", "the RA did not issue this ticket")
            proof = activation.application_proof(state.activation_code, csr_der)
            if not activation.matches(proof, application_proof):
                # The cosigner sees every ticket; only the phone was given the code.
                raise RaError(
                    Kind.DENIED,
                    "APPLICATION_PROOF_INVALID",
                    "the application does not prove the ticket's activation code",
                )
            if state.certificate_serial is not None:
                raise RaError(
                    Kind.DENIED, "TICKET_USED", "a certificate was already issued for this ticket"
                )
            if not state.additional_key and await self._holds_key(claims.user_id):
                raise RaError(
                    Kind.DENIED,
                    "USER_HAS_KEY",
                    "the user holds a certified key; the ticket does not allow another",
                )
            issued = await self._ca.issue_personal(
                user_id=claims.user_id, key_id=key_id, spki=_spki(csr)
            )
            await self._users.mark_ticket_certified(claims.ticket_id, issued.serial)
        await self._changes.publish(key_ids=[key_id])
        return issued, state.activation_code

    async def _holds_key(self, user_id: str) -> bool:
        for serial in await self._users.certified_serials(user_id):
            status, _ = await self._ca.status(serial)
            if status is Status.GOOD:
                return True
        return False

    async def revoke(self, serial: str, reason: str) -> None:
        """Revoke a certificate at the CA (CRL reissued), then at the HSM proxy, then at every
        gateway that keeps the key's status."""
        _, record = await self._ca.status(serial)
        if record is not None and record.revoked_at is not None:
            # Revoked before; the push to the proxy may be what failed, so it is repeated
            # before the CA says ALREADY_REVOKED.
            await self._push(record.kind, serial, record.subject_key_id)
        await self._ca.revoke(serial, reason)
        _, record = await self._ca.status(serial)
        assert record is not None
        await self._push(record.kind, serial, record.subject_key_id)
        await self._changes.publish(key_ids=[record.subject_key_id])

    async def _push(self, kind: str, serial: str, subject_key_id: str) -> None:
        if kind == "organisation":
            request = hsm_pb2.RecordRevocationRequest(organisation_key_id=subject_key_id)
        else:
            request = hsm_pb2.RecordRevocationRequest(certificate_serial=serial)
        await self._hsm.record_revocation(request)

    async def push_revocations(self, revoked: list[tuple[str, str, str]]) -> None:
        """Tell the HSM proxy again of every (kind, serial, key id) revoked (idempotent)."""
        for kind, serial, key_id in revoked:
            await self._push(kind, serial, key_id)
