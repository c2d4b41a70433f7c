"""The registration authority: decides who gets which certificate, then has the CA issue it.

- Organisation certificates (S1): an administrator asks; the key is generated in the HSM, the
  HSM signs a PKCS#10 request for it (proof that the token holds the key), and the RA checks that
  request before the CA issues.
- Personal certificates (S2): the phone sends the jointly signed PKCS#10 request with its
  enrolment ticket to the gateway's public edge. The RA checks the request's signature (made by
  phone and cosigner together, so it proves the two-party key exists), that the subject is the
  ticket's user, and asks the cosigner that it holds a share of exactly this key, enrolled with
  exactly this ticket. One certificate per ticket.
"""

from __future__ import annotations

import asyncio
import time

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from mobilesign import pkix, tickets
from mobilesign.ca import CertificateAuthority, Issued
from mobilesign.errors import Kind
from mobilesign.v1 import hsm_pb2
from server.cosigner_client import CosignerClient
from server.errors import GatewayError
from server.hsm_proxy_client import HsmClient
from server.organisations import OrganisationKey, OrganisationStore
from server.users import UserStore

MAX_CSR_BYTES = 4096


def _spki(key: x509.Certificate | x509.CertificateSigningRequest) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def parse_csr(der: bytes) -> x509.CertificateSigningRequest:
    """A PKCS#10 request whose signature verifies, or INVALID_ARGUMENT."""
    if not der or len(der) > MAX_CSR_BYTES:
        raise GatewayError(Kind.INVALID, "CSR_MALFORMED", "the CSR is empty or too large")
    try:
        csr = x509.load_der_x509_csr(der)
        valid = csr.is_signature_valid
    except (ValueError, TypeError, x509.InvalidVersion, UnsupportedAlgorithm):
        raise GatewayError(Kind.INVALID, "CSR_MALFORMED", "the CSR is not DER PKCS#10") from None
    if not valid:
        raise GatewayError(
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
        cosigner: CosignerClient,
        ticket_key_label: str,
    ) -> None:
        self._ca = ca
        self._users = users
        self._organisations = organisations
        self._hsm = hsm
        self._cosigner = cosigner
        self._ticket_key_label = ticket_key_label
        # Check-then-issue for one ticket must not interleave with another request for it.
        self._personal_lock = asyncio.Lock()
        self._organisation_lock = asyncio.Lock()

    async def create_organisation_key(
        self, organisation_id: str, label: str, algorithm: hsm_pb2.KeyAlgorithm.ValueType
    ) -> tuple[OrganisationKey, Issued, bytes]:
        """Generate an organisation key in the HSM, have it sign its CSR, and certify it."""
        organisation = await self._organisations.get(organisation_id)
        async with self._organisation_lock:
            if await self._organisations.key_by_label(label) is not None:
                raise GatewayError(
                    Kind.CONFLICT,
                    "LABEL_IN_USE",
                    "an organisation key has this label",
                )
            # A key left in the token by a crash before it was recorded is taken up again.
            key = await self._hsm.ensure_key(label, hsm_pb2.KEY_PURPOSE_ORGANISATION, algorithm)
            if key.algorithm != algorithm:
                raise GatewayError(Kind.CONFLICT, "LABEL_IN_USE", "the token has this label")
            csr_der = await self._hsm.certificate_request(
                key.key_id,
                pkix.name({"common_name": label, "organization_name": organisation.name}),
            )
            csr = parse_csr(csr_der)
            if _spki(csr) != key.public_key_spki:
                raise GatewayError(Kind.INTERNAL, "CSR_KEY_MISMATCH", "the CSR names another key")
            issued = await self._ca.issue_organisation(
                organisation=organisation.name,
                label=label,
                key_id=key.key_id,
                spki=key.public_key_spki,
                encipherment=isinstance(csr.public_key(), rsa.RSAPublicKey),
            )
            record = OrganisationKey(key.key_id, organisation_id, label, int(algorithm))
            await self._organisations.add_key(record, int(time.time()))
        return record, issued, csr_der

    async def _ticket(self, ticket: bytes) -> tickets.Claims:
        key = await self._hsm.ensure_key(self._ticket_key_label, hsm_pb2.KEY_PURPOSE_SERVICE)
        public = serialization.load_der_public_key(key.public_key_spki)
        assert isinstance(public, ec.EllipticCurvePublicKey)
        return tickets.verify(ticket, public, int(time.time()))

    async def request_personal_certificate(self, ticket: bytes, csr_der: bytes) -> Issued:
        """Check a jointly signed CSR against its ticket and the cosigner; issue once."""
        csr = parse_csr(csr_der)
        public = csr.public_key()
        if not isinstance(public, ed25519.Ed25519PublicKey):
            raise GatewayError(
                Kind.INVALID,
                "CSR_KEY_UNSUPPORTED",
                "a personal certificate is for a joint Ed25519 key",
            )
        claims = await self._ticket(ticket)
        expected = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, claims.user_id)])
        if csr.subject != expected:
            raise GatewayError(
                Kind.DENIED, "SUBJECT_MISMATCH", "the CSR subject must be CN=<the ticket's user>"
            )
        key_id = public.public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        ).hex()
        enrolled = await self._cosigner.key(key_id)
        if (
            enrolled is None
            or enrolled.user_id != claims.user_id
            or enrolled.enrolment_ticket_id != claims.ticket_id
        ):
            raise GatewayError(
                Kind.DENIED,
                "KEY_NOT_ENROLLED",
                "the cosigner holds no share of this key for this ticket",
            )
        async with self._personal_lock:
            state = await self._users.ticket_state(claims.ticket_id)
            # A validly signed ticket the gateway has no record of was not issued through it.
            if state is None or state.user_id != claims.user_id:
                raise GatewayError(
                    Kind.DENIED, "TICKET_UNKNOWN", "the gateway did not issue this ticket"
                )
            if state.certificate_serial is not None:
                raise GatewayError(
                    Kind.DENIED, "TICKET_USED", "a certificate was already issued for this ticket"
                )
            issued = await self._ca.issue_personal(
                user_id=claims.user_id, key_id=key_id, spki=_spki(csr)
            )
            await self._users.mark_ticket_certified(claims.ticket_id, issued.serial)
        return issued
