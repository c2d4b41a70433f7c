"""``python -m client``: the phone side from a terminal (enrol, sign, export the public key).

The PIN is read from ``MOBILESIGN_PIN`` or prompted for; it is never a command-line argument
(other users can read those).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from client.errors import ClientError
from client.keystore import Keystore
from client.sdk import SigningSession, enroll
from grpc_host import channels


def _pin() -> str:
    return os.environ.get("MOBILESIGN_PIN") or getpass.getpass("PIN: ")


def _ca(args: argparse.Namespace) -> bytes:
    if args.ca:
        return Path(args.ca).read_bytes()
    state = Path(os.environ.get("MOBILESIGN_STATE_DIR", "var"))
    return (state / "pki" / "ca.pem").read_bytes()


async def _enroll(address: str, ca: bytes, ticket: bytes, pin: str) -> Keystore:
    async with channels.server_tls(address, ca) as channel:
        return await enroll(channel, ticket, pin)


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


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="client", description=__doc__)
    parser.add_argument("--cosigner", default="127.0.0.1:9443", help="cosigner public address")
    parser.add_argument("--ca", help="CA certificate (default: $MOBILESIGN_STATE_DIR/pki/ca.pem)")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("enroll", help="enrol a new key with a ticket from the gateway")
    p.add_argument("--ticket", required=True, help="file holding the enrolment ticket")
    p.add_argument("--keystore", required=True, help="keystore file to create")
    p = commands.add_parser("sign", help="sign files jointly; writes FILE.sig (64 bytes)")
    p.add_argument("--keystore", required=True)
    p.add_argument("files", nargs="+")
    p = commands.add_parser("public-key", help="print the joint public key (PEM)")
    p.add_argument("--keystore", required=True)
    args = parser.parse_args()
    try:
        if args.command == "enroll":
            ticket = Path(args.ticket).read_bytes()
            keystore = asyncio.run(_enroll(args.cosigner, _ca(args), ticket, _pin()))
            keystore.save(Path(args.keystore))
            print(f"enrolled key {keystore.key_id} for {keystore.user_id}")
        elif args.command == "sign":
            keystore = Keystore.load(Path(args.keystore))
            messages = [Path(name).read_bytes() for name in args.files]
            signatures = asyncio.run(_sign(args.cosigner, _ca(args), keystore, _pin(), messages))
            for name, signature in zip(args.files, signatures, strict=True):
                Path(name + ".sig").write_bytes(signature)
                print(f"{name}.sig")
        else:
            _public_key(args)
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
