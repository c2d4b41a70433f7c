"""The personal certificate: requested with a jointly signed CSR, checked before it is trusted."""

from __future__ import annotations

import datetime
from dataclasses import dataclass

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID

from client.errors import ClientError
from client.keystore import Keystore
from client.sdk import SigningSession
from mobilesign import activation, pkix
from mobilesign.v1 import cosigner_pb2, cosigner_pb2_grpc, gateway_pb2, gateway_pb2_grpc


@dataclass(frozen=True)
class Certificates:
    """A verified personal certificate and the CA certificate it chains to (DER), and the RA's
    grant key (DER SubjectPublicKeyInfo) as the RA sent it through the cosigner at enrolment,
    authenticated with the activation code; empty when fetched again from the gateway, which is
    not trusted to name it."""

    certificate: bytes
    ca_certificate: bytes
    grant_key_spki: bytes


class _JointSigner:
    """Signs a CSR with the two-party key: the signature is the proof of possession."""

    def __init__(self, session: SigningSession) -> None:
        self._session = session

    @property
    def algorithm(self) -> pkix.SignatureAlgorithm:
        return pkix.SignatureAlgorithm.ED25519

    async def sign(self, data: bytes) -> bytes:
        return await self._session.sign(data)


def joint_public_key_spki(keystore: Keystore) -> bytes:
    """The joint key as DER SubjectPublicKeyInfo (RFC 8410)."""
    return ed25519.Ed25519PublicKey.from_public_bytes(keystore.group_public_key).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


async def build_personal_csr(session: SigningSession, keystore: Keystore) -> bytes:
    """PKCS#10 for the joint key, subject CN=<user id>, co-signed with the cosigner."""
    return await pkix.build_csr(
        signer=_JointSigner(session),
        subject=pkix.name({"common_name": keystore.user_id}),
        subject_public_key_info=joint_public_key_spki(keystore),
    )


def verify_personal_certificate(
    keystore: Keystore,
    certificate: bytes,
    ca_certificate: bytes,
    trust_anchor: bytes | None = None,
    now: datetime.datetime | None = None,
) -> x509.Certificate:
    """Check a personal certificate before trusting it: it chains to the CA (which must equal
    ``trust_anchor`` when one is pinned), is valid now, certifies the joint key of
    ``keystore`` for ``CN=<user id>``, and allows digitalSignature and nonRepudiation."""
    if trust_anchor is not None and trust_anchor != ca_certificate:
        raise ClientError("UNTRUSTED_CA", "the CA certificate is not the pinned one")
    try:
        ca = x509.load_der_x509_certificate(ca_certificate)
        leaf = x509.load_der_x509_certificate(certificate)
    except ValueError:
        raise ClientError("CERTIFICATE_MALFORMED", "a certificate is not DER X.509") from None
    try:
        pkix.verify_issued_by(leaf, ca, now or datetime.datetime.now(datetime.UTC))
    except pkix.ChainError as exc:
        raise ClientError("CHAIN_INVALID", f"the certificate does not chain: {exc}") from None
    spki = leaf.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if spki != joint_public_key_spki(keystore):
        raise ClientError("KEY_MISMATCH", "the certificate is for another key")
    names = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if [n.value for n in names] != [keystore.user_id]:
        raise ClientError("SUBJECT_MISMATCH", "the certificate names another user")
    usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    if not (usage.digital_signature and usage.content_commitment):
        raise ClientError("KEY_USAGE_INVALID", "the certificate does not allow signing")
    return leaf


async def request_personal_certificate(
    cosigner: grpc.aio.Channel,
    session: SigningSession,
    keystore: Keystore,
    ticket: bytes,
    activation_code: bytes,
    trust_anchor: bytes | None = None,
) -> tuple[Certificates, bytes]:
    """Build and co-sign the CSR, submit it with the enrolment ticket and a proof of the
    ticket's activation code to the cosigner's public edge (which forwards it to the RA with its
    attestation of the key), verify the answer and the RA's proof over it.

    ``trust_anchor`` is the CA certificate the phone was provisioned with; without one, the CA
    certificate in the answer (which the activation code authenticates) is kept and pinned.
    Returns the verified certificates and the CSR that was submitted.
    """
    csr = await build_personal_csr(session, keystore)
    try:
        reply = await cosigner_pb2_grpc.CosignerServiceStub(cosigner).RequestPersonalCertificate(
            cosigner_pb2.RequestPersonalCertificateRequest(
                ticket=ticket,
                csr=csr,
                application_proof=activation.application_proof(activation_code, csr),
            ),
            timeout=30,
        )
    except grpc.aio.AioRpcError as exc:
        raise ClientError.from_rpc(exc) from None
    expected = activation.answer_proof(
        activation_code, reply.certificate, reply.ca_certificate, reply.grant_key_spki
    )
    if not activation.matches(expected, reply.answer_proof):
        raise ClientError(
            "ANSWER_PROOF_INVALID", "the certificate answer was not made by the RA for this code"
        )
    verify_personal_certificate(keystore, reply.certificate, reply.ca_certificate, trust_anchor)
    return Certificates(reply.certificate, reply.ca_certificate, reply.grant_key_spki), csr


async def fetch_personal_certificate(
    gateway: grpc.aio.Channel, keystore: Keystore, trust_anchor: bytes | None = None
) -> Certificates:
    """Fetch the key's current certificate and the CA certificate; verify them, and that the
    certificate is not revoked, before returning."""
    stub = gateway_pb2_grpc.GatewayServiceStub(gateway)
    try:
        reply = await stub.GetPersonalCertificate(
            gateway_pb2.GetPersonalCertificateRequest(key_id=keystore.key_id), timeout=30
        )
    except grpc.aio.AioRpcError as exc:
        raise ClientError.from_rpc(exc) from None
    leaf = verify_personal_certificate(
        keystore, reply.certificate, reply.ca_certificate, trust_anchor
    )
    try:
        status = await stub.GetCertificateStatus(
            gateway_pb2.GetCertificateStatusRequest(serial=format(leaf.serial_number, "x")),
            timeout=30,
        )
    except grpc.aio.AioRpcError as exc:
        raise ClientError.from_rpc(exc) from None
    if status.status != gateway_pb2.CERTIFICATE_STATUS_GOOD:
        raise ClientError("CERTIFICATE_REVOKED", "the certificate is not in good standing")
    return Certificates(reply.certificate, reply.ca_certificate, b"")
