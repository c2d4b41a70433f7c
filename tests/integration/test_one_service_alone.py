"""One service alone, compromised, against real processes: the attack of issue 9 tried again
with the credentials of ONE service only, its client certificate from the development PKI and
everything in its state directory (``compromised.py`` says what each attacker holds).

An honest user first signs and decrypts once each, and co-signs two more records that the
gateway keeps for itself instead of logging them (a compromised gateway sees every co-signed
record before it logs it). Then the gateway, the cosigner and the RA each try, alone, to use an
organisation key, to issue or certify, or to get a checkpoint signed that rewrites the log; each
step is refused with a stable gRPC code and reason. Last, an honest phone still works and the
audit log holds the honest uses' entries and nothing else.

Each test's docstring names the promise it checks; ``docs/threat-model.md`` cites the tests.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, utils

import client
from mobilesign import auditlog, grants, pkix, records
from mobilesign.errors import Kind
from mobilesign.testing import Deployment
from mobilesign.v1 import cosigner_pb2, gateway_pb2, hsm_pb2, hsm_pb2_grpc, ra_pb2
from tests.integration import compromised, escrow
from tests.integration.compromised import Attacker, acting_as, refused

pytestmark = pytest.mark.integration

Code = grpc.StatusCode
Authorisation = hsm_pb2.OrganisationKeyAuthorisation
SIGN, DECRYPT = "sign", "decrypt"
OPERATIONS = (SIGN, DECRYPT)
_API_OPERATIONS = {SIGN: gateway_pb2.OPERATION_SIGN_DIGEST, DECRYPT: gateway_pb2.OPERATION_DECRYPT}
_RECORD_OPERATIONS = {
    SIGN: records.Operation.SIGN_ECDSA_SHA256,
    DECRYPT: records.Operation.DECRYPT_RSA_OAEP_SHA256,
}
PURPOSES = {
    "organisation": hsm_pb2.KEY_PURPOSE_ORGANISATION,
    "ca": hsm_pb2.KEY_PURPOSE_CA,
    "ticket": hsm_pb2.KEY_PURPOSE_TICKET,
    "grant": hsm_pb2.KEY_PURPOSE_GRANT,
    "log": hsm_pb2.KEY_PURPOSE_LOG,
}
ADMIN_METHODS = tuple(
    method.name for method in ra_pb2.DESCRIPTOR.services_by_name["AdminService"].methods
)
NOT_AUTHORISED = (Code.PERMISSION_DENIED, "CALLER_NOT_AUTHORISED")


# The scene: an organisation, an honest user's uses, and what the gateway kept ----------------


@dataclass(frozen=True)
class Asked:
    """A use the honest user asked for, and the id of the record the gateway made for it."""

    operation: str
    key_id: str
    grant_id: str
    data: bytes
    record_id: str


@dataclass(frozen=True)
class Scene:
    """What the module's tests start from."""

    organisation: escrow.Organisation
    user_id: str
    #: The honest user's key (the joint Ed25519 key's id).
    user_key_id: str
    #: Key ids by purpose (for "organisation", the EC key), as an administrator lists them.
    keys: dict[str, str]
    #: One use of each operation, logged and executed.
    logged: dict[str, Asked]
    #: One record of each operation, co-signed by the user, kept by the gateway and never
    #: logged: what it asked, the record's bytes and the user's signature.
    kept: dict[str, tuple[Asked, bytes, bytes]]
    #: Entries the honest uses put in the log (a record and an outcome each).
    entries: int

    def key_id(self, operation: str) -> str:
        """The organisation key for ``operation``: EC for signing, RSA for decryption."""
        key = self.organisation.seal if operation == SIGN else self.organisation.encryption
        return key.key_id

    def certificate(self, operation: str) -> bytes:
        """That key's certificate."""
        key = self.organisation.seal if operation == SIGN else self.organisation.encryption
        return key.certificate


def _input(organisation: escrow.Organisation, operation: str, what: bytes) -> bytes:
    """A digest to sign, or a ciphertext for the RSA organisation key."""
    if operation == SIGN:
        return hashlib.sha256(what).digest()
    public = x509.load_der_x509_certificate(organisation.encryption.certificate).public_key()
    assert isinstance(public, rsa.RSAPublicKey)
    return public.encrypt(what, padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None))


