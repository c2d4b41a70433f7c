"""A PDF sealed through the CSC endpoint by pyHanko's own CSCSigner, approved and co-signed on a
(simulated) phone, then validated by pyHanko's validator against the organisation CA; and every
way of asking wrongly, each refused in the CSC form with nothing signed or counted."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import io
import secrets
import urllib.request
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from asn1crypto import algos
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from pyhanko.pdf_utils.reader import PdfFileReader

from client import csc_seal
from mobilesign.testing import Deployment
from mobilesign.v1 import csc_pb2, csc_pb2_grpc, gateway_pb2, ra_pb2
from tests.integration import csc, escrow

pytestmark = pytest.mark.integration

SIGN = gateway_pb2.OPERATION_SIGN_DIGEST
ECDSA_SHA256 = "1.2.840.10045.4.3.2"
RSASSA_PSS = "1.2.840.113549.1.1.10"
#: SADs live this long here, so that one can be seen to expire.
SAD_SECONDS = 4


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """Four services with the CSC endpoint on, short-lived SADs, and the gateway's metrics."""
    deployment = Deployment(
        tmp_path_factory.mktemp("csc"),
        extra_env={
            "MOBILESIGN_GATEWAY_CSC_SAD_SECONDS": str(SAD_SECONDS),
            "MOBILESIGN_GATEWAY_METRICS_LISTEN": "127.0.0.1:0",
        },
    )
    deployment.start_all()
    yield deployment
    deployment.stop_all()


async def test_pyhanko_seals_a_pdf_that_pyhankos_validator_trusts(deployment: Deployment) -> None:
    organisation = await escrow.organisation(deployment, "sealer")
    phone = await escrow.phone(deployment, organisation, "sealer")
    try:
        grant = await escrow.grant(deployment, phone.user_id, organisation.seal, [SIGN])
        app = await csc.register(deployment, "Contract desk", [grant.grant_id])
        size_before = await escrow.log_size(deployment)
        pdf = csc_seal.one_page_pdf("Contract between ACME and its supplier")
        async with csc.http(deployment) as http:
            token = await csc_seal.access_token(http, app.base_url, app.client_id, app.secret)
            found = await csc_seal.credential(http, app.base_url, token, grant.grant_id)
            async with csc.approving(phone, organisation) as approved:
                sealed = await csc_seal.seal_pdf(
                    http, found, pdf, description="seal the contract", label="contract.pdf"
                )
        # pyHanko's validator, against the organisation CA only, with the RA's current CRL.
        async with deployment.public_channel("gateway") as channel:
            crl = (await escrow.public(channel).GetCrl(gateway_pb2.GetCrlRequest())).crl
        status = await csc_seal.validate(sealed, organisation.trust.ca_certificate, crl=crl)
        details = status.pretty_print_details()
        assert status.intact, details
        assert status.valid, details
        assert status.trusted, details
        (signature,) = PdfFileReader(io.BytesIO(sealed)).embedded_signatures
        # The same check fails on a changed contract.
        forged = sealed.replace(b"ACME and its supplier", b"ACME and its rival!!!")
        assert forged != sealed
        assert not (
            await csc_seal.validate(forged, organisation.trust.ca_certificate, crl=crl)
        ).intact
        assert status.signing_cert.dump() == organisation.seal.certificate
        # One approval, one record, one use: in the log, with a receipt the phone verifies.
        (record,) = approved
        use = await phone.gateway.result_of(record, trust=organisation.trust)
        assert use.result == signature.signer_info["signature"].native
        assert use.record.purpose == "Contract desk: seal the contract"
        assert use.record.input_sha256 == hashlib.sha256(record.digest).digest()
        # Entries: the co-signed record and its outcome.
        assert await escrow.log_size(deployment) == size_before + 2
        state = await escrow.grant_state(deployment, grant.grant_id)
        assert state is not None
        assert state.used_total == 1
    finally:
        await phone.close()


