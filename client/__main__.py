"""``python -m client``: the phone side from a terminal (enrol, sign, export the public key),
and the offline verifier of receipts and log consistency (exit status 0 = verified, 1 = not).

The PIN is read from ``MOBILESIGN_PIN`` or prompted for; it is never a command-line argument
(other users can read those).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import getpass
import os
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from client.errors import ClientError
from client.keystore import Keystore
from client.sdk import SigningSession, enrol
from client.verifier import (
    receipt_from_json,
    verify_consistency,
    verify_receipt,
)
from mobilesign.rpc import channels


def _pin() -> str:
    return os.environ.get("MOBILESIGN_PIN") or getpass.getpass("PIN: ")


def _ca(args: argparse.Namespace) -> bytes:
    if args.ca:
        return Path(args.ca).read_bytes()
    state = Path(os.environ.get("MOBILESIGN_STATE_DIR", "var"))
    return (state / "pki" / "ca.pem").read_bytes()


async def _enrol(address: str, ca: bytes, ticket: bytes, pin: str) -> Keystore:
    async with channels.server_tls(address, ca) as channel:
        return await enrol(channel, ticket, pin)


async def _sign(
    address: str, ca: bytes, keystore: Keystore, pin: str, messages: list[bytes]
) -> list[bytes]:
    async with (
        channels.server_tls(address, ca) as channel,
        SigningSession(channel, keystore, pin) as session,
    ):
        return await session.sign_many(messages)


def _public_key(args: argparse.Namespace) -> None:
    keystore = Keystore.load(Path(args.keystore))
    pem = Ed25519PublicKey.from_public_bytes(keystore.group_public_key).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    sys.stdout.write(pem.decode())


def _certificate_der(path: str) -> bytes:
    data = Path(path).read_bytes()
    if data.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_certificate(data).public_bytes(serialization.Encoding.DER)
    return data


def _public_key_der(path: str) -> bytes:
    data = Path(path).read_bytes()
    key = (
        serialization.load_pem_public_key(data)
        if data.lstrip().startswith(b"-----BEGIN")
        else serialization.load_der_public_key(data)
    )
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _verify_receipt(args: argparse.Namespace) -> None:
    receipt, origin = receipt_from_json(Path(args.receipt).read_text())
    verified = verify_receipt(
        receipt, _certificate_der(args.ca), _public_key_der(args.log_key), args.origin or origin
    )
    record = verified.record
    print(
        f"OK: record {record.record_id} by {record.user_id} "
        f"({record.operation.value} with organisation key {record.organisation_key_id}) "
        f"is entry {verified.entry_index} of the log at size {verified.checkpoint.size}"
    )


def _verify_consistency(args: argparse.Namespace) -> None:
    proof = [base64.b64decode(line) for line in Path(args.proof).read_text().split()]
    old, new = verify_consistency(
        Path(args.old).read_bytes(),
        Path(args.new).read_bytes(),
        proof,
        _public_key_der(args.log_key),
        args.origin,
    )
    print(f"OK: the log at size {new.size} extends the log at size {old.size}")


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="client", description=__doc__)
    parser.add_argument("--cosigner", default="127.0.0.1:9443", help="cosigner public address")
    parser.add_argument("--ca", help="CA certificate (default: $MOBILESIGN_STATE_DIR/pki/ca.pem)")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("enrol", help="enrol a new key with a ticket from the RA")
    p.add_argument("--ticket", required=True, help="file holding the enrolment ticket")
    p.add_argument("--keystore", required=True, help="keystore file to create")
    p = commands.add_parser("sign", help="sign files jointly; writes FILE.sig (64 bytes)")
    p.add_argument("--keystore", required=True)
    p.add_argument("files", nargs="+")
    p = commands.add_parser("public-key", help="print the joint public key (PEM)")
    p.add_argument("--keystore", required=True)
    p = commands.add_parser("verify-receipt", help="verify a receipt offline")
    p.add_argument("--receipt", required=True, help="receipt JSON")
    p.add_argument("--ca", required=True, help="CA certificate (PEM or DER)")
    p.add_argument("--log-key", required=True, help="log public key (PEM or DER SPKI)")
    p.add_argument("--origin", help="log origin (default: the one the receipt names)")
    p = commands.add_parser(
        "verify-consistency", help="verify that a later checkpoint extends an earlier one"
    )
    p.add_argument("--old", required=True, help="earlier signed checkpoint")
    p.add_argument("--new", required=True, help="later signed checkpoint")
    p.add_argument("--proof", required=True, help="consistency proof: base64 hashes, one a line")
    p.add_argument("--log-key", required=True, help="log public key (PEM or DER SPKI)")
    p.add_argument("--origin", required=True, help="log origin")
    args = parser.parse_args()
    try:
        if args.command == "enrol":
            ticket = Path(args.ticket).read_bytes()
            keystore = asyncio.run(_enrol(args.cosigner, _ca(args), ticket, _pin()))
            keystore.save(Path(args.keystore))
            print(f"enrolled key {keystore.key_id} for {keystore.user_id}")
        elif args.command == "sign":
            keystore = Keystore.load(Path(args.keystore))
            messages = [Path(name).read_bytes() for name in args.files]
            signatures = asyncio.run(_sign(args.cosigner, _ca(args), keystore, _pin(), messages))
            for name, signature in zip(args.files, signatures, strict=True):
                Path(name + ".sig").write_bytes(signature)
                print(f"{name}.sig")
        elif args.command == "verify-receipt":
            _verify_receipt(args)
        elif args.command == "verify-consistency":
            _verify_consistency(args)
        else:
            _public_key(args)
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