async def _stage(deployment: Deployment) -> Scene:
    organisation = await escrow.organisation(deployment, "lone")
    phone = await escrow.phone(deployment, organisation, "alice")
    logged: dict[str, Asked] = {}
    kept: dict[str, tuple[Asked, bytes, bytes]] = {}
    try:
        for operation in OPERATIONS:
            key = organisation.seal if operation == SIGN else organisation.encryption
            grant = await escrow.grant(deployment, phone.user_id, key, [_API_OPERATIONS[operation]])
            data = _input(organisation, operation, b"honest " + operation.encode())
            use = await phone.gateway.use_key(
                phone.signing,
                grant_id=grant.grant_id,
                operation=_API_OPERATIONS[operation],
                data=data,
                purpose="tests",
                trust=organisation.trust,
            )
            logged[operation] = Asked(
                operation, key.key_id, grant.grant_id, data, use.record.record_id
            )
        # The same phone through a gateway that keeps what the phone co-signs.
        async with deployment.public_channel("gateway") as upstream:
            gateway = compromised.InterceptingGateway(upstream)
            async with gateway.serving() as channel:
                session = client.GatewaySession(channel, phone.keystore)
                await session.login()
                for operation in OPERATIONS:
                    asked = logged[operation]
                    data = _input(organisation, operation, b"kept " + operation.encode())
                    with pytest.raises(client.ClientError) as info:
                        await session.use_key(
                            phone.signing,
                            grant_id=asked.grant_id,
                            operation=_API_OPERATIONS[operation],
                            data=data,
                            purpose="tests",
                            trust=organisation.trust,
                        )
                    # Co-signed and sent for execution, which the gateway did not do.
                    assert info.value.reason == "UNAVAILABLE", info.value
                    request = gateway.kept[-1]
                    kept[operation] = (
                        dataclasses.replace(asked, data=data, record_id=request.record_id),
                        request.record,
                        request.user_signature,
                    )
    finally:
        await phone.close()
    async with deployment.channel("hsm-proxy", "admin") as channel:
        stub = hsm_pb2_grpc.HsmServiceStub(channel)
        keys = {}
        for name, purpose in PURPOSES.items():
            listed = await stub.ListKeys(hsm_pb2.ListKeysRequest(purpose=purpose))
            keys[name] = listed.keys[0].key_id
    keys["organisation"] = organisation.seal.key_id
    entries = await escrow.log_size(deployment)  # also has the honest gateway witness them all
    assert entries == 2 * len(logged)
    return Scene(organisation, phone.user_id, phone.keystore.key_id, keys, logged, kept, entries)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """The four services, one state directory (each service its own folder in it)."""
    deployment = Deployment(tmp_path_factory.mktemp("one-service-alone"))
    try:
        deployment.start_all()
        yield deployment
    finally:
        deployment.stop_all()


@pytest.fixture(scope="module")
def scene(deployment: Deployment) -> Scene:
    """The honest user's uses and kept records, made once for the module."""
    return asyncio.run(_stage(deployment))


def _use_key(
    stub: hsm_pb2_grpc.HsmServiceAsyncStub,
    operation: str,
    key_id: str,
    data: bytes,
    authorisation: Authorisation | None = None,
) -> Awaitable[object]:
    """SignDigest (ECDSA) or Decrypt (OAEP) with an organisation key."""
    if operation == SIGN:
        return stub.SignDigest(
            hsm_pb2.SignDigestRequest(
                key_id=key_id,
                mechanism=hsm_pb2.SIGNATURE_MECHANISM_ECDSA_SHA256,
                digest=data,
                authorisation=authorisation,
            )
        )
    return stub.Decrypt(
        hsm_pb2.DecryptRequest(
            key_id=key_id,
            mechanism=hsm_pb2.DECRYPT_MECHANISM_RSA_OAEP_SHA256,
            ciphertext=data,
            authorisation=authorisation,
        )
    )


def _record(
    scene: Scene,
    operation: str,
    data: bytes,
    user_key: ed25519.Ed25519PrivateKey,
    certificate: bytes,
    grant_id: str,
) -> bytes:
    """A record made up for the honest user, naming ``user_key`` and ``certificate``."""
    return records.ServiceRecord(
        record_id=secrets.token_hex(16),
        user_id=scene.user_id,
        user_key_id=compromised.raw_key_id(user_key),
        certificate_serial=compromised.serial_of(certificate),
        organisation_key_id=scene.key_id(operation),
        organisation_certificate_sha256=hashlib.sha256(scene.certificate(operation)).digest(),
        operation=_RECORD_OPERATIONS[operation],
        input_sha256=hashlib.sha256(data).digest(),
        purpose="tests",
        grant_id=grant_id,
        time_ms=int(time.time() * 1000),
        gateway_nonce=secrets.token_bytes(16),
    ).encode()


def _grant_statement(scene: Scene, operation: str) -> grants.Statement:
    """A new grant for the honest user on ``operation``'s organisation key, valid for an hour,
    with the largest quotas."""
    now = int(time.time())
    return grants.Statement(
        grant_id=secrets.token_hex(16),
        user_id=scene.user_id,
        key_id=scene.key_id(operation),
        operations=(operation,),
        not_before=now - 60,
        not_after=now + 3600,
        quota_total=grants.MAX_QUOTA,
        quota_daily=grants.MAX_QUOTA,
        purpose="tests",
        issued_at=now,
    )


def _have_signed(purpose: str, key: compromised.TokenKey, scene: Scene) -> Awaitable[object]:
    """Have the token key ``key`` of ``purpose`` sign what the attacker of issue 9 wanted: an
    enrolment ticket for the honest user, a certificate naming the user for a key of the
    attacker's, a grant with unlimited quotas, a checkpoint of a log it made up."""
    if purpose == "ticket":
        return compromised.ticket(key, scene.user_id)
    if purpose == "ca":
        return compromised.user_certificate(
            key, scene.user_id, ed25519.Ed25519PrivateKey.generate()
        )
    if purpose == "grant":
        return compromised.signed_grant(key, _grant_statement(scene, SIGN))
    body = auditlog.Checkpoint(scene.organisation.trust.log_origin, 1, bytes(32)).to_body()
    return key.sign_digest(hashlib.sha256(body).digest())


# The gateway alone -----------------------------------------------------------------------------