@dataclasses.dataclass
class Setting:
    """A phone with a grant, an application registered for it, its token and an HTTP client."""

    deployment: Deployment
    organisation: escrow.Organisation
    phone: escrow.Phone
    grant: gateway_pb2.Grant
    app: csc.App
    token: str
    http: aiohttp.ClientSession

    async def counted(self) -> tuple[int, int]:
        """(log size, the grant's uses): what a refusal must leave alone."""
        state = await escrow.grant_state(self.deployment, self.grant.grant_id)
        assert state is not None
        return await escrow.log_size(self.deployment), state.used_total

    async def post(self, method: str, body: Any, token: str | None = None) -> tuple[int, Any]:
        """A CSC call with the application's token (or ``token``)."""
        chosen = self.token if token is None else token
        return await csc.post(self.http, self.app, method, body, chosen)

    def authorize_body(self, digests: list[bytes], **more: Any) -> dict[str, Any]:
        """A credentials/authorize request for ``digests``."""
        return {
            "credentialID": self.grant.grant_id,
            "numSignatures": len(digests),
            "hashes": [csc.b64(d) for d in digests],
            "hashAlgorithmOID": csc_seal.SHA256,
            **more,
        }

    async def authorised(self, digests: list[bytes]) -> str:
        """A SAD for ``digests``, approved on the phone."""
        async with csc.approving(self.phone, self.organisation):
            status, answer = await self.post("credentials/authorize", self.authorize_body(digests))
        assert status == 200, answer
        return str(answer["SAD"])

    def sign_body(self, sad: str, digests: list[bytes], **more: Any) -> dict[str, Any]:
        """A signatures/signHash request for ``digests`` with ``sad``."""
        return {
            "credentialID": self.grant.grant_id,
            "SAD": sad,
            "hashes": [csc.b64(d) for d in digests],
            "hashAlgorithmOID": csc_seal.SHA256,
            "signAlgo": ECDSA_SHA256,
            **more,
        }


@pytest.fixture
async def setting(deployment: Deployment) -> AsyncIterator[Setting]:
    """A fresh organisation, phone, grant and application for one test."""
    organisation = await escrow.organisation(deployment, f"org-{secrets.token_hex(3)}")
    phone = await escrow.phone(deployment, organisation, "csc")
    grant = await escrow.grant(deployment, phone.user_id, organisation.seal, [SIGN])
    app = await csc.register(deployment, "Bad cases", [grant.grant_id])
    async with csc.http(deployment) as http:
        token = await csc_seal.access_token(http, app.base_url, app.client_id, app.secret)
        yield Setting(deployment, organisation, phone, grant, app, token, http)
    await phone.close()


def _refused(answered: tuple[int, Any], status: int, error: str, reason: str) -> None:
    code, answer = answered
    assert (code, answer.get("error"), answer.get("reason")) == (status, error, reason), answer
    assert answer.get("error_description")


DIGEST = hashlib.sha256(b"the document").digest()
OTHER = hashlib.sha256(b"another document").digest()


async def test_a_sad_serves_its_own_hashes_once(setting: Setting) -> None:
    sad = await setting.authorised([DIGEST])
    before = await setting.counted()
    for wrong in ([OTHER], [DIGEST, DIGEST]):
        _refused(
            await setting.post("signatures/signHash", setting.sign_body(sad, wrong)),
            403,
            "access_denied",
            "SAD_HASH_MISMATCH",
        )
    assert await setting.counted() == before
    status, answer = await setting.post("signatures/signHash", setting.sign_body(sad, [DIGEST]))
    assert status == 200, answer
    (signature,) = answer["signatures"]
    public_key = x509.load_der_x509_certificate(setting.organisation.seal.certificate).public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    public_key.verify(base64.b64decode(signature), DIGEST, ec.ECDSA(Prehashed(hashes.SHA256())))
    after = await setting.counted()
    assert after == (before[0] + 2, before[1] + 1)
    _refused(
        await setting.post("signatures/signHash", setting.sign_body(sad, [DIGEST])),
        400,
        "invalid_request",
        "SAD_USED",
    )
    assert await setting.counted() == after


async def test_an_expired_sad_signs_nothing(setting: Setting) -> None:
    sad = await setting.authorised([DIGEST])
    before = await setting.counted()
    await asyncio.sleep(SAD_SECONDS + 1)
    _refused(
        await setting.post("signatures/signHash", setting.sign_body(sad, [DIGEST])),
        400,
        "invalid_request",
        "SAD_EXPIRED",
    )
    assert await setting.counted() == before


