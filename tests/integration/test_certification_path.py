"""The certification path of a joint key (flow S2), phone -> cosigner -> RA: what the cosigner's
public edge refuses before it asks the RA; what the RA checks of the application the cosigner
forwards (only the cosigner may forward one, and its attestation must name exactly the CSR's
key, the ticket's user and the ticket); one certificate per ticket, and a second key for a user
only with a ticket that allows one or once the first is revoked; and the grant key the phone
receives with its certificate. Every refusal is checked by code and stable reason, and by the
CA's database, which gains no row.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from client import sdk
from client.certificates import (
    build_personal_csr,
    fetch_personal_certificate,
    request_personal_certificate,
)
from client.errors import ClientError
from client.keystore import Keystore
from mobilesign import activation, domains, grants, pkix, records, tickets
from mobilesign.testing import Deployment
from mobilesign.v1 import cosigner_pb2, cosigner_pb2_grpc, gateway_pb2, hsm_pb2, ra_pb2
from tests.certificate_checks import SoftwareSigner, spki_of
from tests.integration import escrow
from tests.integration.certificates import (
    ACTIVATION_CODES,
    PIN,
    Code,
    Pki,
    admin_stub,
    application_proof,
    apply_for_certificate,
    attestation_of,
    certify,
    certify_at_ra,
    cosigner_stub,
    expect_refusal,
    hsm_stub,
    issued_count,
    key_status,
    new_user,
    personal_subject,
    registration_stub,
    remember,
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


# Helpers ---------------------------------------------------------------------------------------


async def _ra_certify_calls(deployment: Deployment) -> int:
    """CertifyUserKey calls the RA has answered so far, from its JSON log. A marked call made
    now is logged after every call answered before it, so once its line is there the count is
    complete (the tests of this session run one at a time)."""
    marker = f"count-{secrets.token_hex(8)}"
    async with deployment.channel("ra", "admin") as channel:
        await registration_stub(channel).GetCaCertificate(
            gateway_pb2.GetCaCertificateRequest(), metadata=(("x-request-id", marker),)
        )
    deadline = time.monotonic() + 10
    while True:
        entries = [
            json.loads(line)
            for line in deployment.services["ra"].log.read_text().splitlines()
            if line.startswith("{")
        ]
        if any(entry.get("request_id") == marker for entry in entries):
            return sum(1 for entry in entries if entry.get("method") == "CertifyUserKey")
        assert time.monotonic() < deadline, "the RA did not log the marked call"
        await asyncio.sleep(0.05)


async def _create_user(deployment: Deployment, prefix: str) -> str:
    user_id = f"{prefix}-{secrets.token_hex(4)}"
    async with deployment.channel("ra", "admin") as channel:
        await admin_stub(channel).CreateUser(ra_pb2.CreateUserRequest(user_id=user_id))
    return user_id


async def _ticket(deployment: Deployment, user_id: str, *, additional_key: bool = False) -> bytes:
    async with deployment.channel("ra", "admin") as channel:
        reply = await admin_stub(channel).IssueEnrolmentTicket(
            ra_pb2.IssueEnrolmentTicketRequest(
                user_id=user_id, ttl_seconds=600, additional_key=additional_key
            )
        )
    claims = ra_pb2.EnrolmentTicketClaims.FromString(
        ra_pb2.SignedEnrolmentTicket.FromString(reply.ticket).claims
    )
    assert claims.additional_key is additional_key
    return remember(reply)


async def _enrolled(deployment: Deployment, ticket: bytes) -> Keystore:
    async with deployment.public_channel("cosigner") as channel:
        return await sdk.enrol(channel, ticket, PIN)


async def _enrol_new(deployment: Deployment, prefix: str) -> tuple[Keystore, bytes]:
    """A new user whose phone enrolled a key with an ordinary ticket (no certificate yet)."""
    user_id = await _create_user(deployment, prefix)
    ticket = await _ticket(deployment, user_id)
    return await _enrolled(deployment, ticket), ticket


async def _joint_csr(deployment: Deployment, keystore: Keystore) -> bytes:
    async with signing_session(deployment, keystore) as session:
        return await build_personal_csr(session, keystore)


async def _no_certificate(deployment: Deployment, key_id: str) -> None:
    assert await key_status(deployment, key_id) == ra_pb2.GetKeyStatusResponse()


async def _signed_as_the_ra(deployment: Deployment, claims: bytes) -> bytes:
    """A ticket over ``claims`` signed with the RA's ticket key (the test acting as the RA)."""
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


