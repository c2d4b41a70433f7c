"""Shared fixtures: deployments of real service processes for the integration tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mobilesign.testing import Deployment


@pytest.fixture(scope="module")
def hsm_deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """An HSM proxy process over its own SoftHSM2 token."""
    deployment = Deployment(tmp_path_factory.mktemp("state"))
    deployment.start("hsm-proxy")
    yield deployment
    deployment.stop_all()


#: Seconds the cosigner waits for each protocol step in the two-party deployment (kept short so
#: that the step-timeout tests stay fast, long enough for honest clients on a busy machine).
TWO_PARTY_STEP_TIMEOUT_SECONDS = 3


@pytest.fixture(scope="session")
def two_party_deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """HSM proxy, RA, gateway and cosigner processes sharing one state directory, started once for
    all the two-party test modules (each test makes its own users, tickets and keys)."""
    deployment = Deployment(
        tmp_path_factory.mktemp("two-party"),
        extra_env={
            "MOBILESIGN_COSIGNER_STEP_TIMEOUT_SECONDS": str(TWO_PARTY_STEP_TIMEOUT_SECONDS),
            # The stolen-phone test opens 300 sessions at once from one address: its subject is
            # the PIN count, not the per-address cap (tests/integration/test_public_edge_floods).
            "MOBILESIGN_COSIGNER_PUBLIC_MAX_RPCS_PER_PEER": "1024",
        },
    )
    try:
        deployment.start_all()
        yield deployment
    finally:
        deployment.stop_all()