async def test_gateway_alone_cannot_sign_an_enrolment_ticket(
    deployment: Deployment, scene: Scene
) -> None:
    """The gateway cannot issue an enrolment ticket: SignDigest with the ticket key is refused
    (KEY_RESERVED_FOR_RA), whatever the claims."""
    async with acting_as(deployment, "gateway") as gateway:
        await refused(
            _have_signed("ticket", compromised.TokenKey(gateway.hsm, scene.keys["ticket"]), scene),
            Code.PERMISSION_DENIED,
            "KEY_RESERVED_FOR_RA",
        )


@pytest.mark.parametrize(
    ("purpose", "reason"),
    [("ca", "KEY_RESERVED_FOR_RA"), ("grant", "KEY_RESERVED_FOR_RA"), ("log", "LOG_KEY_RESERVED")],
)
async def test_gateway_alone_cannot_sign_with_the_ca_grant_or_log_key(
    deployment: Deployment, scene: Scene, purpose: str, reason: str
) -> None:
    """The gateway cannot issue a certificate or a grant (the CA and grant keys sign for the RA
    only), nor sign a checkpoint other than through SignCheckpoint (the log key signs nothing
    else)."""
    async with acting_as(deployment, "gateway") as gateway:
        await refused(
            _have_signed(purpose, compromised.TokenKey(gateway.hsm, scene.keys[purpose]), scene),
            Code.PERMISSION_DENIED,
            reason,
        )


@pytest.mark.parametrize("purpose", list(PURPOSES))
async def test_gateway_alone_cannot_generate_a_key_pair(
    deployment: Deployment, purpose: str
) -> None:
    """The gateway cannot make keys in the token, of any purpose (GenerateKeyPair is the RA's)."""
    async with acting_as(deployment, "gateway") as gateway:
        await refused(
            gateway.hsm.GenerateKeyPair(
                hsm_pb2.GenerateKeyPairRequest(
                    label=f"gateway-{purpose}",
                    purpose=PURPOSES[purpose],
                    algorithm=hsm_pb2.KEY_ALGORITHM_EC_P256,
                )
            ),
            *NOT_AUTHORISED,
        )


async def test_gateway_alone_cannot_make_a_certificate_request(
    deployment: Deployment, scene: Scene
) -> None:
    """The gateway cannot have an organisation key sign a PKCS#10 request for a subject of its
    choosing (CreateCertificateRequest is the RA's, once per key)."""
    async with acting_as(deployment, "gateway") as gateway:
        await refused(
            gateway.hsm.CreateCertificateRequest(
                hsm_pb2.CreateCertificateRequestRequest(
                    key_id=scene.keys["organisation"],
                    subject=pkix.name({"common_name": "gateway's choice"}),
                )
            ),
            *NOT_AUTHORISED,
        )


@pytest.mark.parametrize("method", [m for m in ADMIN_METHODS if m != "ListGrants"])
async def test_gateway_alone_cannot_administer_the_ra(deployment: Deployment, method: str) -> None:
    """The gateway cannot call the RA's AdminService (users, tickets, organisations and their
    keys, grants, revocations), except ListGrants."""
    async with acting_as(deployment, "gateway") as gateway:
        await refused(_admin_call(gateway, method), *NOT_AUTHORISED)


def _admin_call(attacker: Attacker, method: str) -> Awaitable[object]:
    """``method`` of the RA's AdminService, with an empty request."""
    descriptor = ra_pb2.DESCRIPTOR.services_by_name["AdminService"].methods_by_name[method]
    request = getattr(ra_pb2, descriptor.input_type.name)()
    call: Callable[[object], Awaitable[object]] = getattr(attacker.admin, method)
    return call(request)


async def test_gateway_alone_cannot_certify_a_user_key(
    deployment: Deployment, scene: Scene
) -> None:
    """The gateway cannot obtain a personal certificate: CertifyUserKey is the cosigner's, even
    with the request and attestation a cosigner would send."""
    user_key = ed25519.Ed25519PrivateKey.generate()
    async with acting_as(deployment, "gateway") as gateway:
        await refused(
            gateway.registry.CertifyUserKey(
                ra_pb2.CertifyUserKeyRequest(
                    ticket=await compromised.ticket(compromised.SoftwareKey(), scene.user_id),
                    csr=compromised.certificate_request(scene.user_id, user_key),
                    attestation=records.KeyAttestation(
                        compromised.raw_key_id(user_key), scene.user_id, secrets.token_hex(16)
                    ).encode(),
                )
            ),
            *NOT_AUTHORISED,
        )


@pytest.mark.parametrize("subject", ["grant", "certificate", "organisation-key"])
async def test_gateway_alone_cannot_record_a_revocation(
    deployment: Deployment, scene: Scene, subject: str
) -> None:
    """The gateway cannot record revocations at the HSM proxy (only the RA pushes them)."""
    request = {
        "grant": hsm_pb2.RecordRevocationRequest(grant_id=scene.logged[SIGN].grant_id),
        "certificate": hsm_pb2.RecordRevocationRequest(certificate_serial="1f"),
        "organisation-key": hsm_pb2.RecordRevocationRequest(
            organisation_key_id=scene.keys["organisation"]
        ),
    }[subject]
    async with acting_as(deployment, "gateway") as gateway:
        await refused(gateway.hsm.RecordRevocation(request), *NOT_AUTHORISED)


