"""Refused personal certificate requests issue nothing: bad CSRs, subjects, keys and tickets sent
by a phone to the cosigner's public edge (refused there or by the RA, whose refusal the cosigner
relays unchanged), a ticket the RA never issued, a used ticket, and concurrent requests with one
ticket. Each is checked by gRPC code and stable reason, and by the CA's database, which gains no
row.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
import pytest
from asn1crypto import csr as asn1_csr
from asn1crypto import keys as asn1_keys
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from client import sdk
from client.certificates import (
    build_personal_csr,
    joint_public_key_spki,
)
from client.keystore import Keystore
from mobilesign import pkix, records, tickets
from mobilesign.rpc.status import reason_of
from mobilesign.testing import Deployment
from mobilesign.v1 import cosigner_pb2, gateway_pb2, hsm_pb2, ra_pb2
from tests.certificate_checks import SoftwareSigner, spki_of
from tests.integration.certificates import (
    ORG_NAME,
    PIN,
    Code,
    Pki,
    application_proof,
    apply_for_certificate,
    attestation_of,
    certify,
    certify_at_ra,
    cosigner_stub,
    enrol,
    expect_refusal,
    fetch_root,
    hsm_stub,
    issued_count,
    key_status,
    new_user,
    personal_subject,
    public_stub,
    registration_stub,
    serial_hex,
    signing_session,
    ticket_id_of,
)

pytestmark = pytest.mark.integration
#: The RA's ticket key in the token (ra/config.py).
TICKET_KEY_LABEL = "ra-tickets"
MAX_CSR_BYTES = 4096


@pytest.fixture
def deployment(certificates_deployment: Deployment) -> Deployment:
    """The shared HSM proxy, RA/CA, gateway and cosigner."""
    return certificates_deployment


async def _no_certificate(deployment: Deployment, key_id: str) -> None:
    """Nothing was issued for ``key_id``: no personal certificate, not revoked, no serial."""
    async with deployment.public_channel("gateway") as channel:
        await expect_refusal(
            public_stub(channel).GetPersonalCertificate(
                gateway_pb2.GetPersonalCertificateRequest(key_id=key_id)
            ),
            Code.NOT_FOUND,
            "CERTIFICATE_NOT_FOUND",
        )
    async with deployment.channel("ra", "admin") as channel:
        status = await registration_stub(channel).GetKeyStatus(
            ra_pb2.GetKeyStatusRequest(key_id=key_id)
        )
    assert status == ra_pb2.GetKeyStatusResponse(revoked=False, certificate_serial="")


class _JointSigner:
    """A pkix signer whose signature is the phone's and the cosigner's together."""

    def __init__(self, session: sdk.SigningSession) -> None:
        self._session = session

    @property
    def algorithm(self) -> pkix.SignatureAlgorithm:
        return pkix.SignatureAlgorithm.ED25519

    async def sign(self, data: bytes) -> bytes:
        return await self._session.sign(data)


@dataclass(frozen=True)
class Attempt:
    """A phone with an enrolled key (no certificate yet), its ticket, and an open session."""

    deployment: Deployment
    keystore: Keystore
    ticket: bytes
    session: sdk.SigningSession

    @property
    def user_id(self) -> str:
        return self.keystore.user_id


async def _joint_csr(attempt: Attempt, subject: bytes | None = None) -> bytes:
    return await pkix.build_csr(
        signer=_JointSigner(attempt.session),
        subject=subject or pkix.name({"common_name": attempt.user_id}),
        subject_public_key_info=joint_public_key_spki(attempt.keystore),
    )


async def _flipped_signature(attempt: Attempt) -> tuple[bytes, bytes]:
    csr = bytearray(await _joint_csr(attempt))
    csr[-1] ^= 0x01  # the last octet of the signature BIT STRING
    return attempt.ticket, bytes(csr)


async def _joint_key_signed_by_another(attempt: Attempt) -> tuple[bytes, bytes]:
    """Names the joint key but is signed by another key: no proof of possession."""
    csr = await pkix.build_csr(
        signer=SoftwareSigner(ed25519.Ed25519PrivateKey.generate()),
        subject=pkix.name({"common_name": attempt.user_id}),
        subject_public_key_info=joint_public_key_spki(attempt.keystore),
    )
    return attempt.ticket, csr


async def _software_key(attempt: Attempt) -> tuple[bytes, bytes]:
    """A valid CSR for a key the cosigner holds no share of."""
    key = ed25519.Ed25519PrivateKey.generate()
    csr = await pkix.build_csr(
        signer=SoftwareSigner(key),
        subject=pkix.name({"common_name": attempt.user_id}),
        subject_public_key_info=spki_of(key.public_key()),
    )
    return attempt.ticket, csr


async def _ec_key(attempt: Attempt) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = await pkix.build_csr(
        signer=SoftwareSigner(key),
        subject=pkix.name({"common_name": attempt.user_id}),
        subject_public_key_info=spki_of(key.public_key()),
    )
    return attempt.ticket, csr


async def _other_subject(attempt: Attempt) -> tuple[bytes, bytes]:
    return attempt.ticket, await _joint_csr(attempt, pkix.name({"common_name": "mallory"}))


async def _extra_subject_attribute(attempt: Attempt) -> tuple[bytes, bytes]:
    subject = pkix.name({"common_name": attempt.user_id, "organization_name": ORG_NAME})
    return attempt.ticket, await _joint_csr(attempt, subject)


async def _other_users_ticket_own_subject(attempt: Attempt) -> tuple[bytes, bytes]:
    """The phone's own CSR with another user's ticket: the cosigner enrolled the key with
    another ticket, so it refuses before the RA sees it (the RA's own subject check on such a
    request is test_ra_checks_the_subject_against_the_ticket)."""
    _, ticket = await new_user(attempt.deployment, "other")
    return ticket, await _joint_csr(attempt)


async def _other_users_ticket_their_subject(attempt: Attempt) -> tuple[bytes, bytes]:
    """The joint key, renamed to the ticket's (other) user: the cosigner enrolled it for
    someone else, with another ticket."""
    other, ticket = await new_user(attempt.deployment, "other")
    return ticket, await _joint_csr(attempt, pkix.name({"common_name": other}))


async def _forged_ticket(attempt: Attempt) -> tuple[bytes, bytes]:
    ticket = bytearray(attempt.ticket)
    ticket[-1] ^= 0x01  # inside the ticket's ECDSA signature
    return bytes(ticket), await _joint_csr(attempt)


async def _garbage_ticket(attempt: Attempt) -> tuple[bytes, bytes]:
    return b"\xff\x00 not a ticket", await _joint_csr(attempt)


async def _garbage(attempt: Attempt) -> tuple[bytes, bytes]:
    return attempt.ticket, b"\x30\x82\x01\x00" + os.urandom(64)


async def _empty(attempt: Attempt) -> tuple[bytes, bytes]:
    return attempt.ticket, b""


async def _oversized(attempt: Attempt) -> tuple[bytes, bytes]:
    return attempt.ticket, await _joint_csr(attempt) + b"\x00" * MAX_CSR_BYTES


async def _truncated(attempt: Attempt) -> tuple[bytes, bytes]:
    return attempt.ticket, (await _joint_csr(attempt))[:-10]


async def _trailing_octets(attempt: Attempt) -> tuple[bytes, bytes]:
    return attempt.ticket, await _joint_csr(attempt) + b"\x00\x00"


async def _certificate_instead(attempt: Attempt) -> tuple[bytes, bytes]:
    return attempt.ticket, await fetch_root(attempt.deployment)


async def _jointly_signed_info(attempt: Attempt, version: int, spki: bytes) -> bytes:
    """A PKCS#10 request laid out by hand (asn1crypto), signed by phone and cosigner."""
    info = asn1_csr.CertificationRequestInfo(
        {
            "version": version,
            "subject": asn1_x509.Name.load(pkix.name({"common_name": attempt.user_id})),
            "subject_pk_info": asn1_keys.PublicKeyInfo.load(spki),
            "attributes": [],
        }
    )
    signature = await attempt.session.sign(info.dump())
    return bytes(
        asn1_csr.CertificationRequest(
            {
                "certification_request_info": info,
                "signature_algorithm": {"algorithm": "ed25519"},
                "signature": signature,
            }
        ).dump()
    )


