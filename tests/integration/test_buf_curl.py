"""A debugging user's view: ``buf curl`` against a running service, through server reflection
(v1 and v1alpha): listing, calls, errors; what the public listeners offer; Health.List."""

from __future__ import annotations

import base64
import json
import subprocess
from typing import Any

import pytest
from google.rpc import error_details_pb2

from cosigner import servicer as cosigner_servicer
from mobilesign.hosting import access, serve
from mobilesign.testing import Deployment
from mobilesign.v1 import hsm_pb2, hsm_pb2_grpc
from scripts.gen_protos import ROOT
from server import public as gateway_public

pytestmark = pytest.mark.integration
BUF = ROOT / ".tools" / "node_modules" / ".bin" / "buf"
#: On every listener beside the services.
STANDARD = {
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
}
#: Each process with a public listener, and the services it serves.
PUBLIC_EDGES = {
    "gateway": {gateway_public.SERVICE: gateway_public.POLICY},
    "cosigner": {cosigner_servicer.SERVICE: cosigner_servicer.POLICY},
}


def _curl(
    deployment: Deployment, name: str, *args: str, listener: str = "internal"
) -> subprocess.CompletedProcess[str]:
    """``buf curl`` to a listener of ``name``: the internal one as ``admin``, the public one
    without a client certificate; ``args`` end with the URL's path (after the address)."""
    pki = deployment.state_dir / "pki"
    identity = (
        ["--cert", str(pki / "admin.pem"), "--key", str(pki / "admin.key")]
        if listener == "internal"
        else []
    )
    *flags, path = args
    return subprocess.run(
        [
            str(BUF),
            "curl",
            "--protocol",
            "grpc",
            "--cacert",
            str(pki / "ca.pem"),
            *identity,
            *flags,
            f"https://{deployment.address(name, listener)}{path}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _buf_curl(deployment: Deployment, method: str, data: str) -> subprocess.CompletedProcess[str]:
    return _curl(deployment, "hsm-proxy", "-d", data, f"/mobilesign.v1.HsmService/{method}")


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


@pytest.mark.parametrize("protocol", ["grpc-v1", "grpc-v1alpha"])
def test_buf_curl_lists_methods_through_either_reflection(
    hsm_deployment: Deployment, protocol: str
) -> None:
    result = _curl(
        hsm_deployment, "hsm-proxy", "--reflect-protocol", protocol, "--list-methods", ""
    )
    assert result.returncode == 0, result.stderr
    methods = set(result.stdout.split())
    assert {
        "mobilesign.v1.HsmService/ListKeys",
        "grpc.health.v1.Health/List",
        "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    } <= methods


def _error(result: subprocess.CompletedProcess[str]) -> Any:
    """The error buf curl printed (its JSON) for a call that failed."""
    assert result.returncode != 0
    return json.loads(result.stderr)


def test_buf_curl_shows_an_error_with_its_error_info(hsm_deployment: Deployment) -> None:
    # The administrator may list keys but not sign with them.
    error = _error(_buf_curl(hsm_deployment, "SignDigest", '{"key_id": "k", "digest": "AAAA"}'))
    assert error["code"] == "permission_denied"
    assert error["message"] == "CALLER_NOT_AUTHORISED: admin may not call SignDigest"
    (detail,) = error["details"]
    assert detail["type"] == "google.rpc.ErrorInfo"
    value = base64.b64decode(detail["value"] + "==")
    info = error_details_pb2.ErrorInfo.FromString(value)
    assert (info.reason, info.domain) == ("CALLER_NOT_AUTHORISED", "mobilesign.v1")


def test_buf_curl_shows_the_reason_of_an_error_in_text(hsm_deployment: Deployment) -> None:
    result = _buf_curl(hsm_deployment, "SignDigest", '{"key_id": "k", "digest": "AAAA"}')
    assert "CALLER_NOT_AUTHORISED" in result.stderr


@pytest.mark.parametrize("name", sorted(PUBLIC_EDGES))
def test_a_public_listener_lists_only_what_a_caller_without_a_certificate_may_call(
    two_party_deployment: Deployment, name: str
) -> None:
    listed = {}
    for listener in ("internal", "public"):
        result = _curl(two_party_deployment, name, "--list-services", "", listener=listener)
        assert result.returncode == 0, result.stderr
        listed[listener] = set(result.stdout.split())
    public = serve.Listener("public", "", mutual=False)
    assert listed["public"] == STANDARD | set(serve.offered(PUBLIC_EDGES[name], public))
    assert listed["public"] <= listed["internal"]
    for service in listed["public"] - STANDARD:
        policy = PUBLIC_EDGES[name][service]
        assert any(allowed is access.ANYONE for allowed in policy.rules.values())


@pytest.mark.parametrize(
    ("name", "listener"),
    [
        ("hsm-proxy", "internal"),
        ("ra", "internal"),
        ("gateway", "internal"),
        ("gateway", "public"),
        ("cosigner", "internal"),
        ("cosigner", "public"),
    ],
)
def test_health_list_answers_on_every_listener(
    two_party_deployment: Deployment, name: str, listener: str
) -> None:
    result = _curl(
        two_party_deployment, name, "-d", "{}", "/grpc.health.v1.Health/List", listener=listener
    )
    assert result.returncode == 0, result.stderr
    statuses = json.loads(result.stdout)["statuses"]
    assert all(reply == {"status": "SERVING"} for reply in statuses.values())
    services = set(statuses) - {""}
    assert "" in statuses
    assert services
    listed = _curl(two_party_deployment, name, "--list-services", "", listener=listener)
    assert services == set(listed.stdout.split()) - STANDARD