async def test_gateway_alone_cannot_enrol_a_key_with_a_forged_ticket(
    deployment: Deployment, scene: Scene
) -> None:
    """Playing the user's phone at the cosigner's public KeyGen, the gateway cannot enrol a key
    with a ticket it signed itself (TICKET_FORGED, PERMISSION_DENIED)."""
    forged = await compromised.ticket(compromised.SoftwareKey(), scene.user_id)
    async with deployment.public_channel("cosigner") as channel:
        with pytest.raises(client.ClientError) as info:
            await client.enrol(channel, forged, escrow.PIN)
    assert (info.value.kind, info.value.reason) == (Kind.DENIED, "TICKET_FORGED"), info.value


# What a compromised gateway can assemble for an organisation-key use: the co-signed records it
# logged (and their entries, the RA's signed grants, from its ledger), the records it kept,
# user certificates from the RA and attestations from the cosigner (both answer the gateway).


async def _pieces(gateway: Attacker, user_key_id: str) -> tuple[bytes, bytes]:
    """The user's current certificate (from the RA) and the cosigner's attestation of the key."""
    status = await gateway.registry.GetKeyStatus(ra_pb2.GetKeyStatusRequest(key_id=user_key_id))
    key = await gateway.cosigner.GetKey(cosigner_pb2.GetKeyRequest(key_id=user_key_id))
    return status.certificate, key.attestation


async def _from_ledger(
    gateway: Attacker,
    files: compromised.GatewayFiles,
    record_id: str,
    kept: tuple[bytes, bytes] | None = None,
    entry_index: int | None = None,
) -> Authorisation:
    """Everything the gateway has for ``record_id`` (logged, or ``kept``: the record and the
    user's signature it kept from a phone's request): the record, the user's signature, the
    user's certificate, the cosigner's attestation and the signed grant, and the inclusion proof
    of entry ``entry_index`` (by default the record's own) under the last witnessed
    checkpoint."""
    signature: bytes | None
    if kept is not None:
        encoded, signature = kept
        index = entry_index
    else:
        row = files.records[record_id]
        encoded, signature = row.record, row.user_signature
        index = row.entry_index if entry_index is None else entry_index
    record = records.decode_record(encoded)
    certificate, attestation = await _pieces(gateway, record.user_key_id)
    state = await gateway.hsm.GetLogState(hsm_pb2.GetLogStateRequest())
    assert signature is not None
    assert index is not None
    return compromised.authorisation(
        encoded,
        signature,
        user_certificate=certificate,
        cosigner_attestation=attestation,
        signed_grant=files.signed_grants[record.grant_id],
        tree=files.tree,
        entry_index=index,
        tree_size=state.tree_size,
    )


Attempt = Callable[
    [Attacker, compromised.GatewayFiles, Scene, str], Awaitable[tuple[bytes, Authorisation | None]]
]


async def _no_authorisation(
    gateway: Attacker, files: compromised.GatewayFiles, scene: Scene, operation: str
) -> tuple[bytes, Authorisation | None]:
    return _input(scene.organisation, operation, b"no authorisation"), None


async def _made_up(
    gateway: Attacker, files: compromised.GatewayFiles, scene: Scene, operation: str
) -> tuple[bytes, Authorisation | None]:
    # A record for the honest user under the user's real grant, "co-signed" with a software
    # key certified by a CA of the gateway's own, and put in the gateway's copy of the log.
    data = _input(scene.organisation, operation, b"made up")
    user_key = ed25519.Ed25519PrivateKey.generate()
    certificate = await compromised.user_certificate(
        compromised.SoftwareKey(), scene.user_id, user_key
    )
    grant_id = scene.logged[operation].grant_id
    record = _record(scene, operation, data, user_key, certificate, grant_id)
    signature = user_key.sign(record)
    _, attestation = await _pieces(gateway, scene.user_key_id)
    leaves = [*files.leaves, auditlog.leaf_hash(compromised.entry_of(record, signature))]
    return data, compromised.authorisation(
        record,
        signature,
        user_certificate=certificate,
        cosigner_attestation=attestation,
        signed_grant=files.signed_grants[grant_id],
        tree=auditlog.MerkleTree.from_leaves(leaves),
        entry_index=len(leaves) - 1,
        tree_size=len(leaves),
    )


async def _replayed(
    gateway: Attacker, files: compromised.GatewayFiles, scene: Scene, operation: str
) -> tuple[bytes, Authorisation | None]:
    # Exactly what the gateway presented for the honest use, once more.
    asked = scene.logged[operation]
    return asked.data, await _from_ledger(gateway, files, asked.record_id)


async def _altered(
    gateway: Attacker, files: compromised.GatewayFiles, scene: Scene, operation: str
) -> tuple[bytes, Authorisation | None]:
    # The honest record for other data, under a new record id (not a replay).
    asked = scene.logged[operation]
    data = _input(scene.organisation, operation, b"altered")
    authorisation = await _from_ledger(gateway, files, asked.record_id)
    record = dataclasses.replace(
        records.decode_record(authorisation.record),
        record_id=secrets.token_hex(16),
        input_sha256=hashlib.sha256(data).digest(),
    )
    authorisation.record = record.encode()
    return data, authorisation