class _JointSigner:
    """Signs with the phone and the cosigner together."""

    def __init__(self, session: sdk.SigningSession) -> None:
        self._session = session

    @property
    def algorithm(self) -> pkix.SignatureAlgorithm:
        return pkix.SignatureAlgorithm.ED25519

    async def sign(self, data: bytes) -> bytes:
        return await self._session.sign(data)


async def _software_csr(
    user_id: str, key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
) -> bytes:
    """A CSR for ``CN=<user_id>`` whose signature verifies, for a key nobody enrolled."""
    return await pkix.build_csr(
        signer=SoftwareSigner(key),
        subject=pkix.name({"common_name": user_id}),
        subject_public_key_info=spki_of(key.public_key()),
    )


# The cosigner's public edge refuses before the RA is asked ------------------------------------


@dataclass(frozen=True)
class Phone:
    """An enrolled key (no certificate yet), its ticket and a jointly signed CSR for it."""

    deployment: Deployment
    keystore: Keystore
    ticket: bytes
    csr: bytes


async def _oversized_csr(phone: Phone) -> tuple[bytes, bytes]:
    return phone.ticket, phone.csr + b"\x00" * MAX_CSR_BYTES


async def _ec_csr(phone: Phone) -> tuple[bytes, bytes]:
    return phone.ticket, await _software_csr(
        phone.keystore.user_id, ec.generate_private_key(ec.SECP256R1())
    )


async def _forged_ticket(phone: Phone) -> tuple[bytes, bytes]:
    ticket = bytearray(phone.ticket)
    ticket[-1] ^= 0x01  # inside the ticket's ECDSA signature
    return bytes(ticket), phone.csr


async def _expired_ticket(phone: Phone) -> tuple[bytes, bytes]:
    """The phone's own ticket, expired an hour ago, genuinely signed with the RA's key."""
    claims = ra_pb2.EnrolmentTicketClaims.FromString(
        ra_pb2.SignedEnrolmentTicket.FromString(phone.ticket).claims
    )
    now = int(time.time())
    claims.issued_at_unix, claims.expires_at_unix = now - 7200, now - 3600
    encoded = claims.SerializeToString(deterministic=True)
    return await _signed_as_the_ra(phone.deployment, encoded), phone.csr


async def _this_ticket_for_another_user(phone: Phone) -> tuple[bytes, bytes]:
    """The id of the ticket the key was enrolled with, for another user, genuinely signed with
    the RA's key (which the RA never issues: ticket ids are unique)."""
    other, _ = await new_user(phone.deployment, "other")
    claims = ra_pb2.EnrolmentTicketClaims.FromString(
        ra_pb2.SignedEnrolmentTicket.FromString(phone.ticket).claims
    )
    claims.user_id = other
    encoded = claims.SerializeToString(deterministic=True)
    return await _signed_as_the_ra(phone.deployment, encoded), phone.csr


async def _other_users_ticket(phone: Phone) -> tuple[bytes, bytes]:
    _, ticket = await new_user(phone.deployment, "other")
    return ticket, phone.csr


async def _other_users_ticket_and_subject(phone: Phone) -> tuple[bytes, bytes]:
    """The joint key renamed to the other user, with their ticket."""
    other, ticket = await new_user(phone.deployment, "other")
    async with signing_session(phone.deployment, phone.keystore) as session:
        csr = await pkix.build_csr(
            signer=_JointSigner(session),
            subject=pkix.name({"common_name": other}),
            subject_public_key_info=spki_of(
                ed25519.Ed25519PublicKey.from_public_bytes(phone.keystore.group_public_key)
            ),
        )
    return ticket, csr


async def _key_not_held(phone: Phone) -> tuple[bytes, bytes]:
    return phone.ticket, await _software_csr(
        phone.keystore.user_id, ed25519.Ed25519PrivateKey.generate()
    )


EdgeCase = Callable[[Phone], Awaitable[tuple[bytes, bytes]]]


