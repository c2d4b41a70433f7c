"""``python -m mobilesign.hosting.probe``: one gRPC health check over mutual TLS.

The services serve ``grpc.health.v1.Health`` on their mutual-TLS internal listener, which
refuses a caller without a client certificate, so an orchestrator's built-in gRPC probe (which
presents none) cannot ask it. This command can: it presents a certificate of the internal CA,
asks ``Health/Check`` once, prints one line (the status, or ``error: ...``) and exits 0 when the
answer is SERVING, 1 otherwise, 2 on a usage error.

    python -m mobilesign.hosting.probe --address 127.0.0.1:50053 \\
        --cert pki/gateway.pem --key pki/gateway.key --ca pki/ca.pem --server-name gateway
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mobilesign.rpc import channels


class ProbeError(Exception):
    """The check could not be made (credential unreadable, server unreachable, call refused)."""


async def check(
    address: str,
    credential: channels.Credential,
    server_name: str | None,
    service: str,
    deadline: float,
) -> str:
    """Ask ``address``, within ``deadline`` seconds, for the health of ``service`` ("" = the
    whole server) and return the status's name (``SERVING``, ``NOT_SERVING``, ...).

    ``server_name`` is the name the server's certificate must carry (the services' identities:
    ``gateway``, ``cosigner``, ``ra``, ``hsm-proxy``); None checks it against the address's host.
    """
    try:
        channel = channels.mutual_tls(address, credential, server_name or _host(address))
    except OSError as exc:
        raise ProbeError(f"cannot read credential: {exc}") from None
    async with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = await stub.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=deadline
            )
        except grpc.aio.AioRpcError as exc:
            raise ProbeError(f"{exc.code().name}: {exc.details()}") from None
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def _host(address: str) -> str:
    """The host of ``HOST:PORT`` (``[v6]:PORT`` too), the name a certificate is checked against."""
    return address.rsplit(":", 1)[0].strip("[]")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mobilesign.hosting.probe",
        description="gRPC health check over mutual TLS: exit 0 when SERVING, 1 otherwise.",
    )
    parser.add_argument("--address", required=True, help="HOST:PORT of the listener")
    parser.add_argument("--cert", required=True, type=Path, help="client certificate (PEM)")
    parser.add_argument("--key", required=True, type=Path, help="its private key (PEM)")
    parser.add_argument("--ca", required=True, type=Path, help="the internal CA (PEM)")
    parser.add_argument("--server-name", help="name the server's certificate must carry")
    parser.add_argument("--service", default="", help="service to ask about (default: all)")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds (default: 5)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one check; print one line; return 0 when SERVING, 1 otherwise (2: usage error)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    credential = channels.Credential(args.cert.stem, args.cert, args.key, args.ca)
    try:
        status = asyncio.run(
            check(args.address, credential, args.server_name, args.service, args.timeout)
        )
    except ProbeError as exc:
        # One line, whatever the library put in the message: a probe's output is a log line.
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)
        return 1
    print(status)
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
