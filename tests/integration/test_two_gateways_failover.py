"""Two gateways, two cosigners and two HSM proxies (on one SoftHSM2 token) on one PostgreSQL:
phones use either gateway for any step (login, prepare, execute) and either cosigner for their
signatures; each gateway and cosigner pair calls its own HSM proxy; uses through both gateways
share one audit log, one witness state and exact quotas; and when the gateway sequencing the log
(the one holding its lock at that moment) is killed, the other goes on. Afterwards nothing
acknowledged is lost, the log verifies from entry 0 and is consistent with every checkpoint
seen, the quotas equal the logged records, and every receipt verifies."""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import grpc
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

import client
from mobilesign import deviceauth, twoparty
from mobilesign.rpc import wire
from mobilesign.rpc.status import reason_of
from mobilesign.storage import postgres
from mobilesign.testing import Deployment
from mobilesign.testing.postgres import PostgresServer
from mobilesign.v1 import cosigner_pb2, cosigner_pb2_grpc, gateway_pb2
from tests.integration import escrow, two_party
from tests.integration.crashes import (
    RETRY_OUTCOMES,
    Acknowledged,
    InFlight,
    check_log,
    datum,
    retry,
)

pytestmark = pytest.mark.integration
GATEWAYS = ("gateway", "gateway-b")
COSIGNERS = ("cosigner", "cosigner-b")
#: The cosigners' default.
MAX_PIN_ATTEMPTS = 5
#: The shared grant's quota: fewer than the uses its two workers attempt through both gateways.
SMALL_QUOTA = 15


@pytest.fixture(scope="module")
def deployment(
    tmp_path_factory: pytest.TempPathFactory, postgres_server: PostgresServer
) -> Iterator[Deployment]:
    """The RA once; two HSM proxies (on one SoftHSM2 token), two cosigners and two gateways, each
    gateway calling its own cosigner and both calling their own HSM proxy; every service's state
    in its own database on one PostgreSQL server (the two HSM proxies share theirs)."""
    deployment = Deployment(tmp_path_factory.mktemp("two-gateways"), postgres=postgres_server)

    def internal(name: str) -> str:
        return f"127.0.0.1:{deployment.ports[(name, 'internal')]}"

    # A second HSM proxy on the same SoftHSM2 token and the same database.
    deployment.add_replica("hsm-proxy-b", "hsm-proxy")
    deployment.add_replica(
        "cosigner-b", "cosigner", {"MOBILESIGN_COSIGNER_HSM_PROXY": internal("hsm-proxy-b")}
    )
    deployment.add_replica(
        "gateway-b",
        "gateway",
        {
            "MOBILESIGN_GATEWAY_COSIGNER": internal("cosigner-b"),
            "MOBILESIGN_GATEWAY_HSM_PROXY": internal("hsm-proxy-b"),
        },
    )
    try:
        deployment.start_all()
        yield deployment
    finally:
        deployment.stop_all()


@dataclass
class User:
    """A phone's session token (valid at both gateways), a channel to each gateway and a
    signing session with each cosigner."""

    phone: escrow.Phone
    token: str
    gateways: dict[str, grpc.aio.Channel]
    signers: dict[str, client.SigningSession]

    @property
    def metadata(self) -> tuple[tuple[str, str]]:
        return (("authorization", f"Bearer {self.token}"),)

    async def close(self) -> None:
        for signer in self.signers.values():
            signer.abort()
        for channel in self.gateways.values():
            await channel.close()
        await self.phone.close()


async def _user(
    deployment: Deployment, organisation: escrow.Organisation, name: str, chance: random.Random
) -> User:
    """A phone enrolled and certified; it logs in with a challenge from one gateway answered at
    the other, and opens a signing session with each cosigner."""
    phone = await escrow.phone(deployment, organisation, name)
    gateways = {g: deployment.public_channel(g) for g in GATEWAYS}
    first, second = chance.sample(GATEWAYS, 2)
    key_id = phone.keystore.key_id
    started = await escrow.public(gateways[first]).StartSession(
        gateway_pb2.StartSessionRequest(key_id=key_id), timeout=10
    )
    transcript = deviceauth.gateway_session_transcript(bytes.fromhex(key_id), started.challenge)
    finished = await escrow.public(gateways[second]).FinishSession(
        gateway_pb2.FinishSessionRequest(
            key_id=key_id,
            challenge=started.challenge,
            device_signature=deviceauth.sign(phone.keystore.device_key, transcript),
        ),
        timeout=10,
    )
    signers = {}
    for cosigner in COSIGNERS:
        signer = client.SigningSession(
            deployment.public_channel(cosigner), phone.keystore, escrow.PIN
        )
        await signer.open()
        signers[cosigner] = signer
    return User(phone, finished.session_token, gateways, signers)