async def _csr_version_2(attempt: Attempt) -> tuple[bytes, bytes]:
    """PKCS#10 knows only version 1 (0); this one says 2 (1), otherwise honest."""
    spki = joint_public_key_spki(attempt.keystore)
    return attempt.ticket, await _jointly_signed_info(attempt, 1, spki)


#: A SubjectPublicKeyInfo with an algorithm nobody implements (OID 1.2.3.4.5), 32-octet key.
UNKNOWN_SPKI = bytes.fromhex("302b300606042a030405032100") + bytes(range(32))


async def _unknown_key_algorithm(attempt: Attempt) -> tuple[bytes, bytes]:
    return attempt.ticket, await _jointly_signed_info(attempt, 0, UNKNOWN_SPKI)


BadRequest = Callable[[Attempt], Awaitable[tuple[bytes, bytes]]]
BAD_REQUESTS = [
    pytest.param(
        _flipped_signature,
        Code.INVALID_ARGUMENT,
        ("CSR_SIGNATURE_INVALID",),
        id="signature-flipped",
    ),
    pytest.param(
        _joint_key_signed_by_another,
        Code.INVALID_ARGUMENT,
        ("CSR_SIGNATURE_INVALID",),
        id="joint-key-signed-by-another-key",
    ),
    pytest.param(
        _software_key, Code.PERMISSION_DENIED, ("KEY_NOT_ENROLLED",), id="key-not-enrolled"
    ),
    pytest.param(_ec_key, Code.INVALID_ARGUMENT, ("CSR_KEY_UNSUPPORTED",), id="not-ed25519"),
    pytest.param(
        _other_subject, Code.PERMISSION_DENIED, ("SUBJECT_MISMATCH",), id="subject-other-user"
    ),
    pytest.param(
        _extra_subject_attribute,
        Code.PERMISSION_DENIED,
        ("SUBJECT_MISMATCH",),
        id="subject-extra-attribute",
    ),
    pytest.param(
        _other_users_ticket_own_subject,
        Code.PERMISSION_DENIED,
        ("KEY_NOT_ENROLLED",),
        id="other-users-ticket",
    ),
    pytest.param(
        _other_users_ticket_their_subject,
        Code.PERMISSION_DENIED,
        ("KEY_NOT_ENROLLED",),
        id="other-users-ticket-and-subject",
    ),
    pytest.param(_forged_ticket, Code.PERMISSION_DENIED, ("TICKET_FORGED",), id="ticket-forged"),
    pytest.param(
        _garbage_ticket, Code.INVALID_ARGUMENT, ("TICKET_MALFORMED",), id="ticket-malformed"
    ),
    pytest.param(_garbage, Code.INVALID_ARGUMENT, ("CSR_MALFORMED",), id="der-garbage"),
    pytest.param(_empty, Code.INVALID_ARGUMENT, ("CSR_MALFORMED",), id="der-empty"),
    pytest.param(_oversized, Code.INVALID_ARGUMENT, ("CSR_MALFORMED",), id="der-oversized"),
    pytest.param(_truncated, Code.INVALID_ARGUMENT, ("CSR_MALFORMED",), id="der-truncated"),
    pytest.param(
        _trailing_octets, Code.INVALID_ARGUMENT, ("CSR_MALFORMED",), id="der-trailing-octets"
    ),
    pytest.param(
        _certificate_instead, Code.INVALID_ARGUMENT, ("CSR_MALFORMED",), id="certificate-not-csr"
    ),
    pytest.param(
        _csr_version_2,
        Code.INVALID_ARGUMENT,
        ("CSR_MALFORMED",),
        id="csr-version-2",
    ),
    pytest.param(
        _unknown_key_algorithm,
        Code.INVALID_ARGUMENT,
        ("CSR_KEY_UNSUPPORTED", "CSR_MALFORMED"),
        id="unknown-key-algorithm",
    ),
]