async def _kept(
    gateway: Attacker,
    files: compromised.GatewayFiles,
    scene: Scene,
    operation: str,
    entry_index: int = 0,
) -> tuple[Asked, Authorisation]:
    """A record the user co-signed and the gateway kept, claimed to be entry ``entry_index``
    of the witnessed log."""
    asked, record, signature = scene.kept[operation]
    return asked, await _from_ledger(
        gateway, files, asked.record_id, (record, signature), entry_index
    )


async def _forged_grant(
    gateway: Attacker, files: compromised.GatewayFiles, scene: Scene, operation: str
) -> tuple[bytes, Authorisation | None]:
    # A kept record with the user's grant re-signed by the gateway, its quotas raised.
    asked, authorisation = await _kept(gateway, files, scene, operation)
    envelope = gateway_pb2.SignedGrant.FromString(authorisation.signed_grant)
    statement = gateway_pb2.GrantStatement.FromString(envelope.statement)
    statement.quota_total = statement.quota_daily = grants.MAX_QUOTA
    encoded = statement.SerializeToString(deterministic=True)
    signature = await compromised.SoftwareKey().sign_digest(grants.signing_digest(encoded))
    authorisation.signed_grant = grants.assemble(encoded, signature)
    return asked.data, authorisation


async def _no_grant(
    gateway: Attacker, files: compromised.GatewayFiles, scene: Scene, operation: str
) -> tuple[bytes, Authorisation | None]:
    asked, authorisation = await _kept(gateway, files, scene, operation)
    authorisation.signed_grant = b""
    return asked.data, authorisation


async def _not_witnessed(
    gateway: Attacker, files: compromised.GatewayFiles, scene: Scene, operation: str
) -> tuple[bytes, Authorisation | None]:
    # A kept record in the gateway's own continuation of the log, which no checkpoint covers.
    asked, authorisation = await _kept(gateway, files, scene, operation)
    entry = compromised.entry_of(authorisation.record, authorisation.user_signature)
    leaves = [*files.leaves, auditlog.leaf_hash(entry)]
    size = len(leaves)
    authorisation.entry_index = size - 1
    authorisation.tree_size = size
    del authorisation.inclusion_proof[:]
    authorisation.inclusion_proof.extend(
        auditlog.MerkleTree.from_leaves(leaves).inclusion_proof(size - 1, size)
    )
    return asked.data, authorisation


async def _not_in_log(
    gateway: Attacker, files: compromised.GatewayFiles, scene: Scene, operation: str
) -> tuple[bytes, Authorisation | None]:
    # A kept record claimed to be the honest record's entry, with that entry's proof.
    index = files.records[scene.logged[operation].record_id].entry_index
    assert index is not None
    asked, authorisation = await _kept(gateway, files, scene, operation, index)
    return asked.data, authorisation


ATTEMPTS: dict[str, tuple[Attempt, str]] = {
    "no-authorisation": (_no_authorisation, "AUTHORISATION_REQUIRED"),
    "made-up-record": (_made_up, "USER_CERTIFICATE_UNTRUSTED"),
    "replayed-record": (_replayed, "AUTHORISATION_REPLAYED"),
    "altered-record": (_altered, "USER_SIGNATURE_INVALID"),
    "forged-grant": (_forged_grant, "GRANT_FORGED"),
    "no-grant": (_no_grant, "GRANT_REQUIRED"),
    "record-not-witnessed": (_not_witnessed, "RECORD_NOT_WITNESSED"),
    "record-not-in-log": (_not_in_log, "RECORD_NOT_IN_LOG"),
}


@pytest.mark.parametrize("attempt", list(ATTEMPTS))
@pytest.mark.parametrize("operation", OPERATIONS)
async def test_gateway_alone_cannot_use_an_organisation_key(
    deployment: Deployment, scene: Scene, operation: str, attempt: str
) -> None:
    """The gateway alone cannot make an organisation key sign or decrypt: not without an
    authorisation; not with a record it made up, "co-signed" with a software key it certified
    itself (USER_CERTIFICATE_UNTRUSTED); not with a real co-signed record from its log presented
    again (AUTHORISATION_REPLAYED) or altered (USER_SIGNATURE_INVALID); not with a grant it
    signed (GRANT_FORGED) or none (GRANT_REQUIRED); and not with a record the user co-signed but
    the gateway kept out of the witnessed log (RECORD_NOT_WITNESSED, RECORD_NOT_IN_LOG). The
    proxy counts no use."""
    build, reason = ATTEMPTS[attempt]
    async with acting_as(deployment, "gateway") as gateway:
        files = compromised.GatewayFiles.read(gateway.state)
        data, authorisation = await build(gateway, files, scene, operation)
        await refused(
            _use_key(gateway.hsm, operation, scene.key_id(operation), data, authorisation),
            Code.PERMISSION_DENIED,
            reason,
        )
    async with deployment.channel("hsm-proxy", "ra") as channel:
        usage = await hsm_pb2_grpc.HsmServiceStub(channel).GetGrantUsage(
            hsm_pb2.GetGrantUsageRequest(grant_ids=[scene.logged[operation].grant_id])
        )
    assert usage.usage[0].used_total == 1


def _checkpoint_request(
    old: int, size: int, tree: auditlog.MerkleTree, proof: list[bytes]
) -> hsm_pb2.SignCheckpointRequest:
    return hsm_pb2.SignCheckpointRequest(
        old_size=old, tree_size=size, root_hash=tree.root(size), consistency_proof=proof
    )


