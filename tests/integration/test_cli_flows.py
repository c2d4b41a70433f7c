"""Every flow from the command line, as people run it: an administrator sets up an organisation,
its keys, a user, a ticket and grants with ``mobilesign-admin``; the phone CLI enrols, gets its
certificate, logs in, lists its grants, signs and decrypts files with the organisation keys and
keeps the receipts; the administrator finds the records in the log and verifies them, and the
offline verifier accepts the phone's receipt. User mistakes end in one line and a non-zero exit
status, never a traceback."""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from mobilesign.testing import Deployment
from mobilesign.testing.deployment import ROOT

pytestmark = pytest.mark.integration
PIN = "604519"
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """All four services."""
    deployment = Deployment(tmp_path_factory.mktemp("cli-flows"))
    deployment.start_all()
    yield deployment
    deployment.stop_all()


def _run(
    command: list[str], deployment: Deployment | None, **env: str
) -> subprocess.CompletedProcess[str]:
    environment = dict(os.environ, PYTHONPATH=str(ROOT), **env)
    if deployment is not None:
        environment["MOBILESIGN_STATE_DIR"] = str(deployment.state_dir)
    environment.pop("MOBILESIGN_PIN", None)
    environment.update(env)
    return subprocess.run(
        command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120, check=False
    )


def admin(deployment: Deployment, *args: str) -> subprocess.CompletedProcess[str]:
    """``mobilesign-admin`` with the deployment's addresses (before the subcommand)."""
    addresses = [
        "--ra",
        deployment.address("ra"),
        "--gateway",
        deployment.address("gateway"),
        "--cosigner",
        deployment.address("cosigner"),
        "--hsm-proxy",
        deployment.address("hsm-proxy"),
    ]
    return _run([str(BIN / "mobilesign-admin"), *addresses, *args], deployment)


def phone(deployment: Deployment, *args: str, pin: str = PIN) -> subprocess.CompletedProcess[str]:
    """``mobilesign-phone`` with the deployment's public addresses (after the subcommand)."""
    addresses = [
        "--cosigner",
        deployment.address("cosigner", "public"),
        "--gateway",
        deployment.address("gateway", "public"),
    ]
    return _run([str(BIN / "mobilesign-phone"), *args, *addresses], deployment, MOBILESIGN_PIN=pin)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    """The output of a command that must have succeeded."""
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


def refused(result: subprocess.CompletedProcess[str], status: int | None = None) -> str:
    """The one error line of a command that must have failed cleanly."""
    assert result.returncode != 0, result.stdout
    if status is not None:
        assert result.returncode == status, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "error:" in lines[0]
    return lines[0]


def _first_word(output: str) -> str:
    return output.split()[0]


