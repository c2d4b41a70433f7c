"""No organisation key stays in the token unknown: a creation cut short by a SIGKILL of the RA
(after the HSM proxy generated the key, before the RA recorded it) is finished at the RA's next
start, and any other organisation key no organisation holds is named in the RA's log (never
deleted); asking again for the label then succeeds or says why not."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import time
from collections.abc import Iterator

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from mobilesign.rpc.status import reason_of
from mobilesign.testing import Deployment
from mobilesign.v1 import gateway_pb2, hsm_pb2, hsm_pb2_grpc, ra_pb2
from tests.integration import escrow

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """The HSM proxy and the RA (the gateway and cosigner take no part)."""
    deployment = Deployment(tmp_path_factory.mktemp("orphans"))
    deployment.start("hsm-proxy")
    deployment.start("ra")
    yield deployment
    deployment.stop_all()


async def _token_keys(deployment: Deployment) -> list[hsm_pb2.KeyInfo]:
    async with deployment.channel("hsm-proxy", "ra") as channel:
        listed = await hsm_pb2_grpc.HsmServiceStub(channel).ListKeys(
            hsm_pb2.ListKeysRequest(purpose=hsm_pb2.KEY_PURPOSE_ORGANISATION)
        )
    return list(listed.keys)


def _log_lines(deployment: Deployment, message: str) -> list[dict[str, object]]:
    found = []
    for line in (deployment.state_dir / "ra.log").read_text().splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict) and entry.get("msg") == message:
                found.append(entry)
    return found


def _pending(deployment: Deployment, label: str) -> bool:
    db = deployment.state_dir / "ra" / "ra.db"
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as connection:
        rows = connection.execute(
            "SELECT 1 FROM organisation_key_creations WHERE label = ?", (label,)
        ).fetchall()
    return bool(rows)


async def _create(
    deployment: Deployment, organisation_id: str, label: str, algorithm: int
) -> ra_pb2.CreateOrganisationKeyResponse:
    async with deployment.channel("ra") as channel:
        return await escrow.admin(channel).CreateOrganisationKey(
            ra_pb2.CreateOrganisationKeyRequest(
                organisation_id=organisation_id,
                label=label,
                algorithm=algorithm,  # type: ignore[arg-type]
            )
        )


async def _organisation(deployment: Deployment, organisation_id: str) -> None:
    async with deployment.channel("ra") as channel:
        await escrow.admin(channel).CreateOrganisation(
            ra_pb2.CreateOrganisationRequest(organisation_id=organisation_id, name=organisation_id)
        )


async def _listed(
    deployment: Deployment, organisation_id: str
) -> list[gateway_pb2.OrganisationKey]:
    async with deployment.channel("ra") as channel:
        reply = await escrow.admin(channel).ListOrganisationKeys(
            ra_pb2.ListOrganisationKeysRequest(organisation_id=organisation_id)
        )
    return list(reply.keys)


def _certifies(key: gateway_pb2.OrganisationKey, token_key: hsm_pb2.KeyInfo) -> bool:
    certificate = x509.load_der_x509_certificate(key.certificate)
    spki = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return spki == token_key.public_key_spki


async def test_a_creation_cut_short_by_a_kill_is_adopted_and_certified_at_start(
    deployment: Deployment,
) -> None:
    await _organisation(deployment, "cutco")
    label = "cutco-seal"
    # RSA-3072 takes the token long enough to stop the RA while it waits for the key.
    creation = asyncio.create_task(
        _create(deployment, "cutco", label, gateway_pb2.ORGANISATION_KEY_ALGORITHM_RSA_3072)
    )
    ra = deployment.services["ra"].process
    try:
        deadline = time.monotonic() + 20
        while not _pending(deployment, label):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.002)
        # Stopped (not yet killed) between asking the token and hearing back: the token makes
        # the key, the RA never reads the answer. A stop before the request left is undone in
        # short bursts until the key is there.
        os.kill(ra.pid, signal.SIGSTOP)
        stopped = time.monotonic()
        while not any(k.label == label for k in await _token_keys(deployment)):
            assert time.monotonic() < deadline
            if time.monotonic() - stopped > 2:
                os.kill(ra.pid, signal.SIGCONT)
                await asyncio.sleep(0.005)
                os.kill(ra.pid, signal.SIGSTOP)
            await asyncio.sleep(0.05)
        deployment.stop("ra", signal.SIGKILL)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(ra.pid, signal.SIGCONT)
    with pytest.raises(grpc.aio.AioRpcError):
        await creation
    (token_key,) = [k for k in await _token_keys(deployment) if k.label == label]
    assert _pending(deployment, label)
    deployment.start("ra")
    adopted = _log_lines(deployment, "adopted an organisation key left by an interrupted creation")
    assert [(e["key_id"], e["label"]) for e in adopted] == [(token_key.key_id, label)]
    assert not _pending(deployment, label)
    (key,) = await _listed(deployment, "cutco")
    assert (key.key_id, key.label) == (token_key.key_id, label)
    assert key.algorithm == gateway_pb2.ORGANISATION_KEY_ALGORITHM_RSA_3072
    assert key.certificate_serial
    assert _certifies(key, token_key)
    # Asking again says why not; the token still holds the one key.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _create(deployment, "cutco", label, gateway_pb2.ORGANISATION_KEY_ALGORITHM_RSA_3072)
    assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert reason_of(refused.value) == "LABEL_IN_USE"
    assert [k.label for k in await _token_keys(deployment)].count(label) == 1


async def test_an_unknown_key_in_the_token_is_reported_and_a_retry_adopts_it(
    deployment: Deployment,
) -> None:
    await _organisation(deployment, "lostco")
    label = "lostco-seal"
    # As a creation cut short before this RA kept track of creations would leave it: generated
    # by the RA's identity, recorded nowhere.
    async with deployment.channel("hsm-proxy", "ra") as channel:
        generated = (
            await hsm_pb2_grpc.HsmServiceStub(channel).GenerateKeyPair(
                hsm_pb2.GenerateKeyPairRequest(
                    label=label,
                    purpose=hsm_pb2.KEY_PURPOSE_ORGANISATION,
                    algorithm=hsm_pb2.KEY_ALGORITHM_EC_P256,
                )
            )
        ).key
    deployment.stop("ra", signal.SIGKILL)
    deployment.start("ra")
    reported = _log_lines(
        deployment, "organisation key in the token that no organisation holds; left in place"
    )
    assert (generated.key_id, label) in [(e["key_id"], e["label"]) for e in reported]
    assert all(e["level"] == "warning" for e in reported)
    assert any(k.key_id == generated.key_id for k in await _token_keys(deployment))
    # Another algorithm under that label is refused with a reason; the same one adopts the key.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _create(deployment, "lostco", label, gateway_pb2.ORGANISATION_KEY_ALGORITHM_RSA_2048)
    assert reason_of(refused.value) == "LABEL_IN_USE"
    created = await _create(
        deployment, "lostco", label, gateway_pb2.ORGANISATION_KEY_ALGORITHM_EC_P256
    )
    assert created.key.key_id == generated.key_id
    assert _certifies(created.key, generated)
    assert [k.label for k in await _token_keys(deployment)].count(label) == 1
    # Known now: the next start reports it no more.
    deployment.stop("ra", signal.SIGKILL)
    before = len(reported)
    deployment.start("ra")
    again = _log_lines(
        deployment, "organisation key in the token that no organisation holds; left in place"
    )
    assert generated.key_id not in [e["key_id"] for e in again[before:]]