async def _empty_csr(phone: Phone) -> tuple[bytes, bytes]:
    return phone.ticket, b""


async def _garbage_csr(phone: Phone) -> tuple[bytes, bytes]:
    return phone.ticket, b"\x30\x82\x01\x00" + os.urandom(64)


async def _garbage_ticket(phone: Phone) -> tuple[bytes, bytes]:
    return b"\xff\x00 not a ticket", phone.csr


EDGE_REFUSALS = [
    pytest.param(_empty_csr, Code.INVALID_ARGUMENT, "CSR_MALFORMED", id="csr-empty"),
    pytest.param(_oversized_csr, Code.INVALID_ARGUMENT, "CSR_MALFORMED", id="csr-oversized"),
    pytest.param(_garbage_csr, Code.INVALID_ARGUMENT, "CSR_MALFORMED", id="csr-garbage"),
    pytest.param(_ec_csr, Code.INVALID_ARGUMENT, "CSR_KEY_UNSUPPORTED", id="csr-not-ed25519"),
    pytest.param(_forged_ticket, Code.PERMISSION_DENIED, "TICKET_FORGED", id="ticket-forged"),
    pytest.param(_expired_ticket, Code.PERMISSION_DENIED, "TICKET_EXPIRED", id="ticket-expired"),
    pytest.param(_garbage_ticket, Code.INVALID_ARGUMENT, "TICKET_MALFORMED", id="ticket-malformed"),
    pytest.param(
        _other_users_ticket, Code.PERMISSION_DENIED, "KEY_NOT_ENROLLED", id="other-users-ticket"
    ),
    pytest.param(
        _other_users_ticket_and_subject,
        Code.PERMISSION_DENIED,
        "KEY_NOT_ENROLLED",
        id="other-users-ticket-and-subject",
    ),
    pytest.param(
        _this_ticket_for_another_user,
        Code.PERMISSION_DENIED,
        "KEY_NOT_ENROLLED",
        id="this-ticket-for-another-user",
    ),
    pytest.param(_key_not_held, Code.PERMISSION_DENIED, "KEY_NOT_ENROLLED", id="key-not-held"),
]


@pytest.mark.parametrize(("build", "code", "reason"), EDGE_REFUSALS)
async def test_cosigner_refuses_bad_applications_without_asking_the_ra(
    deployment: Deployment, build: EdgeCase, code: grpc.StatusCode, reason: str
) -> None:
    keystore, ticket = await _enrol_new(deployment, "edge")
    phone = Phone(deployment, keystore, ticket, await _joint_csr(deployment, keystore))
    bad_ticket, bad_csr = await build(phone)
    issued, asked = issued_count(deployment), await _ra_certify_calls(deployment)
    await expect_refusal(apply_for_certificate(deployment, bad_ticket, bad_csr), code, reason)
    assert await _ra_certify_calls(deployment) == asked  # refused at the cosigner
    assert issued_count(deployment) == issued
    await _no_certificate(deployment, keystore.key_id)
    # The honest application with the same ticket still yields the certificate.
    reply = await apply_for_certificate(deployment, ticket, phone.csr)
    assert await _ra_certify_calls(deployment) == asked + 1
    assert issued_count(deployment) == issued + 1
    assert x509.load_der_x509_certificate(reply.certificate).subject == personal_subject(
        keystore.user_id
    )


async def test_a_key_with_another_keys_ticket_is_refused_at_the_cosigner(
    deployment: Deployment,
) -> None:
    """One user, two keys, each enrolled with its own ticket: neither key goes with the other's
    ticket, though the ticket names the right user."""
    user_id = await _create_user(deployment, "twokeys")
    first_ticket = await _ticket(deployment, user_id)
    second_ticket = await _ticket(deployment, user_id, additional_key=True)
    first = await _enrolled(deployment, first_ticket)
    second = await _enrolled(deployment, second_ticket)
    first_csr = await _joint_csr(deployment, first)
    second_csr = await _joint_csr(deployment, second)
    issued, asked = issued_count(deployment), await _ra_certify_calls(deployment)
    for ticket, csr in ((second_ticket, first_csr), (first_ticket, second_csr)):
        await expect_refusal(
            apply_for_certificate(deployment, ticket, csr),
            Code.PERMISSION_DENIED,
            "KEY_NOT_ENROLLED",
        )
    assert await _ra_certify_calls(deployment) == asked
    assert issued_count(deployment) == issued
    await _no_certificate(deployment, first.key_id)
    await _no_certificate(deployment, second.key_id)
    # Each with its own ticket is certified (the second ticket allows a second key).
    for keystore, ticket, csr in (
        (first, first_ticket, first_csr),
        (second, second_ticket, second_csr),
    ):
        reply = await apply_for_certificate(deployment, ticket, csr)
        certificate = x509.load_der_x509_certificate(reply.certificate)
        assert spki_of(certificate.public_key()) == spki_of(
            ed25519.Ed25519PublicKey.from_public_bytes(keystore.group_public_key)
        )
    assert issued_count(deployment) == issued + 2