@dataclass
class Traffic:
    """What the phones saw."""

    seen: list[Acknowledged]
    in_flight: list[tuple[User, InFlight]]
    #: Refusals of uses beyond a quota.
    exhausted: int = 0
    dead: frozenset[str] = frozenset()
    #: Acknowledged uses by (gateway that prepared, gateway that executed).
    routes: Counter[tuple[str, str]] = field(default_factory=Counter)

    def refused(self, exc: grpc.aio.AioRpcError) -> str:
        """``exhausted`` (counted) for a use beyond the quota, else ``failed``."""
        if reason_of(exc) == "QUOTA_EXCEEDED":
            self.exhausted += 1
            return "exhausted"
        return "failed"


async def _use(
    user: User, grant_id: str, data: bytes, signer: str, traffic: Traffic, chance: random.Random
) -> str:
    """One use, its steps through gateways picked at random among the live ones: ``ok``,
    ``exhausted`` (the quota is used up), or ``failed`` (a step's gateway died; a record
    co-signed but not answered is kept in flight)."""
    live = [g for g in GATEWAYS if g not in traffic.dead]
    prepare_at, execute_at = chance.choice(live), chance.choice(live)
    try:
        prepared = await escrow.public(user.gateways[prepare_at]).PrepareOperation(
            gateway_pb2.PrepareOperationRequest(
                grant_id=grant_id, operation=gateway_pb2.OPERATION_SIGN_DIGEST, input=data
            ),
            metadata=user.metadata,
            timeout=30,
        )
    except grpc.aio.AioRpcError as exc:
        return traffic.refused(exc)
    signature = await user.signers[signer].sign(prepared.record)
    try:
        executed = await escrow.public(user.gateways[execute_at]).ExecuteOperation(
            gateway_pb2.ExecuteOperationRequest(
                record_id=prepared.record_id,
                record=prepared.record,
                user_signature=signature,
                input=data,
            ),
            metadata=user.metadata,
            timeout=30,
        )
    except grpc.aio.AioRpcError as exc:
        outcome = traffic.refused(exc)
        if outcome == "failed":
            traffic.in_flight.append(
                (user, InFlight(prepared.record_id, prepared.record, signature, data, grant_id))
            )
        return outcome
    traffic.seen.append(Acknowledged(executed.receipt, grant_id))
    traffic.routes[(prepare_at, execute_at)] += 1
    return "ok"


async def _worker(
    user: User,
    grant_id: str,
    signer: str,
    index: int,
    traffic: Traffic,
    stop: asyncio.Event,
) -> None:
    """Use the key until told to stop or the quota is used up; after a failed step (its
    gateway was killed) the next use goes through the other."""
    chance = random.Random(index)
    n = 0
    while not stop.is_set():
        n += 1
        if await _use(user, grant_id, datum(index, n), signer, traffic, chance) == "exhausted":
            return


async def _until(condition: Callable[[], bool], seconds: float, what: Callable[[], str]) -> None:
    """Return once ``condition()`` holds; fail with ``what()`` if it does not within
    ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds:g} s: {what()}")
        await asyncio.sleep(0.05)


def _wait_for_the_sequencer(server: PostgresServer, database: str, deadline: float) -> str:
    """The instance seen holding the audit log's lock in ``database`` (writing a batch)."""
    key = postgres.lock_key("log")
    with psycopg.connect(server.superuser_dsn("postgres"), autocommit=True) as admin:
        while time.monotonic() < deadline:
            row = admin.execute(
                "SELECT a.application_name FROM pg_locks l"
                " JOIN pg_stat_activity a ON a.pid = l.pid"
                " WHERE l.locktype = 'advisory' AND l.granted AND l.classid = 0"
                " AND l.objid = %s AND a.datname = %s",
                (key, database),
            ).fetchone()
            holder = str(row[0]).split("/", 1)[0] if row else ""
            if holder in GATEWAYS:
                return holder
    raise AssertionError("no gateway was seen holding the log's lock")


