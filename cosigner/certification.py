"""The personal-certificate application (flow S2), which goes phone -> cosigner -> RA: the
cosigner forwards the jointly signed CSR only for a key it holds a share of, enrolled with the
ticket the phone presents, and adds its attestation (user key, user, ticket); the RA checks
everything again and issues."""

from __future__ import annotations

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from cosigner.context import Cosigner
from cosigner.errors import CosignerError
from mobilesign import records, tickets
from mobilesign.errors import Kind
from mobilesign.v1 import cosigner_pb2 as pb
from mobilesign.v1 import ra_pb2

MAX_CSR_BYTES = 4096


def _joint_key_id(csr_der: bytes) -> str:
    if not csr_der or len(csr_der) > MAX_CSR_BYTES:
        raise CosignerError(Kind.INVALID, "CSR_MALFORMED", "the CSR is empty or too large")
    try:
        public = x509.load_der_x509_csr(csr_der).public_key()
    except (ValueError, TypeError, x509.InvalidVersion, UnsupportedAlgorithm):
        raise CosignerError(Kind.INVALID, "CSR_MALFORMED", "the CSR is not DER PKCS#10") from None
    if not isinstance(public, ed25519.Ed25519PublicKey):
        raise CosignerError(
            Kind.INVALID, "CSR_KEY_UNSUPPORTED", "a personal certificate is for a joint Ed25519 key"
        )
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


async def request_certificate(
    cosigner: Cosigner, request: pb.RequestPersonalCertificateRequest, now: int
) -> pb.RequestPersonalCertificateResponse:
    """Forward the phone's application to the RA with the cosigner's attestation (and the
    phone's proof of the activation code, which only the RA can check)."""
    ticket, csr_der = request.ticket, request.csr
    key_id = _joint_key_id(csr_der)
    claims = tickets.verify(ticket, await cosigner.registry.ticket_key(), now)
    key = await cosigner.store.get(key_id)
    if key is None or key.user_id != claims.user_id or key.ticket_id != claims.ticket_id:
        raise CosignerError(
            Kind.DENIED,
            "KEY_NOT_ENROLLED",
            "the cosigner holds no share of this key for this ticket",
        )
    attestation = records.KeyAttestation(key.key_id, key.user_id, key.ticket_id).encode()
    issued = await cosigner.registry.certify(
        ra_pb2.CertifyUserKeyRequest(
            ticket=ticket,
            csr=csr_der,
            attestation=attestation,
            application_proof=request.application_proof,
        )
    )
    return pb.RequestPersonalCertificateResponse(
        certificate=issued.certificate,
        ca_certificate=issued.ca_certificate,
        grant_key_spki=issued.grant_key_spki,
        answer_proof=issued.answer_proof,
    )
