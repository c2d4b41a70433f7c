"""The CSC API v2 over HTTPS (aiohttp): ``oauth2/token`` (client credentials), ``info``,
``credentials/list``, ``credentials/info``, ``credentials/authorize`` (with the asynchronous
form and ``credentials/authorizeCheck``) and ``signatures/signHash``.

Every method is a POST with a JSON body (``oauth2/token`` also takes a form, as RFC 6749 has
it) and answers JSON; a refusal is ``{"error", "error_description"}`` as the CSC specification
has it, plus ``reason``, the stable reason the gRPC API would give. One table maps an error's
kind to the HTTP status and CSC error code. Field names of API v2 (``hashes``,
``hashAlgorithmOID``) are taken, and those of v1 (``hash``, ``hashAlgo``) too, which some
clients (pyHanko's ``CSCSigner``) still send.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware
from asn1crypto import algos
from cryptography import x509

from mobilesign.errors import Error, Kind
from mobilesign.hosting import metrics
from mobilesign.hosting.interceptor import PeerCounter, host_address
from mobilesign.rpc.status import retry_delay
from mobilesign.v1 import gateway_pb2
from server.csc.applications import Application, Applications
from server.csc.approvals import Approvals, Authorised
from server.errors import GatewayError
from server.ra_client import Registry

_log = logging.getLogger("mobilesign.csc")

PREFIX = "/csc/v2"
SHA256 = "2.16.840.1.101.3.4.2.1"
ECDSA_SHA256 = "1.2.840.10045.4.3.2"
RSASSA_PSS = "1.2.840.113549.1.1.10"
P256 = "1.2.840.10045.3.1.7"
#: The ``service`` label of the endpoint's requests in ``mobilesign_rpc_requests_total``.
METRICS_SERVICE = "csc.v2"
METHODS = (
    "credentials/list",
    "credentials/info",
    "credentials/authorize",
    "credentials/authorizeCheck",
    "signatures/signHash",
)

_PATHS = frozenset({"/oauth2/token", f"{PREFIX}/info", *(f"{PREFIX}/{m}" for m in METHODS)})

#: The one mapping from an error's kind to the HTTP status and the CSC (OAuth 2.0) error code.
HTTP: dict[Kind, tuple[int, str]] = {
    Kind.INVALID: (400, "invalid_request"),
    Kind.UNAUTHENTICATED: (401, "invalid_token"),
    Kind.DENIED: (403, "access_denied"),
    Kind.NOT_FOUND: (400, "invalid_request"),
    Kind.CONFLICT: (400, "invalid_request"),
    Kind.PRECONDITION: (400, "invalid_request"),
    Kind.OUT_OF_RANGE: (400, "invalid_request"),
    Kind.EXHAUSTED: (429, "temporarily_unavailable"),
    Kind.UNAVAILABLE: (503, "temporarily_unavailable"),
    Kind.TIMEOUT: (504, "temporarily_unavailable"),
    Kind.ABORTED: (409, "temporarily_unavailable"),
    Kind.INTERNAL: (500, "server_error"),
}
#: Reasons whose CSC error code is more specific than their kind's (RFC 6749 section 5.2).
_CODES = {
    "CLIENT_AUTHENTICATION_FAILED": "invalid_client",
    "GRANT_TYPE_UNSUPPORTED": "unsupported_grant_type",
}


@dataclass(frozen=True)
class Settings:
    """What the endpoint tells clients and how long it lets them wait."""

    #: Seconds ``credentials/authorize`` (synchronous form) waits for the phone.
    wait_seconds: float
    #: Largest request body accepted, in bytes.
    max_request_bytes: int
    #: Requests in flight from one address (IPv4, or IPv6 /64); beyond it 429
    #: ``TOO_MANY_RPCS_FROM_PEER``.
    max_requests_per_peer: int = 32
    #: The ``oauth2`` base URI ``info`` names (empty: this endpoint's own).
    base_url: str = ""


class _Refusal(web.Response):
    """A CSC error response that remembers its stable reason (for the log and metrics)."""

    reason_code = ""


def _error_response(error: Error) -> web.Response:
    status, code = HTTP[error.kind]
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else {}
    delay = retry_delay(error.kind, error.reason)
    if delay is not None:  # the gRPC API's RetryInfo, as HTTP has it
        headers["Retry-After"] = str(math.ceil(delay))
    body = {
        "error": _CODES.get(error.reason, code),
        "error_description": error.message,
        "reason": error.reason,
    }
    response = _Refusal(
        text=json.dumps(body), status=status, headers=headers, content_type="application/json"
    )
    response.reason_code = error.reason
    return response


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure in the CSC form; a request line in the log for every call."""
    started = time.perf_counter()
    try:
        response = await handler(request)
    except Error as exc:
        response = _error_response(exc)
    except web.HTTPRequestEntityTooLarge:
        response = _error_response(
            GatewayError(Kind.INVALID, "MESSAGE_TOO_LARGE", "the request body is too large")
        )
    except web.HTTPNotFound:
        response = _error_response(
            GatewayError(Kind.NOT_FOUND, "METHOD_UNKNOWN", "no such CSC method")
        )
    except web.HTTPMethodNotAllowed:
        response = _error_response(
            GatewayError(Kind.INVALID, "METHOD_NOT_ALLOWED", "CSC methods are POST")
        )
    except Exception as exc:  # the client learns nothing of it; the log has the type only
        _log.error(
            "csc request failed",
            extra={"fields": {"path": request.path, "error": type(exc).__name__}},
        )
        response = _error_response(GatewayError(Kind.INTERNAL, "INTERNAL", "internal error"))
    seconds = time.perf_counter() - started
    reason = getattr(response, "reason_code", "")
    # Counted with the RPCs: the method is the CSC path, the code the HTTP status.
    method = request.path if request.path in _PATHS else "unknown"
    metrics.rpc_done(METRICS_SERVICE, method, str(response.status), reason, seconds)
    _log.info(
        "csc",
        extra={
            "fields": {
                "path": method,
                "status": response.status,
                "reason": reason,
                "ms": round(seconds * 1000, 2),
            }
        },
    )
    return response


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json(loads=json.loads)
    except (ValueError, UnicodeDecodeError):
        raise GatewayError(Kind.INVALID, "MALFORMED_REQUEST", "the body is not JSON") from None
    if not isinstance(body, dict):
        raise GatewayError(Kind.INVALID, "MALFORMED_REQUEST", "the body is not a JSON object")
    return body


