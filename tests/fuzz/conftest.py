"""One deployment of all four services for the whole fuzz, and what the fuzz needs from it: an
organisation with keys, a logged-in phone with a grant, an enrolled key for Sign streams, and
fresh enrolment tickets for KeyGen streams."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mobilesign.testing import Deployment
from mobilesign.v1 import gateway_pb2
from tests.fuzz import messages, profiles
from tests.fuzz.harness import TALLY, Fuzz
from tests.fuzz.streams import Material
from tests.integration import escrow, two_party

#: Seconds the cosigner waits for each protocol step (streams here always end themselves).
STEP_TIMEOUT_SECONDS = 3


@dataclass
class Context:
    """The running fuzz: its callers, the deployment's real values, the stream material."""

    fuzz: Fuzz
    seeds: messages.Seeds
    session_token: str
    material: Material


@pytest.fixture(scope="module")
def fuzz_context(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Context]:
    """All four services, started once for the fuzz module (and stopped after it)."""
    deployment = Deployment(
        tmp_path_factory.mktemp("fuzz"),
        extra_env={"MOBILESIGN_COSIGNER_STEP_TIMEOUT_SECONDS": str(STEP_TIMEOUT_SECONDS)},
    )
    loop = asyncio.new_event_loop()
    try:
        deployment.start_all()
        fuzz = Fuzz(deployment, loop)
        context = loop.run_until_complete(_prepare(deployment, fuzz))
        yield context
        loop.run_until_complete(fuzz.aclose())
    finally:
        deployment.stop_all()
        loop.close()


async def _prepare(deployment: Deployment, fuzz: Fuzz) -> Context:
    organisation = await escrow.organisation(deployment, "fuzz")
    phone = await escrow.phone(deployment, organisation, "fuzz")
    grant = await escrow.grant(
        deployment, phone.user_id, organisation.seal, [gateway_pb2.OPERATION_SIGN_DIGEST]
    )
    keystore = await two_party.enrol(deployment)
    _, ticket = await two_party.new_ticket(deployment)
    seeds = messages.Seeds()
    seeds.add("key_id", organisation.seal.key_id, organisation.encryption.key_id, keystore.key_id)
    seeds.add("user_id", phone.user_id, keystore.user_id)
    seeds.add("grant_id", grant.grant_id)
    seeds.add("ticket", ticket)
    seeds.add("organisation_id", "fuzz")
    seeds.add("purpose", "fuzz")

    async def spare_ticket() -> bytes:
        return (await two_party.new_ticket(deployment))[1]

    tickets = [(await two_party.new_ticket(deployment))[1]]
    material = Material(tickets=tickets, keystore=keystore, spare_ticket=spare_ticket)
    # The phone's sessions stay open for the whole fuzz (its token is offered to the gateway).
    return Context(fuzz, seeds, phone.gateway._token, material)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the cases run and flagged per RPC (always in the long profile)."""
    if TALLY.ran and (profiles.profile() == "long" or terminalreporter.config.option.verbose > 0):
        terminalreporter.write_sep("=", f"fuzz ({profiles.profile()} profile): cases per RPC")
        terminalreporter.write_line(TALLY.report())


@pytest.fixture(autouse=True)
def _tally_file() -> Iterator[None]:
    """With ``MOBILESIGN_FUZZ_TALLY`` set, the tally so far is written there after each test
    (to follow a long run)."""
    yield
    path = os.environ.get("MOBILESIGN_FUZZ_TALLY")
    if path:
        Path(path).write_text(TALLY.report() + "\n")
