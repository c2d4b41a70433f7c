"""The client CLI as a person uses it: enrol with a ticket file, sign files, export the key;
a wrong PIN is refused without echoing it; the keystore is private."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from mobilesign.testing import Deployment
from mobilesign.testing.deployment import ROOT
from mobilesign.v1 import ra_pb2, ra_pb2_grpc

pytestmark = pytest.mark.integration
PIN = "731902"


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """All four services."""
    deployment = Deployment(tmp_path_factory.mktemp("cli"))
    deployment.start_all()
    yield deployment
    deployment.stop_all()


def _cli(deployment: Deployment, pin: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, MOBILESIGN_PIN=pin, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "client",
            "--cosigner",
            deployment.address("cosigner", "public"),
            "--ca",
            str(deployment.state_dir / "pki" / "ca.pem"),
            *args,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_enrol_sign_and_export_from_the_command_line(
    deployment: Deployment, tmp_path: Path
) -> None:
    async with deployment.channel("ra") as channel:
        admin = ra_pb2_grpc.AdminServiceStub(channel)
        await admin.CreateUser(ra_pb2.CreateUserRequest(user_id="carol"))
        ticket = await admin.IssueEnrolmentTicket(
            ra_pb2.IssueEnrolmentTicketRequest(user_id="carol")
        )
    (tmp_path / "ticket.bin").write_bytes(ticket.ticket)
    keystore = tmp_path / "carol.keystore"
    enrolled = _cli(
        deployment,
        PIN,
        "enrol",
        "--ticket",
        str(tmp_path / "ticket.bin"),
        "--keystore",
        str(keystore),
    )
    assert enrolled.returncode == 0, enrolled.stderr
    assert "for carol" in enrolled.stdout
    assert stat.S_IMODE(keystore.stat().st_mode) == 0o600
    documents = [tmp_path / "a.txt", tmp_path / "b.txt"]
    for n, document in enumerate(documents):
        document.write_bytes(f"document {n}\n".encode())
    signed = _cli(deployment, PIN, "sign", "--keystore", str(keystore), *map(str, documents))
    assert signed.returncode == 0, signed.stderr
    exported = _cli(deployment, PIN, "public-key", "--keystore", str(keystore))
    public = serialization.load_pem_public_key(exported.stdout.encode())
    assert isinstance(public, ed25519.Ed25519PublicKey)
    for document in documents:
        signature = Path(f"{document}.sig").read_bytes()  # noqa: ASYNC240 (a test's small file)
        public.verify(signature, document.read_bytes())
    # The same ticket does not enrol twice.
    again = _cli(
        deployment,
        PIN,
        "enrol",
        "--ticket",
        str(tmp_path / "ticket.bin"),
        "--keystore",
        str(tmp_path / "again.keystore"),
    )
    assert again.returncode == 1
    assert "TICKET_USED" in again.stderr
    # A wrong PIN is refused, and the PIN appears nowhere in the output or the logs.
    wrong = _cli(deployment, "000000", "sign", "--keystore", str(keystore), str(documents[0]))
    assert wrong.returncode == 1
    assert "WRONG_PIN" in wrong.stderr
    assert "000000" not in wrong.stderr + wrong.stdout
    for name in ("cosigner", "gateway", "ra", "hsm-proxy"):
        log = deployment.services[name].log.read_text()
        assert PIN not in log
        assert "000000" not in log