def _field(body: dict[str, Any], kind: type, *names: str, required: bool = True) -> Any:
    """The first of ``names`` present in ``body`` (v2 spelling first), of type ``kind``."""
    for name in names:
        if name in body:
            value = body[name]
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise GatewayError(Kind.INVALID, "MALFORMED_REQUEST", f"{name} has the wrong type")
            return value
    if required:
        raise GatewayError(Kind.INVALID, "MALFORMED_REQUEST", f"{names[0]} is missing")
    return None


def _hashes(body: dict[str, Any]) -> list[bytes]:
    values = _field(body, list, "hashes", "hash")
    digests = []
    for value in values:
        if not isinstance(value, str):
            raise GatewayError(Kind.INVALID, "MALFORMED_REQUEST", "hashes are base64 strings")
        try:
            digest = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise GatewayError(Kind.INVALID, "BAD_BASE64", "a hash is not base64") from None
        if len(digest) != 32:
            raise GatewayError(
                Kind.INVALID, "DIGEST_LENGTH", "each hash is a SHA-256 digest (32 bytes)"
            )
        digests.append(digest)
    algorithm = _field(body, str, "hashAlgorithmOID", "hashAlgo", required=False)
    if algorithm not in (None, SHA256):
        raise GatewayError(Kind.INVALID, "HASH_ALGORITHM_UNSUPPORTED", "hashes are SHA-256 only")
    return digests


_KEY_BITS = {
    gateway_pb2.ORGANISATION_KEY_ALGORITHM_EC_P256: 256,
    gateway_pb2.ORGANISATION_KEY_ALGORITHM_RSA_2048: 2048,
    gateway_pb2.ORGANISATION_KEY_ALGORITHM_RSA_3072: 3072,
}


