"""``python -m cosigner [--config FILE]``: run the cosigner until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from cosigner import config as cosigner_config
from cosigner import servicer
from cosigner.context import Cosigner
from cosigner.gateway import Gateway
from cosigner.hsm import Sealer
from cosigner.store import KeyStore
from grpc_host import channels, config, devpki, logs, serve
from mobilesign.v1 import cosigner_pb2_grpc


async def _main(args: argparse.Namespace, resources: contextlib.AsyncExitStack) -> None:
    document = config.load_file(args.config)
    state = config.state_dir(document)
    cfg = cosigner_config.load(document)
    logs.configure("cosigner", cfg.log_level)
    credential = devpki.credential(state, "cosigner")
    store = await KeyStore.open(state / "cosigner" / "cosigner.db")
    resources.push_async_callback(store.close)
    hsm_channel = channels.mutual_tls(cfg.hsm_proxy, credential, "hsm-proxy")
    resources.push_async_callback(hsm_channel.close)
    gateway_channel = channels.mutual_tls(cfg.gateway, credential, "gateway")
    resources.push_async_callback(gateway_channel.close)
    cosigner = Cosigner(
        store=store,
        sealer=Sealer(hsm_channel),
        gateway=Gateway(gateway_channel),
        step_timeout=cfg.step_timeout_seconds,
        max_pin_attempts=cfg.max_pin_attempts,
    )

    await serve.serve(
        name="cosigner",
        services={servicer.SERVICE: servicer.POLICY},
        register=lambda server: cosigner_pb2_grpc.add_CosignerServiceServicer_to_server(
            servicer.CosignerServicer(cosigner), server
        ),
        listeners=[
            serve.Listener("internal", cfg.listen, mutual=True),
            serve.Listener(
                "public",
                cfg.public_listen,
                mutual=False,
                credential=devpki.credential(state, "cosigner-public"),
            ),
        ],
        credential=credential,
        limits=serve.Limits(cfg.max_message_bytes, cfg.max_concurrent_rpcs, cfg.grace_seconds),
        state_dir=state,
    )


async def _run(args: argparse.Namespace) -> None:
    # Everything opened is closed, also when start-up fails half way.
    async with contextlib.AsyncExitStack() as resources:
        await _main(args, resources)


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="cosigner", description=__doc__)
    parser.add_argument("--config", help="TOML configuration file (or MOBILESIGN_CONFIG)")
    asyncio.run(_run(parser.parse_args()))


if __name__ == "__main__":
    main()