async def test_two_gateways_share_one_log_and_quotas_and_survive_the_sequencers_death(
    deployment: Deployment, postgres_server: PostgresServer
) -> None:
    chance = random.Random(20261202)
    organisation = await escrow.organisation(deployment, "failover")
    users = [await _user(deployment, organisation, f"fo{i}", chance) for i in range(4)]
    grants = []
    for i, user in enumerate(users):
        quota = SMALL_QUOTA if i == 0 else 100_000
        granted = await escrow.grant(
            deployment,
            user.phone.user_id,
            organisation.seal,
            [gateway_pb2.OPERATION_SIGN_DIGEST],
            quota_total=quota,
            quota_daily=quota,
        )
        grants.append(granted.grant_id)
    traffic = Traffic([], [])
    stop = asyncio.Event()
    try:
        # The small grant has two workers at once (one per cosigner session), so that its
        # quota is raced through both gateways; every other user has one.
        workers = [
            asyncio.create_task(_worker(users[0], grants[0], COSIGNERS[k], 100 + k, traffic, stop))
            for k in range(2)
        ] + [
            asyncio.create_task(_worker(user, grant, COSIGNERS[i % 2], i, traffic, stop))
            for i, (user, grant) in enumerate(zip(users[1:], grants[1:], strict=True), 1)
        ]
        # Every route is taken: prepared at one gateway, executed at the same or the other.
        await _until(lambda: len(traffic.routes) == 4, 60, lambda: f"routes {traffic.routes}")
        database = conninfo_to_dict(deployment.databases["gateway"])["dbname"]
        killed = await asyncio.to_thread(
            _wait_for_the_sequencer, postgres_server, str(database), time.monotonic() + 30
        )
        deployment.stop(killed, signal.SIGKILL)
        at_kill = len(traffic.seen)
        traffic.dead = frozenset({killed})
        survivor = next(g for g in GATEWAYS if g != killed)
        # The survivor takes over: uses go on through it alone. More acknowledgements than
        # there are workers (each had at most one use in flight at the kill) means that uses
        # begun after the kill completed.
        await _until(
            lambda: len(traffic.seen) > at_kill + len(workers),
            60,
            lambda: f"{len(traffic.seen) - at_kill} uses acknowledged after the kill",
        )
        # The small grant's workers run into its quota before the traffic stops.
        await _until(lambda: traffic.exhausted >= 1, 60, lambda: "no use refused QUOTA_EXCEEDED")
        stop.set()
        await asyncio.wait_for(asyncio.gather(*workers), timeout=60)
        # Records caught by the kill are executed again through the survivor.
        for user, flight in traffic.in_flight:
            phone = user.phone
            phone.gateway = client.GatewaySession(user.gateways[survivor], phone.keystore)
            phone.gateway._token = user.token
            outcomes: list[str] = []
            await retry(phone, flight, traffic.seen, outcomes)
            # A record of the small grant that the kill kept from executing meets the quota
            # the other workers used up meanwhile: refused, not executed twice.
            allowed = RETRY_OUTCOMES | (
                {"QUOTA_EXCEEDED"} if flight.grant_id == grants[0] else set()
            )
            assert set(outcomes) <= allowed, (flight.grant_id, outcomes)
        # The small grant: exactly its quota used, through both gateways, and refused beyond.
        small = [a for a in traffic.seen if a.grant_id == grants[0]]
        assert len(small) <= SMALL_QUOTA
        await check_log(deployment, organisation, traffic.seen, grants, gateway=survivor)
        # Both HSM proxies used the organisation key (each gateway calls its own).
        for proxy in ("hsm-proxy", "hsm-proxy-b"):
            log = deployment.services[proxy].log.read_text()
            assert '"method": "SignDigest"' in log, proxy
        state = await escrow.grant_state(deployment, grants[0])
        assert state is not None
        assert state.used_total == SMALL_QUOTA
    finally:
        stop.set()
        for user in users:
            await user.close()


