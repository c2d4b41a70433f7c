"""``python -m cosigner [--config FILE]``: run the cosigner until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio

from cosigner import config as cosigner_config
from cosigner import servicer
from cosigner.context import Cosigner
from cosigner.gateway import Gateway
from cosigner.hsm import Sealer
from cosigner.store import KeyStore
from grpc_host import channels, config, devpki, logs, serve
from mobilesign.v1 import cosigner_pb2_grpc


async def _main(args: argparse.Namespace) -> None:
    document = config.load_file(args.config)
    state = config.state_dir(document)
    cfg = cosigner_config.load(document)
    logs.configure("cosigner", cfg.log_level)
    credential = devpki.credential(state, "cosigner")
    store = await KeyStore.open(state / "cosigner" / "cosigner.db")
    hsm_channel = channels.mutual_tls(cfg.hsm_proxy, credential, "hsm-proxy")
    gateway_channel = channels.mutual_tls(cfg.gateway, credential, "gateway")
    cosigner = Cosigner(
        store=store,
        sealer=Sealer(hsm_channel),
        gateway=Gateway(gateway_channel),
        step_timeout=cfg.step_timeout_seconds,
        max_pin_attempts=cfg.max_pin_attempts,
    )

    async def close() -> None:
        await hsm_channel.close()
        await gateway_channel.close()
        await store.close()

    await serve.serve(
        name="cosigner",
        services={servicer.SERVICE: servicer.POLICY},
        register=lambda server: cosigner_pb2_grpc.add_CosignerServiceServicer_to_server(
            servicer.CosignerServicer(cosigner), server
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
    parser = argparse.ArgumentParser(prog="cosigner", description=__doc__)
    parser.add_argument("--config", help="TOML configuration file (or MOBILESIGN_CONFIG)")
    asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