@pytest.mark.parametrize(("build", "code", "reasons"), BAD_REQUESTS)
async def test_bad_personal_request_is_refused_and_issues_nothing(
    deployment: Deployment, build: BadRequest, code: grpc.StatusCode, reasons: tuple[str, ...]
) -> None:
    keystore, ticket = await enrol(deployment, "refused")
    issued = issued_count(deployment)
    async with signing_session(deployment, keystore) as session:
        attempt = Attempt(deployment, keystore, ticket, session)
        bad_ticket, bad_csr = await build(attempt)
        await expect_refusal(apply_for_certificate(deployment, bad_ticket, bad_csr), code, *reasons)
    assert issued_count(deployment) == issued
    await _no_certificate(deployment, keystore.key_id)
    # Nothing was consumed either: the ticket still yields its one certificate.
    personal = await certify(deployment, keystore, ticket)
    assert issued_count(deployment) == issued + 1
    certificate = x509.load_der_x509_certificate(personal.certificate)
    assert certificate.subject == personal_subject(keystore.user_id)


@pytest.mark.parametrize("attested", ["own-ticket", "ticket-presented"])
async def test_ra_checks_the_subject_against_the_ticket(
    deployment: Deployment, attested: str
) -> None:
    """Another user's ticket with the phone's own, jointly signed CSR, sent to the RA as the
    cosigner (which would have refused it: see other-users-ticket): whatever the attestation
    says, the subject is not the ticket's user."""
    keystore, ticket = await enrol(deployment, "subject")
    other, other_ticket = await new_user(deployment, "other")
    attestation = (
        attestation_of(keystore, ticket)
        if attested == "own-ticket"
        else records.KeyAttestation(keystore.key_id, other, ticket_id_of(other_ticket)).encode()
    )
    async with signing_session(deployment, keystore) as session:
        csr = await build_personal_csr(session, keystore)
    issued = issued_count(deployment)
    await expect_refusal(
        certify_at_ra(deployment, other_ticket, csr, attestation),
        Code.PERMISSION_DENIED,
        "SUBJECT_MISMATCH",
    )
    assert issued_count(deployment) == issued
    await _no_certificate(deployment, keystore.key_id)
    # Neither ticket was consumed.
    await certify(deployment, keystore, ticket)
    assert issued_count(deployment) == issued + 1