async def test_a_grant_revoked_after_approval_signs_nothing(setting: Setting) -> None:
    sad = await setting.authorised([DIGEST])
    before = await setting.counted()
    async with setting.deployment.channel("ra") as channel:
        await escrow.admin(channel).RevokeGrant(
            ra_pb2.RevokeGrantRequest(grant_id=setting.grant.grant_id)
        )
    _refused(
        await setting.post("signatures/signHash", setting.sign_body(sad, [DIGEST])),
        403,
        "access_denied",
        "GRANT_REVOKED",
    )
    # Nor is the phone asked again.
    _refused(
        await setting.post("credentials/authorize", setting.authorize_body([DIGEST])),
        403,
        "access_denied",
        "GRANT_REVOKED",
    )
    assert await setting.phone.gateway.approvals() == []
    assert await setting.counted() == before


async def test_an_application_reaches_only_its_own_credentials(setting: Setting) -> None:
    other_phone = await escrow.phone(setting.deployment, setting.organisation, "other")
    try:
        other_grant = await escrow.grant(
            setting.deployment, other_phone.user_id, setting.organisation.seal, [SIGN]
        )
        other = await csc.register(setting.deployment, "Other desk", [other_grant.grant_id])
        other_token = await csc_seal.access_token(
            setting.http, other.base_url, other.client_id, other.secret
        )
        sad = await setting.authorised([DIGEST])
        before = await setting.counted()
        status, listed = await setting.post("credentials/list", {}, other_token)
        assert (status, listed) == (200, {"credentialIDs": [other_grant.grant_id]})
        for method, body in (
            ("credentials/info", {"credentialID": setting.grant.grant_id}),
            ("credentials/authorize", setting.authorize_body([DIGEST])),
            ("signatures/signHash", setting.sign_body(sad, [DIGEST])),
        ):
            _refused(
                await setting.post(method, body, other_token),
                403,
                "access_denied",
                "CREDENTIAL_NOT_ALLOWED",
            )
        # Another application's SAD, even on the caller's own credential, is no SAD at all.
        stolen = {**setting.sign_body(sad, [DIGEST]), "credentialID": other_grant.grant_id}
        _refused(
            await setting.post("signatures/signHash", stolen, other_token),
            403,
            "access_denied",
            "SAD_INVALID",
        )
        assert await other_phone.gateway.approvals() == []
        assert await setting.counted() == before
    finally:
        await other_phone.close()


async def test_tokens_and_client_credentials_are_checked(setting: Setting) -> None:
    before = await setting.counted()
    app = setting.app
    for token in ("", "not-a-token", "x" * 200):
        status, answer = await setting.post("credentials/list", {}, token)
        assert (status, answer["error"]) == (401, "invalid_token"), answer
    with pytest.raises(csc_seal.CscError) as caught:
        await csc_seal.access_token(setting.http, app.base_url, app.client_id, "wrong")
    assert (caught.value.status, caught.value.error) == (401, "invalid_client")
    async with setting.http.post(
        f"{app.base_url}/oauth2/token",
        data={"grant_type": "password", "client_id": app.client_id, "client_secret": app.secret},
    ) as response:
        assert response.status == 400
        assert (await response.json())["error"] == "unsupported_grant_type"
    # A revoked application: its token and its secret stop working at once.
    async with setting.deployment.channel("gateway") as channel:
        await csc_pb2_grpc.CscAdminServiceStub(channel).RevokeApplication(
            csc_pb2.RevokeApplicationRequest(client_id=app.client_id)
        )
    _refused(await setting.post("credentials/list", {}), 401, "invalid_token", "TOKEN_INVALID")
    with pytest.raises(csc_seal.CscError) as caught:
        await csc_seal.access_token(setting.http, app.base_url, app.client_id, app.secret)
    assert caught.value.error == "invalid_client"
    assert await setting.counted() == before


