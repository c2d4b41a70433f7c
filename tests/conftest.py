"""Shared fixtures: deployments of real service processes for the integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from launcher import Deployment

VECTORS = Path(__file__).resolve().parent.parent.parent / "shared" / "vectors"


@pytest.fixture(scope="module")
def hsm_deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """An HSM proxy process over its own SoftHSM2 token."""
    deployment = Deployment(tmp_path_factory.mktemp("state"))
    deployment.start("hsm-proxy")
    yield deployment
    deployment.stop_all()