# What the RA checks of the application the cosigner forwards ---------------------------------


@pytest.mark.parametrize("identity", ["gateway", "admin", "hsm-proxy"])
async def test_only_the_cosigner_may_forward_an_application(
    deployment: Deployment, pki: Pki, identity: str
) -> None:
    keystore, ticket = await _enrol_new(deployment, "forward")
    csr = await _joint_csr(deployment, keystore)
    attestation = attestation_of(keystore, ticket)
    issued = issued_count(deployment)
    await expect_refusal(
        certify_at_ra(deployment, ticket, csr, attestation, identity),
        Code.PERMISSION_DENIED,
        "CALLER_NOT_AUTHORISED",
    )
    assert issued_count(deployment) == issued
    await _no_certificate(deployment, keystore.key_id)
    # The very same application, from the cosigner, is granted.
    reply = await certify_at_ra(deployment, ticket, csr, attestation)
    assert issued_count(deployment) == issued + 1
    assert reply.ca_certificate == pki.root_der
    assert reply.grant_key_spki == await escrow.grant_key(deployment)
    certificate = x509.load_der_x509_certificate(reply.certificate)
    assert certificate.subject == personal_subject(keystore.user_id)
    assert await key_status(deployment, keystore.key_id) == ra_pb2.GetKeyStatusResponse(
        revoked=False, certificate_serial=serial_hex(certificate), certificate=reply.certificate
    )


@dataclass(frozen=True)
class Application:
    """An honest application for an enrolled key, and another user and ticket to name."""

    keystore: Keystore
    ticket: bytes
    other_user: str
    other_ticket: bytes  # another genuine ticket of the same user
    other_key_id: str  # another enrolled key


async def _sealed_attestation(deployment: Deployment, application: Application) -> bytes:
    """What the cosigner hands out to the gateway: the attestation sealed by the HSM."""
    async with deployment.channel("cosigner", "admin") as channel:
        reply = await cosigner_pb2_grpc.CosignerServiceStub(channel).GetKey(
            cosigner_pb2.GetKeyRequest(key_id=application.keystore.key_id)
        )
    return reply.attestation


def _attested(key: str, user: str, ticket: str) -> bytes:
    return records.KeyAttestation(key, user, ticket).encode()


def _honest(application: Application) -> bytes:
    return attestation_of(application.keystore, application.ticket)


AttestationCase = Callable[[Deployment, Application], Awaitable[bytes]]


async def _naming_another_user(deployment: Deployment, a: Application) -> bytes:
    return _attested(a.keystore.key_id, a.other_user, ticket_id_of(a.ticket))


async def _naming_another_ticket(deployment: Deployment, a: Application) -> bytes:
    return _attested(a.keystore.key_id, a.keystore.user_id, ticket_id_of(a.other_ticket))


async def _naming_another_key(deployment: Deployment, a: Application) -> bytes:
    return _attested(a.other_key_id, a.keystore.user_id, ticket_id_of(a.ticket))


async def _empty(deployment: Deployment, a: Application) -> bytes:
    return b""


async def _random(deployment: Deployment, a: Application) -> bytes:
    return os.urandom(96)


async def _truncated(deployment: Deployment, a: Application) -> bytes:
    return _honest(a)[:-1]


async def _trailing_octet(deployment: Deployment, a: Application) -> bytes:
    return _honest(a) + b"\x00"