def _sign_algorithms(key: gateway_pb2.OrganisationKey) -> list[str]:
    if key.algorithm == gateway_pb2.ORGANISATION_KEY_ALGORITHM_EC_P256:
        return [ECDSA_SHA256]
    return [RSASSA_PSS]


def _check_sign_algorithm(body: dict[str, Any], key: gateway_pb2.OrganisationKey) -> None:
    """The signature algorithm must be the key's: ECDSA with SHA-256, or RSASSA-PSS with
    SHA-256, MGF1 with SHA-256 and a 32-byte salt (what the HSM proxy makes)."""
    algorithm = _field(body, str, "signAlgo")
    if algorithm not in _sign_algorithms(key):
        raise GatewayError(
            Kind.INVALID, "SIGN_ALGORITHM_UNSUPPORTED", "the key does not sign with that algorithm"
        )
    if algorithm != RSASSA_PSS:
        return
    encoded = _field(body, str, "signAlgoParams")
    try:
        params = algos.RSASSAPSSParams.load(base64.b64decode(encoded, validate=True))
        native = params.native
    except (binascii.Error, ValueError, TypeError):
        raise GatewayError(
            Kind.INVALID, "SIGN_ALGORITHM_UNSUPPORTED", "malformed RSASSA-PSS parameters"
        ) from None
    if (
        native["hash_algorithm"]["algorithm"] != "sha256"
        or native["mask_gen_algorithm"]["parameters"]["algorithm"] != "sha256"
        or native["salt_length"] != 32
    ):
        raise GatewayError(
            Kind.INVALID,
            "SIGN_ALGORITHM_UNSUPPORTED",
            "RSASSA-PSS with SHA-256, MGF1-SHA-256, 32-byte salt",
        )


def _time(value: Any) -> str:
    return str(value.strftime("%Y%m%d%H%M%SZ"))