def _malformed(setting: Setting, case: str) -> tuple[str, Any]:
    """(method, body) of a malformed request."""
    authorize = setting.authorize_body([DIGEST])
    sign = setting.sign_body("s" * 43, [DIGEST])
    cases: dict[str, tuple[str, Any]] = {
        "not JSON": ("credentials/authorize", b"{not json"),
        "not an object": ("credentials/authorize", b"[1, 2]"),
        "no credential": ("credentials/authorize", {"numSignatures": 1, "hashes": []}),
        "count": ("credentials/authorize", {**authorize, "numSignatures": 2}),
        "count type": ("credentials/authorize", {**authorize, "numSignatures": True}),
        "base64": ("credentials/authorize", {**authorize, "hashes": ["!!"]}),
        "short hash": ("credentials/authorize", {**authorize, "hashes": [csc.b64(b"short")]}),
        "SHA-1": ("credentials/authorize", {**authorize, "hashAlgorithmOID": "1.3.14.3.2.26"}),
        "description": ("credentials/authorize", {**authorize, "description": "a\nb"}),
        "too many": ("credentials/authorize", setting.authorize_body([DIGEST] * 17)),
        "too large": ("credentials/authorize", {**authorize, "pad": "x" * 100_000}),
        "unknown response": ("credentials/authorizeCheck", {"responseID": "0" * 32}),
        "response type": ("credentials/authorizeCheck", {"responseID": 7}),
        "certificates": ("credentials/info", {"credentialID": "0" * 32, "certificates": "all"}),
        "RSA for EC": ("signatures/signHash", {**sign, "signAlgo": "1.2.840.113549.1.1.11"}),
        "unknown SAD": ("signatures/signHash", sign),
        "method": ("signatures/unknown", {}),
    }
    return cases[case]


@pytest.mark.parametrize(
    ("case", "status", "reason"),
    [
        ("not JSON", 400, "MALFORMED_REQUEST"),
        ("not an object", 400, "MALFORMED_REQUEST"),
        ("no credential", 400, "MALFORMED_REQUEST"),
        ("count", 400, "SIGNATURE_COUNT_INVALID"),
        ("count type", 400, "MALFORMED_REQUEST"),
        ("base64", 400, "BAD_BASE64"),
        ("short hash", 400, "DIGEST_LENGTH"),
        ("SHA-1", 400, "HASH_ALGORITHM_UNSUPPORTED"),
        ("description", 400, "DESCRIPTION_INVALID"),
        ("too many", 400, "SIGNATURE_COUNT_INVALID"),
        ("too large", 400, "MESSAGE_TOO_LARGE"),
        ("unknown response", 400, "APPROVAL_NOT_FOUND"),
        ("response type", 400, "MALFORMED_REQUEST"),
        ("certificates", 400, "MALFORMED_REQUEST"),
        ("RSA for EC", 400, "SIGN_ALGORITHM_UNSUPPORTED"),
        ("unknown SAD", 403, "SAD_INVALID"),
        ("method", 400, "METHOD_UNKNOWN"),
    ],
)
async def test_malformed_requests_are_refused_in_the_csc_form(
    setting: Setting, case: str, status: int, reason: str
) -> None:
    before = await setting.counted()
    method, body = _malformed(setting, case)
    error = "invalid_request" if status == 400 else "access_denied"
    _refused(await setting.post(method, body), status, error, reason)
    assert await setting.phone.gateway.approvals() == []
    assert await setting.counted() == before


async def test_a_get_is_refused_in_the_csc_form(setting: Setting) -> None:
    async with setting.http.get(f"{setting.app.base_url}/csc/v2/credentials/list") as response:
        answered = (response.status, await response.json())
    _refused(answered, 400, "invalid_request", "METHOD_NOT_ALLOWED")


async def test_a_declined_approval_gives_no_sad(setting: Setting) -> None:
    before = await setting.counted()
    async with csc.approving(setting.phone, setting.organisation, decline=True):
        answered = await setting.post("credentials/authorize", setting.authorize_body([DIGEST]))
    _refused(answered, 403, "access_denied", "APPROVAL_DECLINED")
    assert await setting.counted() == before


