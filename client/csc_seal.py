"""Sealing PDFs through the gateway's CSC endpoint with pyHanko: what an application that
integrates mobilesign writes. It takes an OAuth 2.0 token with its client credentials, lets
pyHanko's own ``CSCSigner`` fetch the credential and call ``signatures/signHash``, and adds one
small piece, an authorisation manager: it asks ``credentials/authorize`` (the asynchronous
form) for exactly the hashes pyHanko is about to sign, then polls
``credentials/authorizeCheck`` until the user has approved on the phone.

Only the HTTP API is used here; nothing of the phone's SDK.
"""

from __future__ import annotations

import asyncio
import io
import ssl
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from pyhanko.pdf_utils import generic
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.pdf_utils.writer import PageObject, PdfFileWriter
from pyhanko.sign import fields, signers
from pyhanko.sign.signers.csc_signer import (
    CSCAuthorizationInfo,
    CSCAuthorizationManager,
    CSCCredentialInfo,
    CSCServiceSessionInfo,
    CSCSigner,
    fetch_certs_in_csc_credential,
)
from pyhanko.sign.validation import async_validate_pdf_signature
from pyhanko.sign.validation.status import PdfSignatureStatus
from pyhanko_certvalidator import ValidationContext

DER = Encoding.DER

SHA256 = "2.16.840.1.101.3.4.2.1"


class CscError(Exception):
    """A refusal by the CSC endpoint: its ``error``, ``reason`` and ``error_description``."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status = status
        self.error = str(body.get("error", ""))
        self.reason = str(body.get("reason", ""))
        super().__init__(f"{status} {self.error} ({self.reason}): {body.get('error_description')}")


def http_session(ca_pem_file: str) -> aiohttp.ClientSession:
    """An HTTP client that trusts only the CA in ``ca_pem_file`` for the endpoint's TLS."""
    context = ssl.create_default_context(cafile=ca_pem_file)
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context))


async def call(
    http: aiohttp.ClientSession, url: str, body: dict[str, Any], token: str = ""
) -> tuple[int, dict[str, Any]]:
    """POST ``body`` as JSON; returns (status, JSON answer), raising :class:`CscError` for a
    refusal."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.post(url, json=body, headers=headers) as response:
        answer = await response.json(content_type=None)
        if response.status >= 400:
            raise CscError(response.status, answer)
        return response.status, answer


async def access_token(
    http: aiohttp.ClientSession, base_url: str, client_id: str, client_secret: str
) -> str:
    """An access token for the application (OAuth 2.0 client credentials, RFC 6749 4.4)."""
    form = {
        "grant_type": "client_credentials",
        "client_id": client_id,
        "client_secret": client_secret,
    }
    async with http.post(f"{base_url}/oauth2/token", data=form) as response:
        answer = await response.json(content_type=None)
        if response.status != 200:
            raise CscError(response.status, answer)
        return str(answer["access_token"])


class PhoneApproval(CSCAuthorizationManager):
    """SCAL 2: a SAD for exactly the hashes about to be signed, once the user approved them."""

    def __init__(
        self,
        session_info: CSCServiceSessionInfo,
        credential_info: CSCCredentialInfo,
        http: aiohttp.ClientSession,
        *,
        description: str,
        label: str,
        timeout_seconds: float = 120.0,
        poll_seconds: float = 0.1,
    ) -> None:
        super().__init__(session_info, credential_info)
        self._http = http
        self._description = description
        self._label = label
        self._timeout = timeout_seconds
        self._poll = poll_seconds

    async def authorize_signature(self, hash_b64s: list[str]) -> CSCAuthorizationInfo:
        """Ask for approval of ``hash_b64s`` and wait (polling) until the SAD is given."""
        info = self.csc_session_info
        token = info.oauth_token or ""
        body = {
            "credentialID": info.credential_id,
            "numSignatures": len(hash_b64s),
            "hashes": hash_b64s,
            "hashAlgorithmOID": SHA256,
            "description": self._description,
            "clientData": self._label,
            "operationMode": "A",
        }
        status, answer = await call(
            self._http, info.endpoint_url("credentials/authorize"), body, token
        )
        deadline = time.monotonic() + self._timeout
        while status == 202:
            if time.monotonic() > deadline:
                raise TimeoutError("the user did not approve in time")
            await asyncio.sleep(self._poll)
            status, answer = await call(
                self._http,
                info.endpoint_url("credentials/authorizeCheck"),
                {"responseID": answer["responseID"]},
                token,
            )
        return self.parse_csc_auth_response(answer)


@dataclass(frozen=True)
class Credential:
    """A CSC credential of the application and what pyHanko fetched about it."""

    session_info: CSCServiceSessionInfo
    info: CSCCredentialInfo


async def credential(
    http: aiohttp.ClientSession, base_url: str, token: str, credential_id: str
) -> Credential:
    """The credential's certificate, chain and limits (``credentials/info``, by pyHanko)."""
    session_info = CSCServiceSessionInfo(
        service_url=base_url, credential_id=credential_id, oauth_token=token, api_ver="v2"
    )
    return Credential(session_info, await fetch_certs_in_csc_credential(http, session_info))


