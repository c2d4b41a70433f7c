"""``python -m server [--config FILE]``: run the signing gateway until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio

from grpc_host import channels, config, devpki, logs, serve
from mobilesign.v1 import gateway_pb2_grpc
from server import admin
from server import config as gateway_config
from server.hsm import HsmClient
from server.users import UserStore


async def _main(args: argparse.Namespace) -> None:
    document = config.load_file(args.config)
    state = config.state_dir(document)
    cfg = gateway_config.load(document)
    logs.configure("gateway", cfg.log_level)
    credential = devpki.credential(state, "gateway")
    users = await UserStore.open(state / "gateway" / "gateway.db")
    hsm_channel = channels.mutual_tls(cfg.hsm_proxy, credential, "hsm-proxy")
    servicer = admin.AdminServicer(
        users, HsmClient(hsm_channel), cfg.ticket_key_label, cfg.default_ticket_ttl_seconds
    )

    async def close() -> None:
        await hsm_channel.close()
        await users.close()

    await serve.serve(
        name="gateway",
        services={admin.SERVICE: admin.POLICY},
        register=lambda server: gateway_pb2_grpc.add_AdminServiceServicer_to_server(
            servicer, server
        ),
        listeners=[
            serve.Listener("internal", cfg.listen, mutual=True),
            serve.Listener("public", cfg.public_listen, mutual=False),
        ],
        credential=credential,
        limits=serve.Limits(cfg.max_message_bytes, cfg.max_concurrent_rpcs, cfg.grace_seconds),
        state_dir=state,
        on_stop=close,
    )


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="server", description=__doc__)
    parser.add_argument("--config", help="TOML configuration file (or MOBILESIGN_CONFIG)")
    asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