class Endpoint:
    """The handlers, over the applications and approvals of this gateway."""

    def __init__(
        self,
        *,
        applications: Applications,
        approvals: Approvals,
        registry: Registry,
        settings: Settings,
    ) -> None:
        self._applications = applications
        self._approvals = approvals
        self._registry = registry
        self._settings = settings

    async def _caller(self, request: web.Request) -> Application:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            raise GatewayError(
                Kind.UNAUTHENTICATED, "TOKEN_REQUIRED", "an OAuth 2.0 bearer token is required"
            )
        return await self._applications.authenticate(header[len("Bearer ") :], int(time.time()))

    async def token(self, request: web.Request) -> web.Response:
        """``oauth2/token``: the client credentials grant."""
        if request.content_type == "application/json":
            form: dict[str, Any] = await _body(request)
        else:
            form = dict(await request.post())
        client_id = form.get("client_id", "")
        client_secret = form.get("client_secret", "")
        if request.headers.get("Authorization", "").startswith("Basic "):
            try:
                pair = base64.b64decode(request.headers["Authorization"][6:], validate=True)
                client_id, _, client_secret = pair.decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                raise GatewayError(
                    Kind.INVALID, "MALFORMED_REQUEST", "malformed Basic credentials"
                ) from None
        if form.get("grant_type") != "client_credentials":
            raise GatewayError(
                Kind.INVALID, "GRANT_TYPE_UNSUPPORTED", "only the client_credentials grant"
            )
        if not isinstance(client_id, str) or not isinstance(client_secret, str):
            raise GatewayError(
                Kind.INVALID, "MALFORMED_REQUEST", "client_id and client_secret are strings"
            )
        token, lifetime = await self._applications.token(client_id, client_secret, int(time.time()))
        return web.json_response(
            {"access_token": token, "token_type": "Bearer", "expires_in": lifetime},
            headers={"Cache-Control": "no-store"},
        )

    async def info(self, request: web.Request) -> web.Response:
        """``info``: what this service is and which methods it offers (no token needed)."""
        return web.json_response(
            {
                "specs": "2.0.0.2",
                "name": "mobilesign",
                "logo": "",
                "region": "",
                "lang": "en-US",
                "description": "Organisation seals, each approved and co-signed on a phone",
                "authType": ["oauth2client"],
                "oauth2": self._settings.base_url or f"{request.scheme}://{request.host}",
                "methods": list(METHODS),
            }
        )

    async def credentials_list(self, request: web.Request) -> web.Response:
        """``credentials/list``: the application's credentials (optionally one user's)."""
        application = await self._caller(request)
        body = await _body(request)
        user_id = _field(body, str, "userID", required=False)
        with_info = _field(body, bool, "credentialInfo", required=False)
        listed = []
        for grant_id in application.grant_ids:
            grant = await self._registry.grant(grant_id)
            if grant is not None and (user_id is None or grant.user_id == user_id):
                listed.append(grant)
        answer: dict[str, Any] = {"credentialIDs": [g.grant_id for g in listed]}
        if with_info:
            answer["credentialInfos"] = [
                {"credentialID": g.grant_id, **await self._describe(g, "chain")} for g in listed
            ]
        return web.json_response(answer)

    async def _describe(self, grant: gateway_pb2.Grant, certificates: str) -> dict[str, Any]:
        key = await self._registry.organisation_key(grant.key_id)
        status = await self._registry.key_status(grant.key_id)
        certificate = x509.load_der_x509_certificate(key.certificate)
        now = time.time()
        valid = (
            certificate.not_valid_before_utc.timestamp()
            <= now
            < certificate.not_valid_after_utc.timestamp()
        )
        chain = [key.certificate]
        if certificates == "chain":
            chain.append(await self._registry.ca_certificate())
        ec = key.algorithm == gateway_pb2.ORGANISATION_KEY_ALGORITHM_EC_P256
        usable = not grant.revoked and now < grant.not_after_unix and not status.revoked
        cert: dict[str, Any] = {
            "status": "revoked" if status.revoked else ("valid" if valid else "expired"),
            "issuerDN": certificate.issuer.rfc4514_string(),
            "serialNumber": format(certificate.serial_number, "x"),
            "subjectDN": certificate.subject.rfc4514_string(),
            "validFrom": _time(certificate.not_valid_before_utc),
            "validTo": _time(certificate.not_valid_after_utc),
        }
        if certificates != "none":
            cert["certificates"] = [base64.b64encode(der).decode() for der in chain]
        key_info: dict[str, Any] = {
            "status": "enabled" if usable else "disabled",
            "algo": _sign_algorithms(key),
            "len": _KEY_BITS.get(key.algorithm, 0),
        }
        if ec:
            key_info["curve"] = P256
        return {
            "description": grant.purpose,
            "key": key_info,
            "cert": cert,
            "auth": {"mode": "implicit"},
            "authMode": "implicit",
            "SCAL": "2",
            "multisign": self._approvals.max_signatures,
            "lang": "en-US",
        }

    async def credentials_info(self, request: web.Request) -> web.Response:
        """``credentials/info``: the organisation key, its certificate and chain, SCAL 2."""
        application = await self._caller(request)
        body = await _body(request)
        credential_id = _field(body, str, "credentialID")
        certificates = _field(body, str, "certificates", required=False) or "single"
        if certificates not in ("none", "single", "chain"):
            raise GatewayError(
                Kind.INVALID, "MALFORMED_REQUEST", "certificates is none, single or chain"
            )
        grant = await self._approvals.credential(application, credential_id)
        return web.json_response(await self._describe(grant, certificates))

    def _authorised(self, authorised: Authorised | None, approval_id: str) -> web.Response:
        if authorised is None:
            # The asynchronous form: the client polls credentials/authorizeCheck.
            return web.json_response({"responseID": approval_id}, status=202)
        return web.json_response({"SAD": authorised.sad, "expiresIn": authorised.expires_in})

    async def authorize(self, request: web.Request) -> web.Response:
        """``credentials/authorize``: ask the user to approve signatures of these hashes."""
        application = await self._caller(request)
        body = await _body(request)
        credential_id = _field(body, str, "credentialID")
        digests = _hashes(body)
        count = _field(body, int, "numSignatures")
        if count != len(digests):
            raise GatewayError(
                Kind.INVALID, "SIGNATURE_COUNT_INVALID", "numSignatures is the number of hashes"
            )
        mode = _field(body, str, "operationMode", required=False) or "S"
        if mode not in ("S", "A"):
            raise GatewayError(Kind.INVALID, "MALFORMED_REQUEST", "operationMode is S or A")
        approval_id = await self._approvals.request(
            application,
            credential_id=credential_id,
            digests=digests,
            description=_field(body, str, "description", required=False) or "",
            label=_field(body, str, "clientData", required=False) or "",
        )
        wait = self._settings.wait_seconds if mode == "S" else 0.0
        authorised = await self._approvals.authorisation(application, approval_id, wait)
        return self._authorised(authorised, approval_id)

    async def authorize_check(self, request: web.Request) -> web.Response:
        """``credentials/authorizeCheck``: the SAD once the user approved, 202 until then."""
        application = await self._caller(request)
        body = await _body(request)
        approval_id = _field(body, str, "responseID")
        authorised = await self._approvals.authorisation(application, approval_id, 0.0)
        return self._authorised(authorised, approval_id)

    async def sign_hash(self, request: web.Request) -> web.Response:
        """``signatures/signHash``: the signatures of exactly the hashes the SAD was given for."""
        application = await self._caller(request)
        body = await _body(request)
        credential_id = _field(body, str, "credentialID")
        sad = _field(body, str, "SAD")
        digests = _hashes(body)
        if _field(body, str, "operationMode", required=False) not in (None, "S"):
            raise GatewayError(Kind.INVALID, "MALFORMED_REQUEST", "signHash is synchronous here")
        grant = await self._approvals.grant_for(application, credential_id)
        _check_sign_algorithm(body, await self._registry.organisation_key(grant.key_id))
        executed = await self._approvals.sign(
            application, credential_id=credential_id, sad=sad, digests=digests
        )
        return web.json_response(
            {"signatures": [base64.b64encode(e.result).decode() for e in executed]}
        )


