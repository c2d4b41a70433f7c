"""Fixtures shared by several integration test modules.

The deployments here start once for all the modules that use them: their tests make their own
users, tickets, keys and organisations, and none depends on a fresh state directory.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from client.keystore import Keystore
from mobilesign.testing import Deployment
from tests.integration import certificates, two_party


@pytest.fixture
async def keystore(two_party_deployment: Deployment) -> Keystore:
    """A freshly enrolled key (its own user, device and PIN) in the two-party deployment."""
    return await two_party.enrol(two_party_deployment)


@pytest.fixture(scope="session")
def certificates_deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """HSM proxy, RA/CA, gateway and cosigner processes sharing one state directory, for the
    RA/CA test modules."""
    deployment = Deployment(tmp_path_factory.mktemp("certificates"))
    try:
        deployment.start_all()
        yield deployment
    finally:
        deployment.stop_all()


@pytest.fixture(scope="session")
def pki(certificates_deployment: Deployment) -> certificates.Pki:
    """An organisation with one key per algorithm and two certified users, issued once."""
    return asyncio.run(certificates.setup_pki(certificates_deployment))
