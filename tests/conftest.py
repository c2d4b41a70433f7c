"""Shared fixtures: deployments of real service processes for the integration tests, and the
two storage back ends (SQLite files, schemas on a real PostgreSQL server) for the repositories'
tests."""

from __future__ import annotations

import contextlib
import itertools
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from psycopg.rows import tuple_row

from mobilesign.storage import postgres
from mobilesign.storage.connection import Connection
from mobilesign.storage.schema import Location, PostgresStore
from mobilesign.testing import Deployment
from mobilesign.testing.postgres import PostgresServer

#: Back ends every repository test runs on.
BACKENDS = ("sqlite", "postgresql")
_schemas = itertools.count()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the whole run (started when a test first asks for it)."""
    server = PostgresServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_dsn(postgres_server: PostgresServer) -> str:
    """A database and role of its own for the repository tests."""
    return postgres_server.create_service_database("mobilesign_tests")


@contextlib.contextmanager
def peek(location: Location) -> Iterator[Connection]:
    """A second connection to a store, as another process would open it (rows are plain
    tuples): what it sees is what was committed."""
    if isinstance(location, PostgresStore):
        raw = postgres.open_connection(location, rows=tuple_row)
        try:
            yield postgres.PostgresConnection(raw)
        finally:
            raw.close()
    else:
        with contextlib.closing(sqlite3.connect(location)) as connection:
            yield connection


@pytest.fixture(params=BACKENDS)
def where(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[str], Location]:
    """Where a test's store named ``name`` lives, on each back end in turn: a file under the
    test's directory, or a schema of the test's own in PostgreSQL (the same name gives the
    same place, so a test can open a store again)."""
    if request.param == "sqlite":
        return lambda name: tmp_path / f"{name}.db"
    dsn: str = request.getfixturevalue("postgres_dsn")
    schemas: dict[str, str] = {}

    def place(name: str) -> Location:
        schema = schemas.setdefault(name, f"t{next(_schemas)}_{name}")
        return PostgresStore(dsn, schema)

    return place


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
