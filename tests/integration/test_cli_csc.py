"""The CSC flow from the command line: an administrator registers an application with
``mobilesign-admin app``; the application asks for a signature over HTTPS; the user sees the
request with ``mobilesign-phone approvals`` and approves (or declines) it; the application's
signHash then returns a signature the organisation certificate verifies. Mistakes are one line."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from client import csc_seal
from mobilesign.testing import Deployment
from tests.integration import csc
from tests.integration.test_cli_flows import PIN, admin, ok, phone, refused

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """All four services, the CSC endpoint on."""
    deployment = Deployment(tmp_path_factory.mktemp("cli-csc"))
    deployment.start_all()
    yield deployment
    deployment.stop_all()


def _first_word(output: str) -> str:
    return output.split()[0]


def _http(deployment: Deployment, app: csc.App, *calls: tuple[str, dict[str, Any]]) -> Any:
    """Take a token, then make ``calls`` (method, body) in turn; their (status, answer)s."""

    async def go() -> list[tuple[int, Any]]:
        async with csc.http(deployment) as session:
            token = await csc_seal.access_token(session, app.base_url, app.client_id, app.secret)
            return [await csc.post(session, app, m, body, token) for m, body in calls]

    return asyncio.run(go())


def test_an_application_asks_and_the_phone_cli_approves(
    deployment: Deployment, tmp_path: Path
) -> None:
    user, org = f"dave-{secrets.token_hex(3)}", f"org-{secrets.token_hex(3)}"
    ok(admin(deployment, "org", "create", org, "--name", "Org"))
    seal_pem = tmp_path / "seal.pem"
    seal = _first_word(
        ok(
            admin(
                deployment,
                "key",
                "create",
                "--org",
                org,
                "--label",
                f"{org}-seal",
                "--certificate-out",
                str(seal_pem),
            )
        )
    )
    ok(admin(deployment, "user", "create", user))
    ticket = tmp_path / "ticket.txt"
    ok(admin(deployment, "ticket", "issue", user, "--out", str(ticket), "--no-qr"))
    grant = _first_word(
        ok(
            admin(
                deployment,
                "grant",
                "create",
                "--user",
                user,
                "--key-id",
                seal,
                "--operation",
                "sign",
            )
        )
    )
    keystore = tmp_path / "dave.keystore"
    ok(phone(deployment, "enrol", "--ticket", str(ticket), "--keystore", str(keystore)))
    ok(phone(deployment, "certificate", "--ticket", str(ticket), "--keystore", str(keystore)))

    # The administrator registers the application; the secret goes to a file only it can read.
    credentials = tmp_path / "app.json"
    registered = ok(
        admin(
            deployment,
            "app",
            "register",
            "--name",
            "Contract desk",
            "--grant",
            grant,
            "--out",
            str(credentials),
        )
    )
    assert "client_secret" not in registered.replace("client_id and client_secret", "")
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
    document = json.loads(credentials.read_text())
    app = csc.App(document["client_id"], document["client_secret"], csc.base_url(deployment))
    assert app.secret not in registered
    assert app.client_id in ok(admin(deployment, "app", "list"))

    digest = hashlib.sha256(b"contract 2026-12").digest()
    body = {
        "credentialID": grant,
        "numSignatures": 1,
        "hashes": [csc.b64(digest)],
        "hashAlgorithmOID": csc_seal.SHA256,
        "description": "supply contract",
        "clientData": "contract-2026-12.pdf",
        "operationMode": "A",
    }
    ((status, pending),) = _http(deployment, app, ("credentials/authorize", body))
    assert status == 202, pending
    listed = ok(phone(deployment, "approvals", "--keystore", str(keystore)))
    assert pending["responseID"] in listed
    assert "'Contract desk'" in listed
    assert "'Contract desk: supply contract'" in listed
    assert "contract-2026-12.pdf" in listed
    assert digest.hex() in listed
    approved = ok(phone(deployment, "approve", "--all", "--keystore", str(keystore)))
    assert "approved: 1 record" in approved
    assert "nothing to approve" in ok(phone(deployment, "approvals", "--keystore", str(keystore)))

    ((status, authorised),) = _http(
        deployment, app, ("credentials/authorizeCheck", {"responseID": pending["responseID"]})
    )
    assert status == 200, authorised
    sign = {
        "credentialID": grant,
        "SAD": authorised["SAD"],
        "hashes": [csc.b64(digest)],
        "hashAlgorithmOID": csc_seal.SHA256,
        "signAlgo": "1.2.840.10045.4.3.2",
    }
    ((status, signed),) = _http(deployment, app, ("signatures/signHash", sign))
    assert status == 200, signed
    key = x509.load_pem_x509_certificate(seal_pem.read_bytes()).public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    key.verify(
        base64.b64decode(signed["signatures"][0]), digest, ec.ECDSA(Prehashed(hashes.SHA256()))
    )

    # Two requests: one approved by its id, the other left pending, then declined.
    (first, second) = _http(
        deployment, app, ("credentials/authorize", body), ("credentials/authorize", body)
    )
    assert first[0] == second[0] == 202
    one, other = first[1]["responseID"], second[1]["responseID"]
    ok(phone(deployment, "approve", one, "--keystore", str(keystore)))
    listed = ok(phone(deployment, "approvals", "--keystore", str(keystore)))
    assert other in listed
    assert one not in listed
    assert "declined" in ok(phone(deployment, "decline", other, "--keystore", str(keystore)))
    checked = _http(
        deployment,
        app,
        ("credentials/authorizeCheck", {"responseID": one}),
        ("credentials/authorizeCheck", {"responseID": other}),
    )
    assert checked[0][0] == 200, checked
    assert (checked[1][0], checked[1][1]["reason"]) == (403, "APPROVAL_DECLINED")

    # Mistakes, each one line.
    assert "--all" in refused(phone(deployment, "approve", "--keystore", str(keystore)), 2)
    assert "nothing was approved" in refused(
        phone(deployment, "approve", "0" * 32, "--keystore", str(keystore))
    )
    assert "MALFORMED_APPROVAL_ID" in refused(
        phone(deployment, "decline", "nope", "--keystore", str(keystore))
    )
    assert "APPROVAL_NOT_FOUND" in refused(
        phone(deployment, "decline", "0" * 32, "--keystore", str(keystore))
    )
    assert "NO_GRANT" in refused(
        admin(deployment, "app", "register", "--name", "x", "--grant", "0" * 32)
    )
    assert "MALFORMED_GRANT_ID" in refused(
        admin(deployment, "app", "register", "--name", "x", "--grant", "g")
    )
    assert "NO_APPLICATION" in refused(admin(deployment, "app", "revoke", "0" * 32))
    assert "revoked" in ok(admin(deployment, "app", "revoke", app.client_id))
    assert "revoked" in ok(admin(deployment, "app", "list"))
    assert PIN not in listed + approved
