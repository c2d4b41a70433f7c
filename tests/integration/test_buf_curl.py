"""A debugging user's view: ``buf curl`` against a running service, through server reflection."""

from __future__ import annotations

import json
import subprocess

import pytest

from mobilesign.testing import Deployment
from mobilesign.v1 import hsm_pb2, hsm_pb2_grpc
from scripts.gen_protos import ROOT

pytestmark = pytest.mark.integration
BUF = ROOT / ".tools" / "node_modules" / ".bin" / "buf"


def _buf_curl(deployment: Deployment, method: str, data: str) -> subprocess.CompletedProcess[str]:
    pki = deployment.state_dir / "pki"
    return subprocess.run(
        [
            str(BUF),
            "curl",
            "--protocol",
            "grpc",
            "--cacert",
            str(pki / "ca.pem"),
            "--cert",
            str(pki / "admin.pem"),
            "--key",
            str(pki / "admin.key"),
            "-d",
            data,
            f"https://{deployment.address('hsm-proxy')}/mobilesign.v1.HsmService/{method}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_buf_curl_lists_keys_through_reflection(hsm_deployment: Deployment) -> None:
    async with hsm_deployment.channel("hsm-proxy", "ra") as channel:
        created = await hsm_pb2_grpc.HsmServiceStub(channel).GenerateKeyPair(
            hsm_pb2.GenerateKeyPairRequest(
                label="buf-curl",
                purpose=hsm_pb2.KEY_PURPOSE_TICKET,
                algorithm=hsm_pb2.KEY_ALGORITHM_EC_P256,
            )
        )
    result = _buf_curl(hsm_deployment, "ListKeys", '{"purpose": "KEY_PURPOSE_TICKET"}')
    assert result.returncode == 0, result.stderr
    keys = json.loads(result.stdout)["keys"]
    assert {"keyId": created.key.key_id, "label": "buf-curl"}.items() <= next(
        k for k in keys if k["label"] == "buf-curl"
    ).items()


async def test_buf_curl_reports_bad_json_clearly(hsm_deployment: Deployment) -> None:
    result = _buf_curl(hsm_deployment, "GenerateKeyPair", '{"label": ')
    assert result.returncode != 0
    assert "unexpected EOF" in result.stderr
    result = _buf_curl(hsm_deployment, "GenerateKeyPair", '{"labell": "x"}')
    assert result.returncode != 0
    assert "labell" in result.stderr