async def _other_tag(deployment: Deployment, a: Application) -> bytes:
    return domains.ENROLMENT_TICKET + _honest(a)[len(domains.ENROLLED_KEY) :]


async def _sealed(deployment: Deployment, a: Application) -> bytes:
    return await _sealed_attestation(deployment, a)


ATTESTATION_REFUSALS = [
    pytest.param(_naming_another_user, id="another-user"),
    pytest.param(_naming_another_ticket, id="another-ticket"),
    pytest.param(_naming_another_key, id="another-key"),
    pytest.param(_empty, id="garbage-empty"),
    pytest.param(_random, id="garbage-random"),
    pytest.param(_truncated, id="garbage-truncated"),
    pytest.param(_trailing_octet, id="garbage-trailing-octet"),
    pytest.param(_other_tag, id="garbage-other-domain-tag"),
    pytest.param(_sealed, id="garbage-sealed-not-opened"),
]


@pytest.mark.parametrize("attestation", ATTESTATION_REFUSALS)
async def test_the_attestation_must_name_this_key_user_and_ticket(
    deployment: Deployment, attestation: AttestationCase
) -> None:
    user_id = await _create_user(deployment, "attested")
    ticket = await _ticket(deployment, user_id)
    other_ticket = await _ticket(deployment, user_id)
    keystore = await _enrolled(deployment, ticket)
    other_key, _ = await _enrol_new(deployment, "neighbour")
    application = Application(
        keystore, ticket, await _create_user(deployment, "other"), other_ticket, other_key.key_id
    )
    csr = await _joint_csr(deployment, keystore)
    bad = await attestation(deployment, application)
    assert bad != _honest(application)
    issued = issued_count(deployment)
    await expect_refusal(
        certify_at_ra(deployment, ticket, csr, bad), Code.PERMISSION_DENIED, "KEY_NOT_ENROLLED"
    )
    assert issued_count(deployment) == issued
    await _no_certificate(deployment, keystore.key_id)
    # Nothing was consumed: the honest attestation gets the certificate.
    await certify_at_ra(deployment, ticket, csr, _honest(application))
    assert issued_count(deployment) == issued + 1


# One certificate per ticket; a second key only when the ticket allows one ----------------------


async def test_one_certificate_per_ticket_whatever_the_cosigner_attests(
    deployment: Deployment,
) -> None:
    user_id = await _create_user(deployment, "onceonly")
    ticket = await _ticket(deployment, user_id)
    second_ticket = await _ticket(deployment, user_id, additional_key=True)
    first = await _enrolled(deployment, ticket)
    second = await _enrolled(deployment, second_ticket)
    await certify(deployment, first, ticket)
    issued = issued_count(deployment)
    first_csr = await _joint_csr(deployment, first)
    second_csr = await _joint_csr(deployment, second)
    # The used ticket again, for the same key, or for another key of the user that a cosigner
    # attests for it (which an honest cosigner never does).
    for csr, attestation in (
        (first_csr, attestation_of(first, ticket)),
        (second_csr, _attested(second.key_id, user_id, ticket_id_of(ticket))),
    ):
        await expect_refusal(
            certify_at_ra(deployment, ticket, csr, attestation),
            Code.PERMISSION_DENIED,
            "TICKET_USED",
        )
    assert issued_count(deployment) == issued
    await _no_certificate(deployment, second.key_id)
    # The second key with its own ticket (which allows another key) is certified.
    await certify(deployment, second, second_ticket)
    assert issued_count(deployment) == issued + 1


async def _revoke(deployment: Deployment, certificate: bytes) -> None:
    async with deployment.channel("ra", "admin") as channel:
        await admin_stub(channel).RevokeCertificate(
            ra_pb2.RevokeCertificateRequest(
                serial=serial_hex(x509.load_der_x509_certificate(certificate)),
                reason=gateway_pb2.REVOCATION_REASON_SUPERSEDED,
            )
        )