async def test_the_asynchronous_form_answers_at_once_and_the_client_polls(
    setting: Setting,
) -> None:
    status, answer = await setting.post(
        "credentials/authorize",
        setting.authorize_body([DIGEST], operationMode="A", description="Q3 invoice"),
    )
    assert status == 202, answer
    response_id = answer["responseID"]
    again = await setting.post("credentials/authorizeCheck", {"responseID": response_id})
    assert again == (202, {"responseID": response_id})
    (approval,) = await setting.phone.gateway.approvals()
    assert (approval.application, approval.purpose, list(approval.digests)) == (
        "Bad cases",
        "Bad cases: Q3 invoice",
        [DIGEST],
    )
    await setting.phone.gateway.approve(
        setting.phone.signing, approval, trust=setting.organisation.trust
    )
    status, authorised = await setting.post(
        "credentials/authorizeCheck", {"responseID": response_id}
    )
    assert status == 200, authorised
    assert authorised["SAD"]
    assert 0 < authorised["expiresIn"] <= SAD_SECONDS
    # The SAD is given once.
    _refused(
        await setting.post("credentials/authorizeCheck", {"responseID": response_id}),
        400,
        "invalid_request",
        "SAD_ALREADY_ISSUED",
    )


def _pss_params(salt: int) -> str:
    params = algos.RSASSAPSSParams(
        {
            "hash_algorithm": {"algorithm": "sha256"},
            "mask_gen_algorithm": {"algorithm": "mgf1", "parameters": {"algorithm": "sha256"}},
            "salt_length": salt,
        }
    )
    return csc.b64(params.dump())


async def test_an_rsa_key_signs_rsassa_pss_with_the_parameters_it_uses(setting: Setting) -> None:
    rsa_grant = await escrow.grant(
        setting.deployment, setting.phone.user_id, setting.organisation.encryption, [SIGN]
    )
    app = await csc.register(setting.deployment, "RSA desk", [rsa_grant.grant_id])
    token = await csc_seal.access_token(setting.http, app.base_url, app.client_id, app.secret)
    rsa_setting = dataclasses.replace(setting, grant=rsa_grant, app=app, token=token)
    status, info = await rsa_setting.post("credentials/info", {"credentialID": rsa_grant.grant_id})
    assert status == 200, info
    assert (info["key"]["algo"], info["key"]["len"]) == ([RSASSA_PSS], 2048)
    sad = await rsa_setting.authorised([DIGEST])
    before = await rsa_setting.counted()
    for algorithm, params, reason in (
        (RSASSA_PSS, _pss_params(20), "SIGN_ALGORITHM_UNSUPPORTED"),  # another salt length
        (RSASSA_PSS, None, "MALFORMED_REQUEST"),  # PSS without its parameters
        ("1.2.840.113549.1.1.11", None, "SIGN_ALGORITHM_UNSUPPORTED"),  # PKCS#1 v1.5
    ):
        body = rsa_setting.sign_body(sad, [DIGEST], signAlgo=algorithm)
        if params is not None:
            body["signAlgoParams"] = params
        _refused(
            await rsa_setting.post("signatures/signHash", body), 400, "invalid_request", reason
        )
    assert await rsa_setting.counted() == before
    body = rsa_setting.sign_body(sad, [DIGEST], signAlgo=RSASSA_PSS, signAlgoParams=_pss_params(32))
    status, answer = await rsa_setting.post("signatures/signHash", body)
    assert status == 200, answer
    public_key = x509.load_der_x509_certificate(
        setting.organisation.encryption.certificate
    ).public_key()
    assert isinstance(public_key, rsa.RSAPublicKey)
    public_key.verify(
        base64.b64decode(answer["signatures"][0]),
        DIGEST,
        padding.PSS(padding.MGF1(hashes.SHA256()), 32),
        Prehashed(hashes.SHA256()),
    )


def _scrape(deployment: Deployment) -> str:
    address = deployment.address("gateway", "metrics")
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as reply:
        return str(reply.read().decode())


async def test_the_endpoint_counts_its_requests_by_path_status_and_reason(
    setting: Setting,
) -> None:
    _refused(
        await setting.post("signatures/signHash", setting.sign_body("s" * 43, [DIGEST])),
        403,
        "access_denied",
        "SAD_INVALID",
    )
    scraped = await asyncio.to_thread(_scrape, setting.deployment)
    assert (
        'mobilesign_rpc_requests_total{code="403",method="/csc/v2/signatures/signHash",'
        'reason="SAD_INVALID",service="csc.v2"}'
    ) in scraped
    assert 'method="/oauth2/token",reason="",service="csc.v2"}' in scraped
    assert setting.token not in scraped