def test_no_service_can_reach_another_services_database(deployment: Deployment) -> None:
    """Each service's role reaches its own database only: the gateway's credentials (the most
    exposed service's) cannot read or change the HSM proxy's witness state and replay set, nor
    any other service's tables; and so for every pair."""
    names = {s: str(conninfo_to_dict(dsn)["dbname"]) for s, dsn in deployment.databases.items()}
    for service, dsn in deployment.databases.items():
        with psycopg.connect(dsn, autocommit=True) as own:
            assert own.execute("SELECT current_database()").fetchone() == (names[service],)
        for other, database in names.items():
            if other == service:
                continue
            with pytest.raises(psycopg.OperationalError, match="CONNECT privilege"):
                psycopg.connect(make_conninfo(dsn, dbname=database)).close()
    # Inside its own database, the HSM proxy's stores are its role's alone.
    with psycopg.connect(deployment.databases["hsm-proxy"], autocommit=True) as own:
        owners = own.execute(
            "SELECT DISTINCT tableowner FROM pg_tables"
            " WHERE schemaname IN ('witness', 'authorisations')"
        ).fetchall()
    assert owners == [(conninfo_to_dict(deployment.databases["hsm-proxy"])["user"],)]


async def test_pin_attempts_are_counted_once_across_both_cosigners(
    deployment: Deployment,
) -> None:
    """A stolen phone floods both cosigners at once with wrong PINs: the attempts are counted
    in the shared database before each proof is checked, so at most MAX_PIN_ATTEMPTS proofs are
    checked in all and the key is locked for both."""
    keystore = await two_party.enrol(deployment)
    wrong = two_party.verifier_for(keystore, "314159")

    async def attempt(stub: cosigner_pb2_grpc.CosignerServiceAsyncStub) -> str:
        call = stub.Sign()
        try:
            await two_party.prove(call, keystore, wrong)
            await call.read()
        except grpc.aio.AioRpcError as exc:
            return reason_of(exc) or exc.code().name
        call.cancel()
        return "OPENED"

    channels = [deployment.public_channel(c) for c in COSIGNERS]
    try:
        stubs = [two_party.cosigner_stub(c) for c in channels]
        # Below the per-address cap of each public listener (32).
        reasons = Counter(await asyncio.gather(*(attempt(stubs[n % 2]) for n in range(2 * 30))))
    finally:
        for channel in channels:
            await channel.close()
    assert reasons == {"WRONG_PIN": MAX_PIN_ATTEMPTS - 1, "KEY_LOCKED": 60 - MAX_PIN_ATTEMPTS + 1}
    described = await two_party.get_key(deployment, keystore.key_id)
    assert (described.failed_pin_attempts, described.locked) == (MAX_PIN_ATTEMPTS, True)
    checked = sum(
        deployment.services[c]
        .log.read_text()
        .count(f'"msg": "wrong PIN", "key_id": "{keystore.key_id}"')
        for c in COSIGNERS
    )
    assert checked == MAX_PIN_ATTEMPTS


async def test_a_commitment_signed_at_one_cosigner_is_refused_at_the_other(
    deployment: Deployment,
) -> None:
    """The phone's nonce commitments are unique in the shared database: one used in a
    signature at one cosigner, replayed at the other (a new session there), gets no share."""
    keystore = await two_party.enrol(deployment)
    signer = twoparty.PhoneSigner(keystore.key_package)
    verifier = two_party.verifier_for(keystore)
    channels = [deployment.public_channel(c) for c in COSIGNERS]
    try:
        first, second = (two_party.cosigner_stub(c).Sign() for c in channels)
        await two_party.until_ready(first, keystore, verifier)
        request = signer.request(b"signed at the first cosigner")
        await two_party.send(
            first, cosigner_pb2.SignRequest(commit=wire.sign_commit_to_proto(request))
        )
        share = (await two_party.next_step(first, "share")).share
        report = signer.receive_response(wire.sign_share_from_proto(share))
        await two_party.send(
            first,
            cosigner_pb2.SignRequest(report=cosigner_pb2.SignReport(signature=report.signature)),
        )
        assert await two_party.close_session(first) == 1
        await two_party.until_ready(second, keystore, verifier)
        replay = cosigner_pb2.SignCommit(
            message=b"another message at the second cosigner",
            hiding_commitment=request.hiding_commitment,
            binding_commitment=request.binding_commitment,
        )
        await two_party.send(second, cosigner_pb2.SignRequest(commit=replay))
        await two_party.expect_status(second, two_party.Code.INVALID_ARGUMENT, "REPLAYED_MESSAGE")
    finally:
        for channel in channels:
            await channel.close()