async def _ticket_signed_in_hsm(deployment: Deployment, user_id: str) -> bytes:
    """A well-formed ticket signed by the RA's ticket key through the HSM proxy (as only the RA
    may), which the RA itself never issued (nor recorded), for ``user_id``."""
    now = int(time.time())
    claims = tickets.encode(tickets.Claims(secrets.token_hex(16), user_id, now, now + 600, False))
    async with deployment.channel("hsm-proxy", "ra") as channel:
        hsm = hsm_stub(channel)
        listed = await hsm.ListKeys(hsm_pb2.ListKeysRequest(purpose=hsm_pb2.KEY_PURPOSE_TICKET))
        (key,) = [k for k in listed.keys if k.label == TICKET_KEY_LABEL]
        signed = await hsm.SignDigest(
            hsm_pb2.SignDigestRequest(
                key_id=key.key_id,
                mechanism=hsm_pb2.SIGNATURE_MECHANISM_ECDSA_SHA256,
                digest=tickets.signing_digest(claims),
            )
        )
    return tickets.assemble(claims, signed.signature)


async def test_ticket_the_ra_never_issued_yields_no_certificate(
    deployment: Deployment, pki: Pki
) -> None:
    # (``pki`` made sure the RA is up, with its ticket key in the token.)
    user_id = f"ghost-{secrets.token_hex(4)}"  # never registered with the RA
    ticket = await _ticket_signed_in_hsm(deployment, user_id)
    async with deployment.public_channel("cosigner") as channel:
        keystore = await sdk.enrol(channel, ticket, PIN)
    issued = issued_count(deployment)
    refusals = []
    async with signing_session(deployment, keystore) as session:
        for _ in range(2):
            csr = await build_personal_csr(session, keystore)
            try:
                await apply_for_certificate(deployment, ticket, csr)
            except grpc.aio.AioRpcError as exc:
                refusals.append((exc.code(), reason_of(exc)))
    # The RA has no record of this ticket: it issues nothing for it.
    assert refusals == [(Code.PERMISSION_DENIED, "TICKET_UNKNOWN")] * 2
    assert issued_count(deployment) == issued
    await _no_certificate(deployment, keystore.key_id)


async def test_used_ticket_yields_no_second_certificate(deployment: Deployment) -> None:
    keystore, ticket = await enrol(deployment, "once")
    first = await certify(deployment, keystore, ticket)
    serial = serial_hex(x509.load_der_x509_certificate(first.certificate))
    issued = issued_count(deployment)
    async with signing_session(deployment, keystore) as session:
        fresh_csr = await build_personal_csr(session, keystore)
    for csr in (first.csr, fresh_csr):
        await expect_refusal(
            apply_for_certificate(deployment, ticket, csr), Code.PERMISSION_DENIED, "TICKET_USED"
        )
    async with deployment.public_channel("gateway") as channel:
        current = await public_stub(channel).GetPersonalCertificate(
            gateway_pb2.GetPersonalCertificateRequest(key_id=keystore.key_id)
        )
    assert issued_count(deployment) == issued
    assert current.certificate == first.certificate
    assert await key_status(deployment, keystore.key_id) == ra_pb2.GetKeyStatusResponse(
        revoked=False, certificate_serial=serial, certificate=first.certificate
    )


async def test_concurrent_requests_with_one_ticket_issue_one_certificate(
    deployment: Deployment,
) -> None:
    keystore, ticket = await enrol(deployment, "race")
    async with signing_session(deployment, keystore) as session:
        csrs = [await build_personal_csr(session, keystore) for _ in range(6)]
    issued = issued_count(deployment)
    async with deployment.public_channel("cosigner") as channel:
        stub = cosigner_stub(channel)
        results = await asyncio.gather(
            *(
                stub.RequestPersonalCertificate(
                    cosigner_pb2.RequestPersonalCertificateRequest(
                        ticket=ticket, csr=csr, application_proof=application_proof(ticket, csr)
                    )
                )
                for csr in csrs
            ),
            return_exceptions=True,
        )
    granted = [r for r in results if isinstance(r, cosigner_pb2.RequestPersonalCertificateResponse)]
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(granted) == 1
    assert len(refused) == len(csrs) - 1
    assert {(e.code(), reason_of(e)) for e in refused} == {(Code.PERMISSION_DENIED, "TICKET_USED")}
    assert issued_count(deployment) == issued + 1