async def test_a_second_key_needs_a_ticket_that_allows_one_or_no_other_valid_key(
    deployment: Deployment,
) -> None:
    user_id = await _create_user(deployment, "phones")
    first_ticket = await _ticket(deployment, user_id)
    first = await _enrolled(deployment, first_ticket)
    first_certificate = (await certify(deployment, first, first_ticket)).certificate

    # An ordinary ticket enrols a second key at the cosigner, but the RA certifies no second
    # key for a user who holds a valid certificate.
    ordinary_ticket = await _ticket(deployment, user_id)
    ordinary = await _enrolled(deployment, ordinary_ticket)
    ordinary_csr = await _joint_csr(deployment, ordinary)
    issued = issued_count(deployment)

    async def refused() -> None:
        await expect_refusal(
            apply_for_certificate(deployment, ordinary_ticket, ordinary_csr),
            Code.PERMISSION_DENIED,
            "USER_HAS_KEY",
        )
        assert issued_count(deployment) == issued
        await _no_certificate(deployment, ordinary.key_id)

    await refused()

    # A ticket that allows another key: certified beside the first.
    additional_ticket = await _ticket(deployment, user_id, additional_key=True)
    additional = await _enrolled(deployment, additional_ticket)
    additional_certificate = (await certify(deployment, additional, additional_ticket)).certificate
    issued += 1
    assert issued_count(deployment) == issued
    assert not (await key_status(deployment, first.key_id)).revoked

    # Any one valid certificate is enough to refuse: revoking the first leaves the additional.
    await _revoke(deployment, first_certificate)
    await refused()
    # With every certificate of the user revoked, the refused ticket yields its certificate.
    await _revoke(deployment, additional_certificate)
    reply = await apply_for_certificate(deployment, ordinary_ticket, ordinary_csr)
    assert issued_count(deployment) == issued + 1
    certificate = x509.load_der_x509_certificate(reply.certificate)
    assert certificate.subject == personal_subject(user_id)
    assert await key_status(deployment, ordinary.key_id) == ra_pb2.GetKeyStatusResponse(
        revoked=False, certificate_serial=serial_hex(certificate), certificate=reply.certificate
    )


# The grant key the phone receives ---------------------------------------------------------------


async def test_certificate_response_carries_the_tokens_grant_key(
    deployment: Deployment, pki: Pki
) -> None:
    token_grant_key = await escrow.grant_key(deployment)
    # What the pki fixture's phones received through the SDK, and a raw answer.
    assert pki.alice.grant_key_spki == pki.bob.grant_key_spki == token_grant_key
    keystore, ticket = await _enrol_new(deployment, "grantkey")
    reply = await apply_for_certificate(deployment, ticket, await _joint_csr(deployment, keystore))
    assert reply.grant_key_spki == token_grant_key
    # It is neither the CA's key nor the ticket key ...
    async with deployment.channel("hsm-proxy", "admin") as channel:
        listed = await hsm_stub(channel).ListKeys(hsm_pb2.ListKeysRequest())
    purposes = {key.public_key_spki: key.purpose for key in listed.keys}
    assert purposes[token_grant_key] == hsm_pb2.KEY_PURPOSE_GRANT
    # ... and it verifies the grants the RA signs for this user.
    key = next(iter(pki.organisation_keys.values())).key
    now = int(time.time())
    async with deployment.channel("ra", "admin") as channel:
        created = await admin_stub(channel).CreateGrant(
            ra_pb2.CreateGrantRequest(
                user_id=keystore.user_id,
                key_id=key.key_id,
                operations=[gateway_pb2.OPERATION_SIGN_DIGEST],
                not_before_unix=now,
                not_after_unix=now + 600,
                quota_total=1,
                quota_daily=1,
            )
        )
    public = x509.load_der_x509_certificate(pki.root_der).public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    grant_key = serialization.load_der_public_key(reply.grant_key_spki)
    assert isinstance(grant_key, ec.EllipticCurvePublicKey)
    statement = grants.verify(created.grant.signed_grant, [grant_key])
    assert (statement.user_id, statement.key_id) == (keystore.user_id, key.key_id)
    with pytest.raises(grants.GrantError):
        grants.verify(created.grant.signed_grant, [public])
    # Fetched again from the gateway, the certificate comes without a grant key: the gateway is
    # not trusted to name it.
    async with deployment.public_channel("gateway") as channel:
        fetched = await fetch_personal_certificate(channel, keystore, trust_anchor=pki.root_der)
    assert fetched.certificate == reply.certificate
    assert fetched.grant_key_spki == b""


# The activation code: what only the phone was given -------------------------------------------