CHECKPOINT_ATTEMPTS = {
    # Same size, another root: the first entry rewritten.
    "fork": lambda w, honest, forged: _checkpoint_request(w, w, forged, []),
    # A smaller tree, the honest one cut short.
    "truncation": lambda w, honest, forged: _checkpoint_request(w, w - 1, honest, []),
    # A bigger tree over the rewritten history, with its own consistency proof.
    "rewrite": lambda w, honest, forged: _checkpoint_request(
        w, w + 1, forged, forged.consistency_proof(w, w + 1)
    ),
    # The rewritten tree with the proof an honest extension would have.
    "rewrite-with-an-honest-proof": lambda w, honest, forged: _checkpoint_request(
        w, w + 1, forged, honest.consistency_proof(w, w + 1)
    ),
    # Pretending nothing was ever signed.
    "new-log": lambda w, honest, forged: _checkpoint_request(0, w + 1, forged, []),
}


@pytest.mark.parametrize(
    ("attempt", "reason"),
    [
        ("fork", "CHECKPOINT_INCONSISTENT"),
        ("truncation", "CHECKPOINT_INCONSISTENT"),
        ("rewrite", "CHECKPOINT_INCONSISTENT"),
        ("rewrite-with-an-honest-proof", "CHECKPOINT_INCONSISTENT"),
        ("new-log", "WITNESS_STATE_STALE"),
    ],
)
async def test_gateway_alone_cannot_get_an_inconsistent_checkpoint_signed(
    deployment: Deployment, scene: Scene, attempt: str, reason: str
) -> None:
    """The gateway, with the log's entries from its ledger, cannot get a checkpoint signed that
    is inconsistent with the last one the HSM proxy signed: no fork (same size, other root), no
    truncation (smaller size), no rewrite (bigger tree whose consistency proof from the signed
    one fails), no fresh start; the proxy's log state does not move."""
    async with acting_as(deployment, "gateway") as gateway:
        files = compromised.GatewayFiles.read(gateway.state)
        state = await gateway.hsm.GetLogState(hsm_pb2.GetLogStateRequest())
        witnessed = state.tree_size
        assert witnessed >= 2
        honest = auditlog.MerkleTree.from_leaves([*files.leaves[:witnessed], _leaf(b"next")])
        assert honest.root(witnessed) == state.root_hash  # the ledger is the witnessed log
        rewritten = [
            _leaf(b"an entry the gateway would rather have logged"),
            *files.leaves[1:witnessed],
            _leaf(b"next"),
        ]
        forged = auditlog.MerkleTree.from_leaves(rewritten)
        request = CHECKPOINT_ATTEMPTS[attempt](witnessed, honest, forged)
        await refused(gateway.hsm.SignCheckpoint(request), Code.FAILED_PRECONDITION, reason)
        assert await gateway.hsm.GetLogState(hsm_pb2.GetLogStateRequest()) == state


def _leaf(entry: bytes) -> bytes:
    return auditlog.leaf_hash(entry)


# The cosigner alone ----------------------------------------------------------------------------


@pytest.mark.parametrize("operation", OPERATIONS)
async def test_cosigner_alone_cannot_use_an_organisation_key(
    deployment: Deployment, scene: Scene, operation: str
) -> None:
    """The cosigner cannot make an organisation key sign or decrypt: the HSM proxy refuses its
    identity (CALLER_NOT_AUTHORISED), before looking at any authorisation."""
    data = _input(scene.organisation, operation, b"cosigner")
    async with acting_as(deployment, "cosigner") as cosigner:
        await refused(
            _use_key(cosigner.hsm, operation, scene.key_id(operation), data, Authorisation()),
            *NOT_AUTHORISED,
        )


@pytest.mark.parametrize("purpose", ["ca", "ticket", "grant", "log"])
async def test_cosigner_alone_cannot_sign_with_or_make_a_service_key(
    deployment: Deployment, scene: Scene, purpose: str
) -> None:
    """The cosigner cannot sign with the CA, ticket, grant or log key, nor make a key of any of
    those purposes (CALLER_NOT_AUTHORISED): it may only seal and unseal."""
    async with acting_as(deployment, "cosigner") as cosigner:
        await refused(
            _have_signed(purpose, compromised.TokenKey(cosigner.hsm, scene.keys[purpose]), scene),
            *NOT_AUTHORISED,
        )
        await refused(
            cosigner.hsm.GenerateKeyPair(
                hsm_pb2.GenerateKeyPairRequest(
                    label=f"cosigner-{purpose}",
                    purpose=PURPOSES[purpose],
                    algorithm=hsm_pb2.KEY_ALGORITHM_EC_P256,
                )
            ),
            *NOT_AUTHORISED,
        )