def _per_peer(limit: int) -> Middleware:
    """A middleware bounding the requests in flight from one address, as the gRPC public
    listener does (one counter per endpoint)."""
    counter = PeerCounter(limit)

    @web.middleware
    async def limit_peer(request: web.Request, handler: Handler) -> web.StreamResponse:
        remote = request.remote or ""
        peer = host_address(remote) or remote
        counter.acquire(peer)  # TOO_MANY_RPCS_FROM_PEER, answered by _errors
        try:
            return await handler(request)
        finally:
            counter.release(peer)

    return limit_peer


def application(endpoint: Endpoint, settings: Settings) -> web.Application:
    """The aiohttp application serving ``endpoint``."""
    app = web.Application(
        middlewares=[_errors, _per_peer(settings.max_requests_per_peer)],
        client_max_size=settings.max_request_bytes,
    )
    app.router.add_post("/oauth2/token", endpoint.token)
    app.router.add_post(f"{PREFIX}/info", endpoint.info)
    app.router.add_post(f"{PREFIX}/credentials/list", endpoint.credentials_list)
    app.router.add_post(f"{PREFIX}/credentials/info", endpoint.credentials_info)
    app.router.add_post(f"{PREFIX}/credentials/authorize", endpoint.authorize)
    app.router.add_post(f"{PREFIX}/credentials/authorizeCheck", endpoint.authorize_check)
    app.router.add_post(f"{PREFIX}/signatures/signHash", endpoint.sign_hash)
    return app


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    """Server TLS (1.2 or later) with the certificate chain and key in these PEM files."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


class HttpsListener:
    """The endpoint as a sidecar of the gateway's gRPC server (:class:`serve.Sidecar`)."""

    name = "csc"

    def __init__(
        self, app: web.Application, address: str, context: ssl.SSLContext, grace_seconds: float
    ) -> None:
        # Requests in flight get the service's grace period at shutdown, as gRPC calls do.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=grace_seconds)
        self._address = address
        self._context = context

    async def start(self) -> str:
        """Bind ``HOST:PORT`` (port 0: any free one) and serve; returns the bound address."""
        host, _, port = self._address.rpartition(":")
        await self._runner.setup()
        await web.TCPSite(self._runner, host, int(port), ssl_context=self._context).start()
        return f"{host}:{self._runner.addresses[0][1]}"

    async def stop(self, grace_seconds: float) -> None:
        """Stop accepting, then end the requests still in flight."""
        await self._runner.cleanup()