async def test_a_cosigner_holding_a_genuine_ticket_cannot_certify_a_key_of_its_own(
    deployment: Deployment,
) -> None:
    """Every ticket passes through the cosigner at enrolment; without the activation code, which
    the administrator hands the user and never the cosigner, it is worth nothing to it."""
    keystore, ticket = await _enrol_new(deployment, "stolen-ticket")
    honest_csr = await _joint_csr(deployment, keystore)
    own_key = ed25519.Ed25519PrivateKey.generate()
    own_csr = await _software_csr(keystore.user_id, own_key)
    own_key_id = spki_of(own_key.public_key())[-32:].hex()
    # It writes the attestation itself, and tries every proof it could have: none, random, and
    # the honest phone's proof (seen in flight) for the phone's own CSR.
    proofs = [b"", os.urandom(32), application_proof(ticket, honest_csr)]
    issued = issued_count(deployment)
    for proof in proofs:
        await expect_refusal(
            certify_at_ra(
                deployment,
                ticket,
                own_csr,
                _attested(own_key_id, keystore.user_id, ticket_id_of(ticket)),
                proof=proof,
            ),
            Code.PERMISSION_DENIED,
            "APPLICATION_PROOF_INVALID",
        )
    assert issued_count(deployment) == issued
    await _no_certificate(deployment, own_key_id)
    # The ticket is not used up: the phone's own application still succeeds.
    reply = await apply_for_certificate(deployment, ticket, honest_csr)
    assert issued_count(deployment) == issued + 1
    assert x509.load_der_x509_certificate(reply.certificate).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    ) == bytes.fromhex(keystore.key_id)


async def test_the_answer_proves_the_activation_code(deployment: Deployment, pki: Pki) -> None:
    keystore, ticket = await _enrol_new(deployment, "answer")
    reply = await apply_for_certificate(deployment, ticket, await _joint_csr(deployment, keystore))
    code = ACTIVATION_CODES[ticket]
    fields = (reply.certificate, reply.ca_certificate, reply.grant_key_spki)
    assert reply.answer_proof == activation.answer_proof(code, *fields)
    # A cosigner that swapped any part of the answer could not have made the proof.
    for index in range(3):
        changed = list(fields)
        changed[index] = fields[index] + b"\x00"
        assert reply.answer_proof != activation.answer_proof(code, *changed)
    assert reply.answer_proof != activation.answer_proof(os.urandom(16), *fields)


class _SwappingCosigner(cosigner_pb2_grpc.CosignerServiceServicer):
    """A cosigner stand-in that passes the application on and swaps one part of the answer
    (only this RPC is answered; the others are UNIMPLEMENTED, the base class's)."""

    def __init__(self, deployment: Deployment, field: str) -> None:
        self._deployment = deployment
        self._field = field

    async def RequestPersonalCertificate(
        self, request: cosigner_pb2.RequestPersonalCertificateRequest, context: object
    ) -> cosigner_pb2.RequestPersonalCertificateResponse:
        async with self._deployment.public_channel("cosigner") as channel:
            reply = await cosigner_stub(channel).RequestPersonalCertificate(request)
        if self._field == "grant_key_spki":
            reply.grant_key_spki = spki_of(ec.generate_private_key(ec.SECP256R1()).public_key())
        else:
            reply.answer_proof = bytes(32)
        return reply


@pytest.mark.parametrize("field", ["grant_key_spki", "answer_proof"])
async def test_the_phone_refuses_an_answer_changed_on_the_way(
    deployment: Deployment, pki: Pki, field: str
) -> None:
    keystore, ticket = await _enrol_new(deployment, "swapped")
    server = grpc.aio.server()
    cosigner_pb2_grpc.add_CosignerServiceServicer_to_server(
        _SwappingCosigner(deployment, field),  # type: ignore[abstract]
        server,
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with (
            signing_session(deployment, keystore) as session,
            grpc.aio.insecure_channel(f"127.0.0.1:{port}") as stand_in,
        ):
            with pytest.raises(ClientError) as info:
                await request_personal_certificate(
                    stand_in, session, keystore, ticket, ACTIVATION_CODES[ticket], pki.root_der
                )
    finally:
        await server.stop(None)
    assert info.value.reason == "ANSWER_PROOF_INVALID"
