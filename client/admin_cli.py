"""The administrator's tool (``mobilesign-admin``): organisations and their keys and
certificates (S1), users, enrolment tickets (text and a terminal QR code for the phone), grants,
revocation of certificates and grants, unlocking a user key locked after wrong PINs, the
applications that may call the gateway's CSC endpoint, and the audit log (entries decoded, a
record's receipt verified, consistency with a saved checkpoint).

It calls the services' internal listeners over mutual TLS as the ``admin`` identity: by default
the certificate of the state directory's development PKI, or the files given with ``--cert``,
``--key`` and ``--ca``. Receipts and checkpoints are checked with the offline verifier against
the log key the HSM proxy (the log's witness) reports and the CA certificate, not the gateway's
word alone.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc
import segno
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from client.cli import Commands, Shared, UsageError, default_state_dir, run, ticket_text
from client.verifier import receipt_to_json, verify_consistency, verify_receipt
from mobilesign import auditlog, records
from mobilesign.rpc import channels
from mobilesign.v1 import (
    cosigner_pb2,
    cosigner_pb2_grpc,
    csc_pb2,
    csc_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
    hsm_pb2,
    hsm_pb2_grpc,
    ra_pb2,
    ra_pb2_grpc,
)

PROG = "mobilesign-admin"
_T = TypeVar("_T")

SHARED = (
    Shared(
        ("--state-dir",),
        "state directory whose dev PKI holds the admin certificate "
        "(default: $MOBILESIGN_STATE_DIR, else var)",
    ),
    Shared(("--ra",), "RA internal address", "127.0.0.1:50054"),
    Shared(("--gateway",), "gateway internal address", "127.0.0.1:50053"),
    Shared(("--cosigner",), "cosigner internal address", "127.0.0.1:50052"),
    Shared(("--hsm-proxy",), "HSM proxy internal address", "127.0.0.1:50051"),
    Shared(("--cert",), "admin client certificate (default: STATE_DIR/pki/admin.pem)"),
    Shared(("--key",), "its private key (default: STATE_DIR/pki/admin.key)"),
    Shared(("--ca",), "CA of the internal certificates (default: STATE_DIR/pki/ca.pem)"),
)

ALGORITHMS = {
    "ec-p256": gateway_pb2.ORGANISATION_KEY_ALGORITHM_EC_P256,
    "rsa-2048": gateway_pb2.ORGANISATION_KEY_ALGORITHM_RSA_2048,
    "rsa-3072": gateway_pb2.ORGANISATION_KEY_ALGORITHM_RSA_3072,
}
_ALGORITHM_NAMES = {value: name for name, value in ALGORITHMS.items()}
OPERATIONS = {"sign": gateway_pb2.OPERATION_SIGN_DIGEST, "decrypt": gateway_pb2.OPERATION_DECRYPT}
_OPERATION_NAMES = {value: name for name, value in OPERATIONS.items()}
REASONS = {
    name.removeprefix("REVOCATION_REASON_").lower().replace("_", "-"): value
    for name, value in gateway_pb2.RevocationReason.items()
}
_STATUS_NAMES = {
    value: name.removeprefix("CERTIFICATE_STATUS_").lower()
    for name, value in gateway_pb2.CertificateStatus.items()
}


def _credential(args: argparse.Namespace) -> channels.Credential:
    pki = Path(args.state_dir or default_state_dir()) / "pki"
    credential = channels.Credential(
        "admin",
        Path(args.cert or pki / "admin.pem"),
        Path(args.key or pki / "admin.key"),
        Path(args.ca or pki / "ca.pem"),
    )
    for path in (credential.cert, credential.key, credential.ca):
        if not path.exists():
            raise UsageError(f"no such file: {path} (give --state-dir, or --cert, --key, --ca)")
    return credential


def _call(
    args: argparse.Namespace, service: str, make: Callable[[grpc.aio.Channel], Awaitable[_T]]
) -> _T:
    """Run ``make`` on a mutual-TLS channel to ``service`` (its name is also the identity its
    certificate must carry)."""
    address = getattr(args, service.replace("-", "_"))
    credential = _credential(args)

    async def go() -> _T:
        async with channels.mutual_tls(address, credential, service) as channel:
            return await make(channel)

    return asyncio.run(go())


def _ra(args: argparse.Namespace, method: str, request: Any) -> Any:
    async def call(channel: grpc.aio.Channel) -> Any:
        return await getattr(ra_pb2_grpc.AdminServiceStub(channel), method)(request, timeout=30)

    return _call(args, "ra", call)


def _csc_admin(args: argparse.Namespace, method: str, request: Any) -> Any:
    async def call(channel: grpc.aio.Channel) -> Any:
        stub = csc_pb2_grpc.CscAdminServiceStub(channel)
        return await getattr(stub, method)(request, timeout=30)

    return _call(args, "gateway", call)


def _gateway(args: argparse.Namespace, method: str, request: Any) -> Any:
    async def call(channel: grpc.aio.Channel) -> Any:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        return await getattr(stub, method)(request, timeout=30)

    return _call(args, "gateway", call)


def _when(unix: int) -> str:
    return datetime.datetime.fromtimestamp(unix, datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _time(text: str) -> int:
    """Unix seconds from an ISO 8601 date or time (UTC unless it says otherwise)."""
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"not an ISO 8601 date or time: {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return int(moment.timestamp())


def _write_pem(path: str, der: bytes) -> None:
    Path(path).write_bytes(
        x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)
    )


def _key_line(key: gateway_pb2.OrganisationKey) -> str:
    certificate = x509.load_der_x509_certificate(key.certificate)
    return (
        f"{key.key_id}  {key.organisation_id}/{key.label}  "
        f"{_ALGORITHM_NAMES.get(key.algorithm, '?')}  certificate {key.certificate_serial}  "
        f"{certificate.subject.rfc4514_string()}  until {certificate.not_valid_after_utc:%Y-%m-%d}"
    )


def _grant_line(grant: gateway_pb2.Grant) -> str:
    operations = ",".join(_OPERATION_NAMES.get(op, str(op)) for op in grant.operations)
    return (
        f"{grant.grant_id}  user {grant.user_id}  key {grant.key_id}  {operations}  "
        f"{_when(grant.not_before_unix)} to {_when(grant.not_after_unix)}  "
        f"used {grant.used_total}/{grant.quota_total} (today {grant.used_today}/"
        f"{grant.quota_daily})  {'revoked' if grant.revoked else 'active'}  {grant.purpose!r}"
    )


# Organisations, keys, users, tickets


def _org_create(args: argparse.Namespace) -> None:
    reply = _ra(
        args,
        "CreateOrganisation",
        ra_pb2.CreateOrganisationRequest(organisation_id=args.organisation_id, name=args.name),
    )
    print(f"organisation {reply.organisation.organisation_id} ({reply.organisation.name})")


def _key_create(args: argparse.Namespace) -> None:
    reply = _ra(
        args,
        "CreateOrganisationKey",
        ra_pb2.CreateOrganisationKeyRequest(
            organisation_id=args.org, label=args.label, algorithm=ALGORITHMS[args.algorithm]
        ),
    )
    print(_key_line(reply.key))
    if args.certificate_out:
        _write_pem(args.certificate_out, reply.key.certificate)
        print(f"certificate: {args.certificate_out}")


def _key_list(args: argparse.Namespace) -> None:
    reply = _ra(
        args, "ListOrganisationKeys", ra_pb2.ListOrganisationKeysRequest(organisation_id=args.org)
    )
    if not reply.keys:
        print(f"{args.org} has no keys")
    for key in reply.keys:
        print(_key_line(key))


def _key_certificate(args: argparse.Namespace) -> None:
    reply = _gateway(
        args, "GetOrganisationKey", gateway_pb2.GetOrganisationKeyRequest(key_id=args.key_id)
    )
    if args.out:
        _write_pem(args.out, reply.key.certificate)
        print(f"{args.out}")
    else:
        pem = x509.load_der_x509_certificate(reply.key.certificate).public_bytes(
            serialization.Encoding.PEM
        )
        print(pem.decode(), end="")


def _user_create(args: argparse.Namespace) -> None:
    reply = _ra(
        args,
        "CreateUser",
        ra_pb2.CreateUserRequest(user_id=args.user_id, display_name=args.display_name),
    )
    print(f"user {reply.user.user_id} ({reply.user.display_name or 'no display name'})")


def _user_show(args: argparse.Namespace) -> None:
    user = _ra(args, "GetUser", ra_pb2.GetUserRequest(user_id=args.user_id)).user
    print(f"user {user.user_id} ({user.display_name or 'no display name'})")
    print(f"created {_when(user.created_at_unix)}")


def _ticket_issue(args: argparse.Namespace) -> None:
    reply = _ra(
        args,
        "IssueEnrolmentTicket",
        ra_pb2.IssueEnrolmentTicketRequest(
            user_id=args.user_id, ttl_seconds=args.ttl, additional_key=args.additional_key
        ),
    )
    text = ticket_text(reply.ticket, reply.activation_code)
    print(f"ticket {reply.ticket_id} for {args.user_id}, expires {_when(reply.expires_at_unix)}")
    if args.out:
        Path(args.out).write_text(text + "\n")
        print(f"written to {args.out}")
    if not args.no_qr:
        segno.make(text, error="m").terminal(out=sys.stdout, compact=True)
    print(text)


# Applications of the CSC endpoint


def _app_line(app: csc_pb2.Application) -> str:
    state = "revoked" if app.revoked else "active"
    return (
        f"{app.client_id}  {app.name!r}  credentials {','.join(app.grant_ids)}  "
        f"registered {_when(app.created_unix)}  {state}"
    )


def _app_register(args: argparse.Namespace) -> None:
    reply = _csc_admin(
        args,
        "RegisterApplication",
        csc_pb2.RegisterApplicationRequest(name=args.name, grant_ids=args.grant),
    )
    app = reply.application
    print(
        f"application {app.client_id} ({app.name!r}) may use the grants {', '.join(app.grant_ids)}"
    )
    document = json.dumps({"client_id": app.client_id, "client_secret": reply.client_secret})
    if args.out:
        # The secret is shown this once: kept in a file only its owner can read, not printed.
        out = Path(args.out)
        out.touch(mode=0o600, exist_ok=False)
        out.write_text(document + "\n")
        print(f"client_id and client_secret written to {out} (mode 600); the gateway keeps a hash")
    else:
        print(f"client_id     {app.client_id}")
        print(f"client_secret {reply.client_secret}  (shown once; the gateway keeps a hash)")


def _app_list(args: argparse.Namespace) -> None:
    apps = _csc_admin(args, "ListApplications", csc_pb2.ListApplicationsRequest()).applications
    if not apps:
        print("no applications")
    for app in apps:
        print(_app_line(app))


def _app_revoke(args: argparse.Namespace) -> None:
    _csc_admin(
        args, "RevokeApplication", csc_pb2.RevokeApplicationRequest(client_id=args.client_id)
    )
    print(f"application {args.client_id} revoked: its tokens and pending approvals are void")


# Grants and revocation


def _grant_create(args: argparse.Namespace) -> None:
    # A minute back by default, so that a phone whose clock is a little behind can use it now.
    not_before = _time(args.not_before) if args.not_before else int(time.time()) - 60
    not_after = _time(args.not_after) if args.not_after else not_before + args.days * 86400
    reply = _ra(
        args,
        "CreateGrant",
        ra_pb2.CreateGrantRequest(
            user_id=args.user,
            key_id=args.key_id,
            operations=[OPERATIONS[name] for name in dict.fromkeys(args.operation)],
            not_before_unix=not_before,
            not_after_unix=not_after,
            quota_total=args.quota_total,
            quota_daily=args.quota_daily,
            purpose=args.purpose,
        ),
    )
    print(_grant_line(reply.grant))


def _grant_list(args: argparse.Namespace) -> None:
    reply = _ra(
        args, "ListGrants", ra_pb2.ListGrantsRequest(user_id=args.user or "", key_id=args.key_id)
    )
    if not reply.grants:
        print("no grants")
    for grant in reply.grants:
        print(_grant_line(grant))


def _grant_revoke(args: argparse.Namespace) -> None:
    _ra(args, "RevokeGrant", ra_pb2.RevokeGrantRequest(grant_id=args.grant_id))
    print(f"grant {args.grant_id} revoked")


def _certificate_revoke(args: argparse.Namespace) -> None:
    _ra(
        args,
        "RevokeCertificate",
        ra_pb2.RevokeCertificateRequest(serial=args.serial.lower(), reason=REASONS[args.reason]),
    )
    print(f"certificate {args.serial.lower()} revoked ({args.reason})")


def _certificate_status(args: argparse.Namespace) -> None:
    reply = _gateway(
        args,
        "GetCertificateStatus",
        gateway_pb2.GetCertificateStatusRequest(serial=args.serial.lower()),
    )
    line = f"certificate {args.serial.lower()}: {_STATUS_NAMES.get(reply.status, '?')}"
    if reply.status == gateway_pb2.CERTIFICATE_STATUS_REVOKED:
        reason = gateway_pb2.RevocationReason.Name(reply.reason)
        line += f" at {_when(reply.revoked_at_unix)} ({reason})"
    print(line)


def _ca_certificate(args: argparse.Namespace) -> None:
    der = _gateway(args, "GetCaCertificate", gateway_pb2.GetCaCertificateRequest()).certificate
    if args.out:
        _write_pem(args.out, der)
        print(args.out)
    else:
        pem = x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)
        print(pem.decode(), end="")


# User keys at the cosigner


def _cosigner(args: argparse.Namespace, method: str, request: Any) -> Any:
    async def call(channel: grpc.aio.Channel) -> Any:
        stub = cosigner_pb2_grpc.CosignerServiceStub(channel)
        return await getattr(stub, method)(request, timeout=30)

    return _call(args, "cosigner", call)


def _user_key_show(args: argparse.Namespace) -> None:
    key = _cosigner(args, "GetKey", cosigner_pb2.GetKeyRequest(key_id=args.key_id))
    state = "locked" if key.locked else "unlocked"
    print(
        f"key {key.key_id} of {key.user_id}: {state}, {key.failed_pin_attempts} failed PIN "
        f"attempts, enrolled with ticket {key.enrolment_ticket_id}"
    )


def _user_key_unlock(args: argparse.Namespace) -> None:
    _cosigner(args, "UnlockKey", cosigner_pb2.UnlockKeyRequest(key_id=args.key_id))
    print(f"key {args.key_id} unlocked")


# The audit log


class _Log:
    """The log as the gateway serves it, checked against the witness's key."""

    def __init__(self, gateway: grpc.aio.Channel, state: hsm_pb2.GetLogStateResponse) -> None:
        self.stub = gateway_pb2_grpc.GatewayServiceStub(gateway)
        self.public_key = state.public_key_spki
        self.origin = state.origin
        key = serialization.load_der_public_key(state.public_key_spki)
        if not isinstance(key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
            raise UsageError("the HSM proxy reports a log key of an unknown type")
        self.verifier = auditlog.NoteVerifier(state.origin, key)

    async def checkpoint(self) -> tuple[bytes, auditlog.Checkpoint]:
        """The latest signed checkpoint, verified."""
        note = (
            await self.stub.GetCheckpoint(gateway_pb2.GetCheckpointRequest(), timeout=30)
        ).checkpoint
        return note, auditlog.verify_checkpoint(note, self.verifier)

    async def entry(self, index: int) -> bytes:
        """Entry ``index``'s bytes."""
        reply = await self.stub.GetLogEntry(
            gateway_pb2.GetLogEntryRequest(entry_index=index), timeout=30
        )
        return bytes(reply.entry)


def _with_log(args: argparse.Namespace, use: Callable[[_Log], Awaitable[_T]]) -> _T:
    """Run ``use`` with the log; its key and origin come from the HSM proxy, its witness."""
    credential = _credential(args)

    async def go() -> _T:
        async with channels.mutual_tls(args.hsm_proxy, credential, "hsm-proxy") as hsm:
            state = await hsm_pb2_grpc.HsmServiceStub(hsm).GetLogState(
                hsm_pb2.GetLogStateRequest(), timeout=30
            )
        async with channels.mutual_tls(args.gateway, credential, "gateway") as gateway:
            return await use(_Log(gateway, state))

    return asyncio.run(go())


def describe_entry(index: int, data: bytes) -> str:
    """One line saying what a log entry holds."""
    try:
        entry = records.decode_entry(data)
        if isinstance(entry, records.OutcomeEntry):
            outcome = "succeeded" if entry.succeeded else f"failed {entry.reason}"
            return f"#{index} outcome of record {entry.record_id}: {outcome}"
        record = records.decode_record(entry.record)
    except records.RecordError as exc:
        return f"#{index} undecodable entry: {exc}"
    when = datetime.datetime.fromtimestamp(record.time_ms / 1000, datetime.UTC)
    return (
        f"#{index} record {record.record_id} at {when:%Y-%m-%d %H:%M:%SZ}: {record.user_id} "
        f"{record.operation.value} with key {record.organisation_key_id} under grant "
        f"{record.grant_id}, input sha256 {record.input_sha256.hex()[:16]}..., "
        f"purpose {record.purpose!r}"
    )


def _log_checkpoint(args: argparse.Namespace) -> None:
    note, checkpoint = _with_log(args, lambda log: log.checkpoint())
    print(f"log {checkpoint.origin} at size {checkpoint.size}, root {checkpoint.root_hash.hex()}")
    if args.out:
        Path(args.out).write_bytes(note)
        print(f"checkpoint: {args.out}")


def _log_key(args: argparse.Namespace) -> None:
    async def key(log: _Log) -> tuple[bytes, str]:
        return log.public_key, log.origin

    spki, origin = _with_log(args, key)
    pem = serialization.load_der_public_key(spki).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if args.out:
        Path(args.out).write_bytes(pem)
        print(f"log key of {origin}: {args.out}")
    else:
        print(f"origin: {origin}")
        print(pem.decode(), end="")


def _log_entries(args: argparse.Namespace) -> None:
    async def entries(log: _Log) -> list[str]:
        _, checkpoint = await log.checkpoint()
        start = checkpoint.size + args.start if args.start < 0 else args.start
        end = min(checkpoint.size, max(start, 0) + args.count)
        return [describe_entry(i, await log.entry(i)) for i in range(max(start, 0), end)]

    lines = _with_log(args, entries)
    if not lines:
        print("no entries there")
    for line in lines:
        print(line)


async def _find(log: _Log, record_id: str) -> tuple[int, list[str]]:
    """The index of ``record_id``'s entry, and the lines of it and its outcome."""
    _, checkpoint = await log.checkpoint()
    found, lines = -1, []
    for index in range(checkpoint.size):
        data = await log.entry(index)
        try:
            entry = records.decode_entry(data)
            entry_record = (
                entry.record_id
                if isinstance(entry, records.OutcomeEntry)
                else records.decode_record(entry.record).record_id
            )
        except records.RecordError:
            continue
        if entry_record == record_id:
            if found < 0:
                found = index
            lines.append(describe_entry(index, data))
    if found < 0:
        raise UsageError(f"record {record_id} is not in the log of size {checkpoint.size}")
    return found, lines


def _log_find(args: argparse.Namespace) -> None:
    _, lines = _with_log(args, lambda log: _find(log, args.record_id.lower()))
    for line in lines:
        print(line)


def _log_receipt(args: argparse.Namespace) -> None:
    async def build(log: _Log) -> tuple[str, str]:
        if args.record_id:
            index, _ = await _find(log, args.record_id.lower())
        elif args.index is not None:
            index = args.index
        else:
            raise UsageError("name the entry: --index N or --record-id ID")
        data = await log.entry(index)
        entry = records.decode_entry(data)
        if not isinstance(entry, records.RecordEntry):
            raise UsageError(f"entry {index} is an outcome, not a record")
        record = records.decode_record(entry.record)
        note, checkpoint = await log.checkpoint()
        proof = await log.stub.GetInclusionProof(
            gateway_pb2.GetInclusionProofRequest(entry_index=index, tree_size=checkpoint.size),
            timeout=30,
        )
        user = await log.stub.GetPersonalCertificate(
            gateway_pb2.GetPersonalCertificateRequest(key_id=record.user_key_id), timeout=30
        )
        receipt = gateway_pb2.Receipt(
            record=entry.record,
            user_signature=entry.user_signature,
            user_certificate=user.certificate,
            entry_index=index,
            entry=data,
            inclusion_proof=proof.proof,
            checkpoint=note,
        )
        verified = verify_receipt(receipt, user.ca_certificate, log.public_key, log.origin)
        summary = (
            f"OK: record {verified.record.record_id} by {verified.record.user_id} is entry "
            f"{verified.entry_index} of the log at size {verified.checkpoint.size}; "
            "user signature, certificate and inclusion verified"
        )
        return summary, receipt_to_json(receipt, log.origin)

    summary, document = _with_log(args, build)
    print(summary)
    if args.out:
        Path(args.out).write_text(document)
        print(f"receipt: {args.out}")


def _log_consistency(args: argparse.Namespace) -> None:
    old_note = Path(args.old).read_bytes()

    async def check(log: _Log) -> tuple[bytes, str]:
        old = auditlog.verify_checkpoint(old_note, log.verifier)
        note, new = await log.checkpoint()
        proof: list[bytes] = []
        if 0 < old.size < new.size:
            reply = await log.stub.GetConsistencyProof(
                gateway_pb2.GetConsistencyProofRequest(old_size=old.size, new_size=new.size),
                timeout=30,
            )
            proof = list(reply.proof)
        if old.size == 0:
            # Every tree extends the empty one: there is nothing to prove, only signatures.
            checked_old, checked_new = old, new
        else:
            checked_old, checked_new = verify_consistency(
                old_note, note, proof, log.public_key, log.origin
            )
        return note, (
            f"OK: the log at size {checked_new.size} extends the saved checkpoint at size "
            f"{checked_old.size}"
        )

    note, line = _with_log(args, check)
    print(line)
    if args.save:
        Path(args.old).write_bytes(note)
        print(f"saved the new checkpoint to {args.old}")


def parser() -> argparse.ArgumentParser:
    """The admin CLI's argument parser."""
    commands = Commands(PROG, __doc__ or "", SHARED)
    top = commands.parser
    groups = commands.group(top, "area")

    org = commands.group(commands.command(groups, "org", "organisations"), "command")
    p = commands.command(org, "create", "register an organisation", _org_create)
    p.add_argument("organisation_id", help="1 to 64 characters from [A-Za-z0-9._-]")
    p.add_argument("--name", required=True, help="the name in O= of its certificates")

    key = commands.group(
        commands.command(groups, "key", "organisation keys and their certificates"), "command"
    )
    p = commands.command(
        key, "create", "generate a key in the HSM and issue its certificate", _key_create
    )
    p.add_argument("--org", required=True, help="organisation id")
    p.add_argument("--label", required=True, help="unique label, [A-Za-z0-9._-]")
    p.add_argument("--algorithm", choices=sorted(ALGORITHMS), default="ec-p256")
    p.add_argument("--certificate-out", help="write the certificate here (PEM)")
    p = commands.command(key, "list", "list an organisation's keys", _key_list)
    p.add_argument("--org", required=True, help="organisation id")
    p = commands.command(
        key, "certificate", "print or save a key's current certificate", _key_certificate
    )
    p.add_argument("key_id", help="the organisation key id (32 hex digits)")
    p.add_argument("--out", help="write it here (PEM) instead of printing it")

    user = commands.group(commands.command(groups, "user", "users"), "command")
    p = commands.command(user, "create", "register a user", _user_create)
    p.add_argument("user_id", help="1 to 64 characters from [A-Za-z0-9._@-]")
    p.add_argument("--display-name", default="", help="the name to show")
    p = commands.command(user, "show", "show a user", _user_show)
    p.add_argument("user_id")

    ticket = commands.group(commands.command(groups, "ticket", "enrolment tickets"), "command")
    p = commands.command(
        ticket, "issue", "issue a ticket, printed as text and as a QR code", _ticket_issue
    )
    p.add_argument("user_id")
    p.add_argument("--ttl", type=int, default=86400, help="lifetime in seconds (60 to 604800)")
    p.add_argument(
        "--additional-key",
        action="store_true",
        help="the user may hold this key beside a certified one (a second phone)",
    )
    p.add_argument("--out", help="also write the ticket text to this file (for the phone CLI)")
    p.add_argument("--no-qr", action="store_true", help="print the text only")

    grant = commands.group(commands.command(groups, "grant", "grants"), "command")
    p = commands.command(grant, "create", "let a user use an organisation key", _grant_create)
    p.add_argument("--user", required=True, help="user id")
    p.add_argument("--key-id", required=True, help="organisation key id")
    p.add_argument(
        "--operation",
        action="append",
        choices=sorted(OPERATIONS),
        required=True,
        help="an operation it allows (repeat for both)",
    )
    p.add_argument("--not-before", help="start, ISO 8601 (default: a minute ago)")
    p.add_argument("--not-after", help="end, ISO 8601 (default: --days after the start)")
    p.add_argument("--days", type=int, default=30, help="length when --not-after is not given")
    p.add_argument("--quota-total", type=int, default=100, help="uses over the grant's life")
    p.add_argument("--quota-daily", type=int, default=10, help="uses per UTC day")
    p.add_argument("--purpose", default="", help="why (at most 200 characters)")
    p = commands.command(grant, "list", "list grants with their use so far", _grant_list)
    p.add_argument("--user", help="only this user's")
    p.add_argument("--key-id", default="", help="only this organisation key's")
    p = commands.command(grant, "revoke", "end a grant", _grant_revoke)
    p.add_argument("grant_id")

    app = commands.group(
        commands.command(groups, "app", "applications of the CSC endpoint (OAuth clients)"),
        "command",
    )
    p = commands.command(app, "register", "register an application for some grants", _app_register)
    p.add_argument("--name", required=True, help="shown on the phone with every approval")
    p.add_argument(
        "--grant", action="append", required=True, help="a grant it may use (repeat for more)"
    )
    p.add_argument("--out", help="write client_id and client_secret to this new file (mode 600)")
    p = commands.command(app, "list", "list the registered applications", _app_list)
    p = commands.command(app, "revoke", "end an application's access", _app_revoke)
    p.add_argument("client_id")

    certificate = commands.group(
        commands.command(groups, "certificate", "personal and organisation certificates"),
        "command",
    )
    p = commands.command(
        certificate, "revoke", "revoke a certificate and reissue the CRL", _certificate_revoke
    )
    p.add_argument("serial", help="serial number, hex")
    p.add_argument("--reason", choices=sorted(REASONS), default="unspecified")
    p = commands.command(certificate, "status", "good, revoked or unknown", _certificate_status)
    p.add_argument("serial", help="serial number, hex")
    p = commands.command(certificate, "ca", "print or save the CA certificate", _ca_certificate)
    p.add_argument("--out", help="write it here (PEM)")

    user_key = commands.group(
        commands.command(groups, "user-key", "users' two-party keys at the cosigner"), "command"
    )
    p = commands.command(user_key, "show", "a key's state and PIN failures", _user_key_show)
    p.add_argument("key_id", help="the user key id (64 hex digits)")
    p = commands.command(user_key, "unlock", "clear a PIN lockout", _user_key_unlock)
    p.add_argument("key_id", help="the user key id (64 hex digits)")

    log = commands.group(commands.command(groups, "log", "the audit log"), "command")
    p = commands.command(log, "checkpoint", "the latest signed checkpoint", _log_checkpoint)
    p.add_argument("--out", help="save it here (for a later consistency check)")
    p = commands.command(log, "key", "the log's public key and origin", _log_key)
    p.add_argument("--out", help="write the key here (PEM)")
    p = commands.command(log, "entries", "list entries, decoded", _log_entries)
    p.add_argument("--start", type=int, default=-20, help="first index; negative counts back")
    p.add_argument("--count", type=int, default=20, help="how many")
    p = commands.command(log, "find", "find a record's entry and its outcome", _log_find)
    p.add_argument("record_id", help="32 hex digits")
    p = commands.command(
        log, "receipt", "build and verify the receipt of a record's entry", _log_receipt
    )
    p.add_argument("--index", type=int, help="the entry's index")
    p.add_argument("--record-id", help="or the record's id")
    p.add_argument("--out", help="save the receipt here (JSON)")
    p = commands.command(
        log, "consistency", "check the log extends a saved checkpoint", _log_consistency
    )
    p.add_argument("--old", required=True, help="the saved checkpoint")
    p.add_argument("--save", action="store_true", help="then save the new checkpoint over it")
    return top


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point."""
    run(PROG, parser(), argv)
