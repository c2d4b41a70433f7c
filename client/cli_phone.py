"""The phone from a terminal (``python -m client``, ``mobilesign-phone``): enrol a key with a
ticket (S2), request its personal certificate, log into the gateway, list grants and use an
organisation key on a file (S3, S4) keeping the receipt; also joint signatures on files, the
joint public key, and the offline verifier of receipts and log consistency (S5; exit status 0 =
verified).

The PIN is read from ``--pin-file``, ``MOBILESIGN_PIN`` or a prompt; it is never a command-line
argument (other users can read those). What the phone learnt when its certificate was issued
(the CA certificate and the RA's grant key, authenticated by the ticket's activation code) is
kept beside the keystore in ``KEYSTORE.certificates.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from client.approver import Approver
from client.certificates import request_personal_certificate
from client.cli import Commands, Shared, UsageError, default_state_dir, parse_ticket, read_pin, run
from client.gateway_client import GatewaySession
from client.keystore import Keystore
from client.sdk import SigningSession, enrol
from client.verifier import (
    TrustAnchors,
    receipt_from_json,
    receipt_to_json,
    verify_consistency,
    verify_receipt,
)
from mobilesign.rpc import channels
from mobilesign.v1 import gateway_pb2, gateway_pb2_grpc

PROG = "mobilesign-phone"
_TRUST_FORMAT = "mobilesign-phone-trust-v1"
#: The command-line names of the operations an organisation key offers.
OPERATIONS = {
    "sign": gateway_pb2.OPERATION_SIGN_DIGEST,
    "decrypt": gateway_pb2.OPERATION_DECRYPT,
}
_OPERATION_NAMES = {value: name for name, value in OPERATIONS.items()}

SHARED = (
    Shared(("--cosigner",), "cosigner public address", "127.0.0.1:9443"),
    Shared(("--gateway",), "gateway public address", "127.0.0.1:8443"),
    Shared(
        ("--tls-ca",),
        "CA certificate (PEM) the public listeners' TLS certificates chain to "
        "(default: $MOBILESIGN_STATE_DIR/pki/ca.pem)",
    ),
    Shared(("--pin-file",), "file holding the PIN (default: $MOBILESIGN_PIN, else a prompt)"),
)


def _tls_ca(args: argparse.Namespace) -> bytes:
    path = Path(args.tls_ca) if args.tls_ca else default_state_dir() / "pki" / "ca.pem"
    return path.read_bytes()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass(frozen=True)
class PhoneTrust:
    """What the phone trusts, kept beside its keystore: its personal certificate, the CA
    certificate and the RA's grant key (from the RA, authenticated by the activation code), and
    the log's key and origin (pinned the first time the gateway names them)."""

    certificate: bytes
    ca_certificate: bytes
    grant_key_spki: bytes
    log_public_key: bytes = b""
    log_origin: str = ""

    def anchors(self) -> TrustAnchors:
        """What the SDK checks grants, keys and receipts against."""
        return TrustAnchors(
            self.ca_certificate, self.log_public_key, self.log_origin, self.grant_key_spki
        )

    @staticmethod
    def path(keystore: Path) -> Path:
        """Where the trust file of ``keystore`` lives."""
        return keystore.with_name(keystore.name + ".certificates.json")

    def save(self, keystore: Path) -> None:
        """Write beside ``keystore``."""
        document = {
            "format": _TRUST_FORMAT,
            "certificate": _b64(self.certificate),
            "ca_certificate": _b64(self.ca_certificate),
            "grant_key_spki": _b64(self.grant_key_spki),
            "log_public_key": _b64(self.log_public_key),
            "log_origin": self.log_origin,
        }
        path = self.path(keystore)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(document, indent=2))
        tmp.replace(path)

    @classmethod
    def load(cls, keystore: Path) -> PhoneTrust:
        """Read the trust file of ``keystore``."""
        path = cls.path(keystore)
        if not path.exists():
            raise UsageError(f"{keystore} has no personal certificate yet: run `certificate`")
        try:
            document = json.loads(path.read_text())
            if document.get("format") != _TRUST_FORMAT:
                raise ValueError

            def field(name: str) -> bytes:
                return base64.b64decode(document[name], validate=True)

            return cls(
                field("certificate"),
                field("ca_certificate"),
                field("grant_key_spki"),
                field("log_public_key"),
                str(document["log_origin"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ValueError(f"{path} is not a mobilesign trust file") from None


def _keystore(args: argparse.Namespace) -> Keystore:
    try:
        return Keystore.load(Path(args.keystore))
    except (KeyError, TypeError, AttributeError):
        raise ValueError(f"{args.keystore} is not a mobilesign keystore") from None


def _cmd_enrol(args: argparse.Namespace) -> None:
    path = Path(args.keystore)
    # Refused before the ticket is spent: a keystore holds the only phone share of its key.
    if path.exists() and not args.force:
        raise UsageError(f"{path} exists; pass --force to replace it (its key is lost then)")
    ticket, _ = parse_ticket(Path(args.ticket).read_bytes())
    pin = read_pin(args.pin_file)

    async def go() -> Keystore:
        async with channels.server_tls(args.cosigner, _tls_ca(args)) as channel:
            return await enrol(channel, ticket, pin)

    keystore = asyncio.run(go())
    keystore.save(path)
    PhoneTrust.path(path).unlink(missing_ok=True)  # the trust of the replaced key, if any
    print(f"enrolled key {keystore.key_id} for {keystore.user_id}")
    print(f"keystore: {path}")


def _cmd_certificate(args: argparse.Namespace) -> None:
    keystore = _keystore(args)
    ticket, code = parse_ticket(Path(args.ticket).read_bytes())
    if not code:
        raise UsageError("the ticket has no activation code: use the text the admin tool printed")
    pin = read_pin(args.pin_file)

    async def go() -> tuple[bytes, bytes, bytes]:
        async with (
            channels.server_tls(args.cosigner, _tls_ca(args)) as channel,
            SigningSession(channel, keystore, pin) as session,
        ):
            certificates, _ = await request_personal_certificate(
                channel, session, keystore, ticket, code
            )
        return certificates.certificate, certificates.ca_certificate, certificates.grant_key_spki

    certificate, ca_certificate, grant_key = asyncio.run(go())
    PhoneTrust(certificate, ca_certificate, grant_key).save(Path(args.keystore))
    leaf = x509.load_der_x509_certificate(certificate)
    if args.out:
        Path(args.out).write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    print(f"certificate {format(leaf.serial_number, 'x')} for {leaf.subject.rfc4514_string()}")
    print(f"issued by {leaf.issuer.rfc4514_string()}, valid until {leaf.not_valid_after_utc}")


def _cmd_login(args: argparse.Namespace) -> None:
    keystore = _keystore(args)

    async def go() -> None:
        async with channels.server_tls(args.gateway, _tls_ca(args)) as channel:
            await GatewaySession(channel, keystore).login()

    asyncio.run(go())
    print(f"logged in to {args.gateway} as {keystore.user_id} (key {keystore.key_id})")


def _when(unix: int) -> str:
    return datetime.datetime.fromtimestamp(unix, datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _grant_line(grant: gateway_pb2.Grant) -> str:
    operations = ",".join(_OPERATION_NAMES.get(op, str(op)) for op in grant.operations)
    state = "revoked" if grant.revoked else "active"
    return (
        f"{grant.grant_id}  key {grant.key_id}  {operations}  "
        f"{_when(grant.not_before_unix)} to {_when(grant.not_after_unix)}  "
        f"used {grant.used_total}/{grant.quota_total} (today {grant.used_today}/"
        f"{grant.quota_daily})  {state}  {grant.purpose!r}"
    )


def _cmd_grants(args: argparse.Namespace) -> None:
    keystore = _keystore(args)

    async def go() -> list[gateway_pb2.Grant]:
        async with channels.server_tls(args.gateway, _tls_ca(args)) as channel:
            session = GatewaySession(channel, keystore)
            await session.login()
            return await session.grants()

    grants = asyncio.run(go())
    if not grants:
        print(f"{keystore.user_id} has no grants")
    for grant in grants:
        print(_grant_line(grant))


def _choose_grant(grants: list[gateway_pb2.Grant], operation: int) -> str:
    usable = [g.grant_id for g in grants if not g.revoked and operation in g.operations]
    if len(usable) != 1:
        raise UsageError(
            f"{len(usable)} grants allow that operation: name one with --grant (see `grants`)"
        )
    return usable[0]


async def _pinned(gateway: grpc.aio.Channel, trust_file: PhoneTrust) -> PhoneTrust:
    """The phone's trust with the log's key and origin pinned (asked of the gateway the first
    time, kept after)."""
    if trust_file.log_public_key:
        return trust_file
    log = await gateway_pb2_grpc.GatewayServiceStub(gateway).GetLogPublicKey(
        gateway_pb2.GetLogPublicKeyRequest(), timeout=10
    )
    return PhoneTrust(
        trust_file.certificate,
        trust_file.ca_certificate,
        trust_file.grant_key_spki,
        log.public_key_spki,
        log.origin,
    )


def _cmd_use(args: argparse.Namespace) -> None:
    path = Path(args.keystore)
    keystore = _keystore(args)
    trust_file = PhoneTrust.load(path)
    data = Path(args.file).read_bytes()
    operation = OPERATIONS[args.operation]
    # A signature is over the file's SHA-256 digest; a decryption takes the ciphertext itself.
    data_in = hashlib.sha256(data).digest() if args.operation == "sign" else data
    pin = read_pin(args.pin_file)
    tls_ca = _tls_ca(args)

    async def go() -> tuple[bytes, gateway_pb2.Receipt, str, str, PhoneTrust]:
        async with (
            channels.server_tls(args.gateway, tls_ca) as gateway,
            channels.server_tls(args.cosigner, tls_ca) as cosigner,
        ):
            pinned = await _pinned(gateway, trust_file)
            trust = pinned.anchors()
            session = GatewaySession(gateway, keystore)
            await session.login()
            grant_id = args.grant or _choose_grant(await session.grants(), operation)
            async with SigningSession(cosigner, keystore, pin) as signing:
                use = await session.use_key(
                    signing,
                    grant_id=grant_id,
                    operation=operation,
                    data=data_in,
                    purpose=args.purpose,
                    trust=trust,
                )
            return use.result, use.receipt, use.record.record_id, use.key.label, pinned

    result, receipt, record_id, label, pinned = asyncio.run(go())
    if pinned is not trust_file:
        pinned.save(path)
    suffix = ".sig" if args.operation == "sign" else ".decrypted"
    out = Path(args.out or args.file + suffix)
    receipt_path = Path(args.receipt or args.file + ".receipt.json")
    out.write_bytes(result)
    receipt_path.write_text(receipt_to_json(receipt, pinned.log_origin))
    print(f"{args.operation} with {label}: record {record_id}, log entry {receipt.entry_index}")
    print(f"result: {out}")
    print(f"receipt: {receipt_path}")


def _approval_lines(approval: gateway_pb2.Approval) -> list[str]:
    """An approval as the phone shows it: who asks, why, for which document, what it signs."""
    count = len(approval.digests)
    return [
        f"{approval.approval_id}  from {approval.application!r}, answer by "
        f"{_when(approval.expires_unix)}",
        f"  purpose  {approval.purpose!r}",
        f"  document {approval.label or '(no label)'!r}",
        f"  {count} signature{'s' if count != 1 else ''} with grant {approval.grant_id}, of "
        + ", ".join(d.hex() for d in approval.digests),
    ]


def _cmd_approvals(args: argparse.Namespace) -> None:
    keystore = _keystore(args)

    async def go() -> list[gateway_pb2.Approval]:
        async with channels.server_tls(args.gateway, _tls_ca(args)) as channel:
            session = GatewaySession(channel, keystore)
            await session.login()
            return await session.approvals()

    approvals = asyncio.run(go())
    if not approvals:
        print("nothing to approve")
    for approval in approvals:
        print("\n".join(_approval_lines(approval)))


def _cmd_approve(args: argparse.Namespace) -> None:
    path = Path(args.keystore)
    keystore = _keystore(args)
    trust_file = PhoneTrust.load(path)
    wanted = set(args.approval_ids)
    if not wanted and not args.all:
        raise UsageError("name the approvals to give, or --all (see `approvals`)")
    pin = read_pin(args.pin_file)
    tls_ca = _tls_ca(args)

    def decide(approval: gateway_pb2.Approval) -> bool | None:
        if not (args.all or approval.approval_id in wanted):
            return None  # not this one: it stays pending
        print("\n".join(["approving", *_approval_lines(approval)]), flush=True)
        return True

    async def go() -> tuple[int, PhoneTrust]:
        async with (
            channels.server_tls(args.gateway, tls_ca) as gateway,
            channels.server_tls(args.cosigner, tls_ca) as cosigner,
        ):
            pinned = await _pinned(gateway, trust_file)
            session = GatewaySession(gateway, keystore)
            await session.login()
            async with SigningSession(cosigner, keystore, pin) as signing:
                approver = Approver(session, signing, pinned.anchors(), decide)
                deadline = time.monotonic() + args.wait
                while True:
                    await approver.answer_pending()
                    if (wanted and wanted <= {a.approval_id for a in approver.given}) or (
                        time.monotonic() >= deadline
                    ):
                        break
                    await asyncio.sleep(0.2)
            if approver.failed:
                raise approver.failed[0]
            return len(approver.approved), pinned

    records, pinned = asyncio.run(go())
    if pinned is not trust_file:
        pinned.save(path)
    if not records:
        raise UsageError("nothing was approved (no such pending approval; see `approvals`)")
    print(f"approved: {records} record{'s' if records != 1 else ''} co-signed for the gateway")


def _cmd_decline(args: argparse.Namespace) -> None:
    keystore = _keystore(args)

    async def go() -> None:
        async with channels.server_tls(args.gateway, _tls_ca(args)) as channel:
            session = GatewaySession(channel, keystore)
            await session.login()
            await session.decline(args.approval_id)

    asyncio.run(go())
    print(f"declined {args.approval_id}")


def _cmd_sign(args: argparse.Namespace) -> None:
    keystore = _keystore(args)
    messages = [Path(name).read_bytes() for name in args.files]
    pin = read_pin(args.pin_file)

    async def go() -> list[bytes]:
        async with (
            channels.server_tls(args.cosigner, _tls_ca(args)) as channel,
            SigningSession(channel, keystore, pin) as session,
        ):
            return await session.sign_many(messages)

    for name, signature in zip(args.files, asyncio.run(go()), strict=True):
        Path(name + ".sig").write_bytes(signature)
        print(f"{name}.sig")


def _cmd_public_key(args: argparse.Namespace) -> None:
    keystore = _keystore(args)
    pem = Ed25519PublicKey.from_public_bytes(keystore.group_public_key).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    print(pem.decode(), end="")


def certificate_der(path: str) -> bytes:
    """A certificate file (PEM or DER) as DER."""
    data = Path(path).read_bytes()
    if data.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_certificate(data).public_bytes(serialization.Encoding.DER)
    return x509.load_der_x509_certificate(data).public_bytes(serialization.Encoding.DER)


def public_key_der(path: str) -> bytes:
    """A public key file (PEM or DER SubjectPublicKeyInfo) as DER."""
    data = Path(path).read_bytes()
    key = (
        serialization.load_pem_public_key(data)
        if data.lstrip().startswith(b"-----BEGIN")
        else serialization.load_der_public_key(data)
    )
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _cmd_verify_receipt(args: argparse.Namespace) -> None:
    receipt, origin = receipt_from_json(Path(args.receipt).read_text())
    verified = verify_receipt(
        receipt, certificate_der(args.ca), public_key_der(args.log_key), args.origin or origin
    )
    record = verified.record
    print(
        f"OK: record {record.record_id} by {record.user_id} "
        f"({record.operation.value} with organisation key {record.organisation_key_id}) "
        f"is entry {verified.entry_index} of the log at size {verified.checkpoint.size}"
    )


def _cmd_verify_consistency(args: argparse.Namespace) -> None:
    proof = [base64.b64decode(line) for line in Path(args.proof).read_text().split()]
    old, new = verify_consistency(
        Path(args.old).read_bytes(),
        Path(args.new).read_bytes(),
        proof,
        public_key_der(args.log_key),
        args.origin,
    )
    print(f"OK: the log at size {new.size} extends the log at size {old.size}")


def parser() -> argparse.ArgumentParser:
    """The phone CLI's argument parser."""
    commands = Commands(PROG, __doc__ or "", SHARED)
    top = commands.parser
    # Kept for scripts written against the first CLI: --ca before the subcommand was the TLS CA.
    top.add_argument("--ca", dest="tls_ca", help=argparse.SUPPRESS)
    group = commands.group(top, "command")

    def keystore_option(p: argparse.ArgumentParser, help: str = "keystore file") -> None:
        p.add_argument("--keystore", required=True, help=help)

    p = commands.command(group, "enrol", "enrol a new key with a ticket from the RA", _cmd_enrol)
    p.add_argument(
        "--ticket", required=True, help="file holding the ticket as the admin tool printed it"
    )
    keystore_option(p, "keystore file to create")
    p.add_argument("--force", action="store_true", help="replace an existing keystore")
    p = commands.command(
        group, "certificate", "request the personal certificate of the key", _cmd_certificate
    )
    keystore_option(p)
    p.add_argument("--ticket", required=True, help="the ticket the key was enrolled with")
    p.add_argument("--out", help="also write the certificate here (PEM)")
    p = commands.command(group, "login", "log into the gateway with the device key", _cmd_login)
    keystore_option(p)
    p = commands.command(group, "grants", "list the user's grants", _cmd_grants)
    keystore_option(p)
    p = commands.command(
        group, "use", "use an organisation key on a file and keep the receipt", _cmd_use
    )
    keystore_option(p)
    p.add_argument(
        "operation", choices=sorted(OPERATIONS), help="sign the file's SHA-256, or decrypt it"
    )
    p.add_argument("file", help="the file to sign, or the RSA-OAEP ciphertext to decrypt")
    p.add_argument("--grant", help="grant id (default: the only grant for the operation)")
    p.add_argument("--purpose", default="", help="why (goes into the record; default: the grant's)")
    p.add_argument("--out", help="result file (default: FILE.sig or FILE.decrypted)")
    p.add_argument("--receipt", help="receipt file (default: FILE.receipt.json)")
    p = commands.command(
        group, "approvals", "list what applications ask the user to approve", _cmd_approvals
    )
    keystore_option(p)
    p = commands.command(
        group, "approve", "approve applications' requests: co-sign their records", _cmd_approve
    )
    keystore_option(p)
    p.add_argument("approval_ids", nargs="*", metavar="APPROVAL_ID", help="what to approve")
    p.add_argument("--all", action="store_true", help="approve every pending request")
    p.add_argument(
        "--wait", type=float, default=0.0, help="seconds to wait for requests to come in"
    )
    p = commands.command(group, "decline", "decline an application's request", _cmd_decline)
    keystore_option(p)
    p.add_argument("approval_id")
    p = commands.command(
        group, "sign", "sign files jointly with the cosigner; writes FILE.sig", _cmd_sign
    )
    keystore_option(p)
    p.add_argument("files", nargs="+")
    p = commands.command(group, "public-key", "print the joint public key (PEM)", _cmd_public_key)
    keystore_option(p)
    p = commands.command(group, "verify-receipt", "verify a receipt offline", _cmd_verify_receipt)
    p.add_argument("--receipt", required=True, help="receipt JSON")
    p.add_argument("--ca", required=True, help="CA certificate of the personal certificates")
    p.add_argument("--log-key", required=True, help="log public key (PEM or DER SPKI)")
    p.add_argument("--origin", help="log origin (default: the one the receipt names)")
    p = commands.command(
        group,
        "verify-consistency",
        "verify that a later checkpoint extends an earlier one",
        _cmd_verify_consistency,
    )
    p.add_argument("--old", required=True, help="earlier signed checkpoint")
    p.add_argument("--new", required=True, help="later signed checkpoint")
    p.add_argument("--proof", required=True, help="consistency proof: base64 hashes, one a line")
    p.add_argument("--log-key", required=True, help="log public key (PEM or DER SPKI)")
    p.add_argument("--origin", required=True, help="log origin")
    return top


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point."""
    run(PROG, parser(), argv)