async def seal_pdf(
    http: aiohttp.ClientSession,
    found: Credential,
    pdf: bytes,
    *,
    description: str,
    label: str,
    field_name: str = "Seal",
) -> bytes:
    """``pdf`` with a PAdES signature by the credential's organisation key."""
    manager = PhoneApproval(
        found.session_info, found.info, http, description=description, label=label
    )
    signer = CSCSigner(http, manager)
    writer = IncrementalPdfFileWriter(io.BytesIO(pdf))
    meta = signers.PdfSignatureMetadata(
        field_name=field_name, md_algorithm="sha256", subfilter=fields.SigSeedSubFilter.PADES
    )
    out = await signers.PdfSigner(meta, signer=signer).async_sign_pdf(writer)
    return bytes(out.getbuffer())


async def validate(pdf: bytes, ca: bytes, *, crl: bytes) -> PdfSignatureStatus:
    """pyHanko's verdict on the PDF's one signature: trust only the CA certificate ``ca``, and
    take revocation from ``crl`` alone, failing hard without it (nothing fetched); both PEM or
    DER."""
    ca_der = x509.load_pem_x509_certificate(ca).public_bytes(DER) if ca.startswith(b"-----") else ca
    crl_der = x509.load_pem_x509_crl(crl).public_bytes(DER) if crl.startswith(b"-----") else crl
    context = ValidationContext(
        trust_roots=[asn1_x509.Certificate.load(ca_der)],
        crls=[crl_der],
        allow_fetching=False,
        revocation_mode="hard-fail",
    )
    (signature,) = PdfFileReader(io.BytesIO(pdf)).embedded_signatures
    return await async_validate_pdf_signature(signature, context)


def one_page_pdf(text: str) -> bytes:
    """A small one-page PDF (A4) showing ``text``, in Helvetica."""
    writer = PdfFileWriter()
    font = generic.DictionaryObject(
        {
            generic.pdf_name("/Type"): generic.pdf_name("/Font"),
            generic.pdf_name("/Subtype"): generic.pdf_name("/Type1"),
            generic.pdf_name("/BaseFont"): generic.pdf_name("/Helvetica"),
        }
    )
    escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
    content = generic.StreamObject(stream_data=f"BT /F1 14 Tf 72 770 Td ({escaped}) Tj ET".encode())
    page = PageObject(
        contents=writer.add_object(content),
        media_box=generic.ArrayObject([generic.NumberObject(n) for n in (0, 0, 595, 842)]),
        resources=generic.DictionaryObject(
            {
                generic.pdf_name("/Font"): generic.DictionaryObject(
                    {generic.pdf_name("/F1"): writer.add_object(font)}
                )
            }
        ),
    )
    writer.insert_page(page)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()
