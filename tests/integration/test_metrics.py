"""Each running service's Prometheus endpoint (``metrics_listen``): a use of an organisation key
and a wrong PIN move the counts the README lists, scraped over plain HTTP."""

from __future__ import annotations

import asyncio
import hashlib
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

import client
from mobilesign.testing import Deployment
from mobilesign.testing.deployment import START_ORDER
from mobilesign.v1 import gateway_pb2
from tests.integration import escrow

pytestmark = pytest.mark.integration

_SECTIONS = ("HSM_PROXY", "RA", "COSIGNER", "GATEWAY")

#: What every service exports, and what each exports besides.
_COMMON = ("mobilesign_rpc_requests", "mobilesign_rpc_duration_seconds")
_OWN = {
    "hsm-proxy": (
        "mobilesign_hsm_queue_depth",
        "mobilesign_hsm_queue_capacity",
        "mobilesign_hsm_queue_wait_seconds",
        "mobilesign_hsm_operation_duration_seconds",
        "mobilesign_peer_up",
    ),
    "ra": ("mobilesign_peer_up",),
    "gateway": (
        "mobilesign_audit_log_entries",
        "mobilesign_audit_log_batches",
        "mobilesign_audit_log_appends",
        "mobilesign_peer_up",
    ),
    "cosigner": (
        "mobilesign_cosigner_pin_failures",
        "mobilesign_cosigner_key_lockouts",
        "mobilesign_cosigner_locked_keys",
        "mobilesign_cosigner_signing_sessions",
        "mobilesign_peer_up",
    ),
}

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """All four services, each with a metrics port of its own (port 0: the run file says)."""
    deployment = Deployment(
        tmp_path_factory.mktemp("metrics"),
        extra_env={f"MOBILESIGN_{s}_METRICS_LISTEN": "127.0.0.1:0" for s in _SECTIONS},
    )
    deployment.start_all()
    yield deployment
    deployment.stop_all()


def _scrape_now(address: str) -> tuple[set[str], Samples]:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as reply:
        assert reply.status == 200
        text = reply.read().decode()
    names: set[str] = set()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return names, samples


async def _scrape(deployment: Deployment, name: str) -> tuple[set[str], Samples]:
    return await asyncio.to_thread(_scrape_now, deployment.address(name, "metrics"))


def _total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    return sum(
        value
        for (sample, have), value in samples.items()
        if sample == name and set(labels.items()) <= set(have)
    )


async def test_each_service_exports_its_metrics_and_a_use_moves_them(
    deployment: Deployment,
) -> None:
    before = {name: (await _scrape(deployment, name))[1] for name in START_ORDER}
    organisation = await escrow.organisation(deployment, "metered")
    phone = await escrow.phone(deployment, organisation, "metered")
    try:
        grant = await escrow.grant(
            deployment, phone.user_id, organisation.seal, [gateway_pb2.OPERATION_SIGN_DIGEST]
        )
        await phone.gateway.use_key(
            phone.signing,
            grant_id=grant.grant_id,
            operation=gateway_pb2.OPERATION_SIGN_DIGEST,
            data=hashlib.sha256(b"metered").digest(),
            purpose="tests",
            trust=organisation.trust,
        )
        wrong = client.SigningSession(phone.channels[0], phone.keystore, "000000")
        with pytest.raises(client.ClientError) as info:
            await wrong.open()
        assert info.value.reason == "WRONG_PIN"
        # The phone's own session is still open: one signing session in flight.
        _, cosigner_now = await _scrape(deployment, "cosigner")
        assert _total(cosigner_now, "mobilesign_cosigner_signing_sessions") >= 1
    finally:
        await phone.close()

    after = {}
    for name in START_ORDER:
        names, after[name] = await _scrape(deployment, name)
        missing = {*_COMMON, *_OWN[name]} - names
        assert not missing, f"{name} lacks {sorted(missing)}"

    def moved(name: str, metric: str, **labels: str) -> float:
        return _total(after[name], metric, **labels) - _total(before[name], metric, **labels)

    rpcs = "mobilesign_rpc_requests_total"
    assert moved("gateway", rpcs, method="ExecuteOperation", code="OK") == 1
    assert moved("gateway", "mobilesign_rpc_duration_seconds_count", method="ExecuteOperation") == 1
    assert moved("ra", rpcs, method="CreateUser", code="OK") == 1
    assert moved("hsm-proxy", rpcs, method="SignDigest", code="OK") >= 1
    assert moved("cosigner", rpcs, method="Sign", code="PERMISSION_DENIED", reason="WRONG_PIN") == 1

    hsm = "mobilesign_hsm_operation_duration_seconds_count"
    assert moved("hsm-proxy", hsm, operation="sign", outcome="ok") >= 1
    assert moved("hsm-proxy", hsm, operation="unseal", outcome="ok") >= 1
    assert _total(after["hsm-proxy"], "mobilesign_hsm_queue_capacity") > 0
    assert _total(after["hsm-proxy"], "mobilesign_hsm_queue_depth") == 0

    # One use appends two entries (the record, its outcome), in at least one batch each time.
    assert moved("gateway", "mobilesign_audit_log_appends_total") == 2
    assert moved("gateway", "mobilesign_audit_log_entries") == 2
    assert moved("gateway", "mobilesign_audit_log_batches_total") >= 1

    assert moved("cosigner", "mobilesign_cosigner_pin_failures_total") == 1
    assert _total(after["cosigner"], "mobilesign_cosigner_signing_sessions") == 0
    for name in ("gateway", "cosigner", "ra"):
        assert _total(after[name], "mobilesign_peer_up", peer="hsm-proxy") == 1
    for name in START_ORDER:
        assert _total(after[name], "mobilesign_peer_up", peer="database") == 1


async def test_metrics_carry_no_identifiers(deployment: Deployment) -> None:
    # Labels are methods, codes, reasons and operation names: no key, user or grant ids.
    for name in START_ORDER:
        _, samples = await _scrape(deployment, name)
        labels = {key for _, have in samples for key, _ in have}
        assert labels <= {
            "service",
            "method",
            "code",
            "reason",
            "operation",
            "outcome",
            "kind",
            "peer",
            "le",
        }, (name, labels)