def test_an_administrator_and_a_phone_run_every_flow(
    deployment: Deployment, tmp_path: Path
) -> None:
    user = f"carol-{secrets.token_hex(3)}"
    org = f"acme-{secrets.token_hex(3)}"
    # S1: an organisation with a signing and a decryption key, and their certificates.
    assert org in ok(admin(deployment, "org", "create", org, "--name", "ACME Ltd"))
    seal_pem, enc_pem = tmp_path / "seal.pem", tmp_path / "enc.pem"
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
    encryption = _first_word(
        ok(
            admin(
                deployment,
                "key",
                "create",
                "--org",
                org,
                "--label",
                f"{org}-enc",
                "--algorithm",
                "rsa-2048",
                "--certificate-out",
                str(enc_pem),
            )
        )
    )
    listed = ok(admin(deployment, "key", "list", "--org", org))
    assert seal in listed
    assert encryption in listed
    assert "rsa-2048" in listed
    # Users, a ticket (text and QR code), grants.
    assert user in ok(admin(deployment, "user", "create", user, "--display-name", "Carol"))
    ticket = tmp_path / "ticket.txt"
    issued = ok(admin(deployment, "ticket", "issue", user, "--out", str(ticket)))
    assert "\u2580" in issued or "\u2584" in issued or "\u2588" in issued  # the QR code
    (line,) = [x for x in issued.splitlines() if x.startswith("mobilesign-ticket:v1:")]
    assert ticket.read_text().strip() == line
    sign_grant = _first_word(
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
                "--purpose",
                "contracts",
            )
        )
    )
    decrypt_grant = _first_word(
        ok(
            admin(
                deployment,
                "grant",
                "create",
                "--user",
                user,
                "--key-id",
                encryption,
                "--operation",
                "decrypt",
                "--quota-daily",
                "5",
            )
        )
    )

    # S2: the phone enrols with the ticket as printed, and gets its certificate.
    keystore = tmp_path / "carol.keystore"
    enrolled = ok(phone(deployment, "enrol", "--ticket", str(ticket), "--keystore", str(keystore)))
    assert f"for {user}" in enrolled
    pin_file = tmp_path / "pin"
    pin_file.write_text(PIN + "\n")
    certified = ok(
        phone(
            deployment,
            "certificate",
            "--ticket",
            str(ticket),
            "--keystore",
            str(keystore),
            "--pin-file",
            str(pin_file),
            pin="",
        )
    )
    assert f"CN={user}" in certified
    # S3: log in, list grants (options before the subcommand work as well as after).
    assert user in ok(phone(deployment, "login", "--keystore", str(keystore)))
    grants = ok(
        _run(
            [
                str(BIN / "mobilesign-phone"),
                "--gateway",
                deployment.address("gateway", "public"),
                "grants",
                "--keystore",
                str(keystore),
            ],
            deployment,
        )
    )
    assert sign_grant in grants
    assert decrypt_grant in grants
    assert "'contracts'" in grants

    # S4: sign a file with the seal, decrypt one with the encryption key; receipts kept.
    document = tmp_path / "contract.txt"
    document.write_bytes(b"the contract\n")
    used = ok(
        phone(deployment, "use", "sign", str(document), "--keystore", str(keystore))
    )  # the only signing grant is chosen
    record_id = re.search(r"record ([0-9a-f]{32})", used)
    assert record_id is not None, used
    seal_key = x509.load_pem_x509_certificate(seal_pem.read_bytes()).public_key()
    assert isinstance(seal_key, ec.EllipticCurvePublicKey)
    seal_key.verify(
        Path(f"{document}.sig").read_bytes(), document.read_bytes(), ec.ECDSA(hashes.SHA256())
    )
    saved = tmp_path / "checkpoint.txt"
    ok(admin(deployment, "log", "checkpoint", "--out", str(saved)))
    enc_key = x509.load_pem_x509_certificate(enc_pem.read_bytes()).public_key()
    assert isinstance(enc_key, rsa.RSAPublicKey)
    secret = tmp_path / "secret.bin"
    secret.write_bytes(
        enc_key.encrypt(
            b"the secret",
            padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None),
        )
    )
    ok(
        phone(
            deployment,
            "use",
            "decrypt",
            str(secret),
            "--grant",
            decrypt_grant,
            "--keystore",
            str(keystore),
            "--out",
            str(tmp_path / "secret.txt"),
            "--purpose",
            "mail",
        )
    )
    assert (tmp_path / "secret.txt").read_bytes() == b"the secret"

    # S5: the administrator finds the record, rebuilds and verifies its receipt, checks the log
    # extends the saved checkpoint; the offline verifier accepts the phone's receipt.
    found = ok(admin(deployment, "log", "find", record_id[1]))
    assert f"record {record_id[1]}" in found
    assert "succeeded" in found
    # The record holds the SHA-256 of the input, and the input of a signature is the digest.
    digest = hashlib.sha256(document.read_bytes()).digest()
    assert hashlib.sha256(digest).hexdigest()[:16] in found
    entries = ok(admin(deployment, "log", "entries", "--count", "100"))
    assert record_id[1] in entries
    assert "'mail'" in entries
    rebuilt = tmp_path / "rebuilt.json"
    receipt = ok(
        admin(deployment, "log", "receipt", "--record-id", record_id[1], "--out", str(rebuilt))
    )
    assert receipt.startswith(f"OK: record {record_id[1]} by {user}")
    assert "extends the saved checkpoint" in ok(
        admin(deployment, "log", "consistency", "--old", str(saved), "--save")
    )
    ca, log_key = tmp_path / "ca.pem", tmp_path / "log.pem"
    ok(admin(deployment, "certificate", "ca", "--out", str(ca)))
    ok(admin(deployment, "log", "key", "--out", str(log_key)))
    for receipt_file in (Path(f"{document}.receipt.json"), rebuilt):
        verified = ok(
            _run(
                [
                    sys.executable,
                    "-m",
                    "client",
                    "verify-receipt",
                    "--receipt",
                    str(receipt_file),
                    "--ca",
                    str(ca),
                    "--log-key",
                    str(log_key),
                ],
                None,
            )
        )
        assert verified.startswith(f"OK: record {record_id[1]} by {user}")

    # Revocation: a revoked grant is refused in one line; a revoked certificate is reported.
    ok(admin(deployment, "grant", "revoke", decrypt_grant))
    assert "revoked" in ok(admin(deployment, "grant", "list", "--user", user))
    line = refused(
        phone(
            deployment,
            "use",
            "decrypt",
            str(secret),
            "--grant",
            decrypt_grant,
            "--keystore",
            str(keystore),
        ),
        1,
    )
    assert "REVOKED" in line
    serial = re.search(r"certificate ([0-9a-f]+) for", certified)
    assert serial is not None
    ok(admin(deployment, "certificate", "revoke", serial[1], "--reason", "key-compromise"))
    assert "revoked" in ok(admin(deployment, "certificate", "status", serial[1]))
    assert "error:" in refused(phone(deployment, "login", "--keystore", str(keystore)), 1)


