"""The README's ``curl`` example of the CSC endpoint, run as written (bash, curl, jq, openssl)
against running services, while a simulated phone approves the request it makes."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from client import csc_seal
from client.approver import Approver
from mobilesign.hosting import devpki
from mobilesign.testing import Deployment
from mobilesign.testing.deployment import ROOT
from mobilesign.v1 import gateway_pb2
from tests.integration import csc, escrow

pytestmark = pytest.mark.integration


def readme_block() -> str:
    """The ``sh id=csc-curl`` block of the README."""
    text = (ROOT / "README.md").read_text()
    (block,) = re.findall(r"```sh id=csc-curl\n(.*?)```", text, re.S)
    return str(block)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """Four services, the CSC endpoint on."""
    deployment = Deployment(tmp_path_factory.mktemp("csc-readme"))
    deployment.start_all()
    yield deployment
    deployment.stop_all()


async def test_the_readme_curl_example_works(deployment: Deployment, tmp_path: Path) -> None:
    organisation = await escrow.organisation(deployment, "readme")
    phone = await escrow.phone(deployment, organisation, "readme")
    try:
        grant = await escrow.grant(
            deployment, phone.user_id, organisation.seal, [gateway_pb2.OPERATION_SIGN_DIGEST]
        )
        (tmp_path / "contract.pdf").write_bytes(csc_seal.one_page_pdf("README contract"))
        # The administrator's tool with this deployment's addresses, as a shell function.
        gateway = deployment.address("gateway")
        script = (
            f'mobilesign-admin() {{ command mobilesign-admin --gateway "{gateway}" "$@"; }}\n'
            "set -euo pipefail\n" + readme_block()
        )
        env = dict(
            os.environ,
            PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
            PYTHONPATH=str(ROOT),
            MOBILESIGN_STATE_DIR=str(deployment.state_dir),
            CSC=csc.base_url(deployment),
            CA=str(devpki.ensure(deployment.state_dir) / "ca.pem"),
            GRANT=grant.grant_id,
        )
        approver = Approver(phone.gateway, phone.signing, organisation.trust, lambda _: True)
        async with approver.running():
            process = await asyncio.create_subprocess_exec(
                "bash",
                "-c",
                script,
                cwd=tmp_path,
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await asyncio.wait_for(process.communicate(), 120)
        output = out.decode() + err.decode()
        assert process.returncode == 0, output
        assert "Verified OK" in output
        assert grant.grant_id in output  # credentials/list
        (approval,) = approver.given
        assert (approval.application, approval.label) == ("Contract desk", "contract.pdf")
        assert approval.purpose == "Contract desk: supply contract"
        assert (tmp_path / "contract.sig").stat().st_size > 0
    finally:
        await phone.close()