@pytest.mark.parametrize(
    ("ticket", "code", "reason"),
    [
        ("forged", Code.PERMISSION_DENIED, "TICKET_FORGED"),
        ("none", Code.INVALID_ARGUMENT, "TICKET_MALFORMED"),
    ],
)
async def test_cosigner_alone_cannot_certify_a_key_without_a_ticket_from_the_ra(
    deployment: Deployment, scene: Scene, ticket: str, code: grpc.StatusCode, reason: str
) -> None:
    """The cosigner cannot obtain a personal certificate for a key of its own (a software key,
    with a CSR the key signed and an attestation the cosigner wrote) without a ticket the RA
    issued: a ticket it signed itself is TICKET_FORGED, no ticket TICKET_MALFORMED."""
    user_key = ed25519.Ed25519PrivateKey.generate()
    forged = await compromised.ticket(compromised.SoftwareKey(), scene.user_id)
    ticket_id = tickets_id(forged)
    async with acting_as(deployment, "cosigner") as cosigner:
        await refused(
            cosigner.registry.CertifyUserKey(
                ra_pb2.CertifyUserKeyRequest(
                    ticket=forged if ticket == "forged" else b"",
                    csr=compromised.certificate_request(scene.user_id, user_key),
                    attestation=records.KeyAttestation(
                        compromised.raw_key_id(user_key), scene.user_id, ticket_id
                    ).encode(),
                )
            ),
            code,
            reason,
        )


def tickets_id(ticket: bytes) -> str:
    """The ticket id in a ticket's claims."""
    signed = ra_pb2.SignedEnrolmentTicket.FromString(ticket)
    return ra_pb2.EnrolmentTicketClaims.FromString(signed.claims).ticket_id


@pytest.mark.parametrize("method", ADMIN_METHODS)
async def test_cosigner_alone_cannot_administer_the_ra(deployment: Deployment, method: str) -> None:
    """The cosigner cannot call any method of the RA's AdminService."""
    async with acting_as(deployment, "cosigner") as cosigner:
        await refused(_admin_call(cosigner, method), *NOT_AUTHORISED)


# The RA alone ----------------------------------------------------------------------------------


async def _ra_authorisation(
    ra: Attacker, scene: Scene, operation: str, attestation: bytes, data: bytes
) -> Authorisation:
    """The most the RA can assemble on its own: a grant it signs with the grant key, a
    certificate its CA key issues for a software key, and a record that key "co-signs"; the
    place in the log is left for the caller to fill in."""
    user_key = ed25519.Ed25519PrivateKey.generate()
    certificate = await compromised.user_certificate(
        compromised.TokenKey(ra.hsm, scene.keys["ca"]), scene.user_id, user_key
    )
    statement = _grant_statement(scene, operation)
    signed = await compromised.signed_grant(
        compromised.TokenKey(ra.hsm, scene.keys["grant"]), statement
    )
    record = _record(scene, operation, data, user_key, certificate, statement.grant_id)
    return Authorisation(
        record=record,
        user_signature=user_key.sign(record),
        user_certificate=certificate,
        cosigner_attestation=attestation,
        signed_grant=signed,
    )


@pytest.mark.parametrize("operation", OPERATIONS)
async def test_ra_alone_cannot_use_an_organisation_key(
    deployment: Deployment, scene: Scene, operation: str
) -> None:
    """The RA cannot make an organisation key sign or decrypt, even with a grant it signed and
    a certificate it issued: the HSM proxy refuses its identity (organisation keys are used for
    the gateway only)."""
    data = _input(scene.organisation, operation, b"ra")
    reason = "KEY_RESERVED_FOR_GATEWAY" if operation == SIGN else "CALLER_NOT_AUTHORISED"
    async with acting_as(deployment, "ra") as ra:
        authorisation = await _ra_authorisation(ra, scene, operation, b"", data)
        await refused(
            _use_key(ra.hsm, operation, scene.key_id(operation), data, authorisation),
            Code.PERMISSION_DENIED,
            reason,
        )


@pytest.mark.parametrize(
    ("help_", "log", "reason"),
    [
        # Alone, the RA cannot seal an attestation (Seal is the cosigner's).
        ("none", "own-continuation", "COSIGNER_ATTESTATION_INVALID"),
        # Even with the cosigner's seal, a record outside the witnessed log is refused.
        ("cosigner-seal", "own-continuation", "RECORD_NOT_WITNESSED"),
        ("cosigner-seal", "witnessed-tree", "RECORD_NOT_IN_LOG"),
    ],
)
@pytest.mark.parametrize("operation", OPERATIONS)
async def test_ra_alone_cannot_use_an_organisation_key_without_a_logged_record(
    deployment: Deployment, scene: Scene, operation: str, help_: str, log: str, reason: str
) -> None:
    """The RA's own grant and a certificate it issues for a software key do not get an
    organisation key used, even when the authorisation is presented with the gateway's
    identity: without the cosigner the attestation is missing (COSIGNER_ATTESTATION_INVALID),
    and with a cosigner's seal too the record is still not in the log, which the RA cannot
    write to: claimed in a continuation of the public log that no checkpoint covers
    (RECORD_NOT_WITNESSED), or in the witnessed tree (RECORD_NOT_IN_LOG)."""
    data = _input(scene.organisation, operation, b"ra with help")
    async with acting_as(deployment, "ra") as ra:
        # The RA has no sealing key of its own.
        await refused(ra.hsm.Seal(hsm_pb2.SealRequest(plaintext=b"x")), *NOT_AUTHORISED)
        authorisation = await _ra_authorisation(ra, scene, operation, b"", data)
        user_key_id = records.decode_record(authorisation.record).user_key_id
        attestation = records.KeyAttestation(user_key_id, scene.user_id, secrets.token_hex(16))
        if help_ == "cosigner-seal":
            async with deployment.channel("hsm-proxy", "cosigner") as channel:
                sealed = await hsm_pb2_grpc.HsmServiceStub(channel).Seal(
                    hsm_pb2.SealRequest(
                        plaintext=attestation.encode(),
                        associated_data=records.KEY_ATTESTATION_AAD,
                    )
                )
            authorisation.cosigner_attestation = sealed.sealed
        else:
            # What the RA receives from the cosigner in CertifyUserKey: the plaintext.
            authorisation.cosigner_attestation = attestation.encode()
    # The public log, as anyone reads it from the gateway.
    async with deployment.public_channel("gateway") as channel:
        public = escrow.public(channel)
        note = (await public.GetCheckpoint(gateway_pb2.GetCheckpointRequest())).checkpoint
        size = int(note.split(b"\n")[1])
        entries = [
            (await public.GetLogEntry(gateway_pb2.GetLogEntryRequest(entry_index=i))).entry
            for i in range(size)
        ]
    leaves = [_leaf(e) for e in entries]
    if log == "own-continuation":
        leaves.append(
            _leaf(compromised.entry_of(authorisation.record, authorisation.user_signature))
        )
    index, tree_size = len(leaves) - 1, len(leaves)
    authorisation.entry_index = index
    authorisation.tree_size = tree_size
    authorisation.inclusion_proof.extend(
        auditlog.MerkleTree.from_leaves(leaves).inclusion_proof(index, tree_size)
    )
    async with deployment.channel("hsm-proxy", "gateway") as channel:
        await refused(
            _use_key(
                hsm_pb2_grpc.HsmServiceStub(channel),
                operation,
                scene.key_id(operation),
                data,
                authorisation,
            ),
            Code.PERMISSION_DENIED,
            reason,
        )