def test_a_locked_key_is_unlocked_by_the_administrator(
    deployment: Deployment, tmp_path: Path
) -> None:
    user = f"dave-{secrets.token_hex(3)}"
    ok(admin(deployment, "user", "create", user))
    ticket = tmp_path / "ticket.txt"
    ok(admin(deployment, "ticket", "issue", user, "--no-qr", "--out", str(ticket)))
    keystore = tmp_path / "dave.keystore"
    enrolled = ok(phone(deployment, "enrol", "--ticket", str(ticket), "--keystore", str(keystore)))
    key_id = enrolled.split()[2]
    document = tmp_path / "a.txt"
    document.write_text("a")
    for _ in range(10):
        line = refused(
            phone(deployment, "sign", "--keystore", str(keystore), str(document), pin="000000")
        )
        if "LOCKED" in line:
            break
    assert "locked" in ok(admin(deployment, "user-key", "show", key_id))
    ok(admin(deployment, "user-key", "unlock", key_id))
    assert "unlocked" in ok(admin(deployment, "user-key", "show", key_id))
    ok(phone(deployment, "sign", "--keystore", str(keystore), str(document)))


def test_the_keystore_is_never_overwritten_without_force(
    deployment: Deployment, tmp_path: Path
) -> None:
    user = f"erin-{secrets.token_hex(3)}"
    ok(admin(deployment, "user", "create", user))
    ticket = tmp_path / "ticket.txt"
    ok(admin(deployment, "ticket", "issue", user, "--no-qr", "--out", str(ticket)))
    keystore = tmp_path / "erin.keystore"
    keystore.write_text("precious")
    line = refused(
        phone(deployment, "enrol", "--ticket", str(ticket), "--keystore", str(keystore)), 2
    )
    assert "--force" in line
    assert keystore.read_text() == "precious"
    # The ticket was not spent by the refusal.
    ok(phone(deployment, "enrol", "--ticket", str(ticket), "--keystore", str(keystore), "--force"))
    assert keystore.read_text() != "precious"


def test_admin_mistakes_are_one_line(deployment: Deployment, tmp_path: Path) -> None:
    mobilesign_admin = str(BIN / "mobilesign-admin")
    refused(_run([mobilesign_admin, "frobnicate"], deployment), 2)
    refused(_run([mobilesign_admin, "org", "create", "x"], deployment), 2)  # no --name
    refused(_run([mobilesign_admin, "grant", "create", "--user", "u"], deployment), 2)
    line = refused(
        _run([mobilesign_admin, "--cert", str(tmp_path / "none.pem"), "user", "show", "x"], None),
        2,
    )
    assert "none.pem" in line
    line = refused(admin(deployment, "user", "show", "nobody-at-all"), 1)
    assert "NOT_FOUND" in line
    refused(admin(deployment, "log", "consistency", "--old", str(tmp_path / "missing")), 1)
    (tmp_path / "junk").write_text("not a checkpoint")
    refused(admin(deployment, "log", "consistency", "--old", str(tmp_path / "junk")), 1)
    refused(
        admin(
            deployment,
            "grant",
            "create",
            "--user",
            "u",
            "--key-id",
            "k",
            "--operation",
            "sign",
            "--not-before",
            "yesterday",
        ),
        2,
    )
    refused(_run([mobilesign_admin, "--ra", "127.0.0.1:1", "user", "show", "x"], deployment), 1)


def test_phone_mistakes_are_one_line(deployment: Deployment, tmp_path: Path) -> None:
    mobilesign_phone = str(BIN / "mobilesign-phone")
    refused(_run([mobilesign_phone, "frobnicate"], deployment), 2)
    refused(_run([mobilesign_phone, "enrol", "--keystore", "x"], deployment), 2)  # no ticket
    keystore = str(tmp_path / "k")
    line = refused(
        phone(deployment, "enrol", "--ticket", str(tmp_path / "missing"), "--keystore", keystore)
    )
    assert "missing" in line
    damaged = tmp_path / "damaged.txt"
    damaged.write_text("mobilesign-ticket:v1:AAAA")
    assert "damaged" in refused(
        phone(deployment, "enrol", "--ticket", str(damaged), "--keystore", keystore)
    )
    forged = tmp_path / "forged.bin"
    forged.write_bytes(b"\x0a\x03abc")
    refused(phone(deployment, "enrol", "--ticket", str(forged), "--keystore", keystore), 1)
    assert not Path(keystore).exists()
    not_a_keystore = tmp_path / "notes.txt"
    not_a_keystore.write_text("{}")
    assert "keystore" in refused(phone(deployment, "login", "--keystore", str(not_a_keystore)))
    # Without a PIN and without a terminal, it says so rather than hanging.
    ticket = tmp_path / "t.txt"
    ok(admin(deployment, "user", "create", u := f"frank-{secrets.token_hex(3)}"))
    ok(admin(deployment, "ticket", "issue", u, "--no-qr", "--out", str(ticket)))
    assert "PIN" in refused(
        phone(deployment, "enrol", "--ticket", str(ticket), "--keystore", keystore, pin=""), 2
    )


@pytest.mark.parametrize(
    "command",
    [["mobilesign-admin"], ["mobilesign-phone"], [sys.executable, "-m", "client"]],
)
def test_version(command: list[str]) -> None:
    if not command[0].startswith("/"):
        command = [str(BIN / command[0]), *command[1:]]
    out = ok(_run([*command, "--version"], None))
    assert re.search(r"\d+\.\d+", out)