async def test_ra_alone_cannot_sign_a_checkpoint(deployment: Deployment, scene: Scene) -> None:
    """The RA cannot get a checkpoint signed, not even one that extends the log correctly
    (SignCheckpoint is the gateway's), nor sign with the log key directly
    (LOG_KEY_RESERVED)."""
    async with deployment.public_channel("gateway") as channel:
        note = (
            await escrow.public(channel).GetCheckpoint(gateway_pb2.GetCheckpointRequest())
        ).checkpoint
    lines = note.split(b"\n")
    size, root = int(lines[1]), base64.b64decode(lines[2])
    async with acting_as(deployment, "ra") as ra:
        await refused(
            ra.hsm.SignCheckpoint(
                hsm_pb2.SignCheckpointRequest(old_size=size, tree_size=size, root_hash=root)
            ),
            *NOT_AUTHORISED,
        )
        await refused(
            _have_signed("log", compromised.TokenKey(ra.hsm, scene.keys["log"]), scene),
            Code.PERMISSION_DENIED,
            "LOG_KEY_RESERVED",
        )


# Afterwards ------------------------------------------------------------------------------------


async def test_an_honest_phone_still_works_and_the_log_holds_only_honest_entries(
    deployment: Deployment, scene: Scene
) -> None:
    """After every attack above, an honest phone still enrols, is certified and signs with an
    organisation key end to end (receipt verified); the audit log holds exactly the honest uses'
    entries (a record and an outcome each), the HSM proxy counted one use per honest use, and
    its witnessed state is a checkpoint of that log."""
    phone = await escrow.phone(deployment, scene.organisation, "bob")
    try:
        grant = await escrow.grant(
            deployment, phone.user_id, scene.organisation.seal, [gateway_pb2.OPERATION_SIGN_DIGEST]
        )
        digest = hashlib.sha256(b"still works").digest()
        use = await phone.gateway.use_key(
            phone.signing,
            grant_id=grant.grant_id,
            operation=gateway_pb2.OPERATION_SIGN_DIGEST,
            data=digest,
            purpose="tests",
            trust=scene.organisation.trust,
        )
    finally:
        await phone.close()
    public_key = x509.load_der_x509_certificate(scene.certificate(SIGN)).public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    public_key.verify(use.result, digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
    size = await escrow.log_size(deployment)
    assert size == scene.entries + 2
    honest = {a.record_id for a in scene.logged.values()} | {use.record.record_id}
    async with deployment.public_channel("gateway") as channel:
        public = escrow.public(channel)
        logged = [
            records.decode_entry(
                (await public.GetLogEntry(gateway_pb2.GetLogEntryRequest(entry_index=i))).entry
            )
            for i in range(size)
        ]
    record_ids = [
        records.decode_record(e.record).record_id
        for e in logged
        if isinstance(e, records.RecordEntry)
    ]
    outcomes = [e for e in logged if isinstance(e, records.OutcomeEntry)]
    assert sorted(record_ids) == sorted(honest)
    assert sorted(o.record_id for o in outcomes) == sorted(honest)
    assert all(o.succeeded for o in outcomes)
    grant_ids = [a.grant_id for a in scene.logged.values()] + [grant.grant_id]
    async with deployment.channel("hsm-proxy", "admin") as channel:
        stub = hsm_pb2_grpc.HsmServiceStub(channel)
        usage = await stub.GetGrantUsage(hsm_pb2.GetGrantUsageRequest(grant_ids=grant_ids))
        state = await stub.GetLogState(hsm_pb2.GetLogStateRequest())
    assert [u.used_total for u in usage.usage] == [1] * len(grant_ids)
    files = compromised.GatewayFiles.read(deployment.state_dir / "gateway")
    assert state.tree_size <= size
    assert files.tree.root(state.tree_size) == state.root_hash
