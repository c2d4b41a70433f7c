"""``python -m cosigner [--config FILE]``: run the cosigner until SIGTERM."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from cosigner import config as cosigner_config
from cosigner import servicer
from cosigner.context import Cosigner
from cosigner.hsm_proxy_client import Sealer
from cosigner.ra_client import Registry
from cosigner.repository import KeyStore
from mobilesign.hosting import devpki, entrypoint, health, logs, metrics, serve, tracing
from mobilesign.hosting.stores import store_location
from mobilesign.rpc import channels
from mobilesign.storage.connection import Connection
from mobilesign.v1 import cosigner_pb2_grpc


def _locked_keys(connection: Connection) -> int:
    return int(connection.execute("SELECT COUNT(*) FROM keys WHERE locked <> 0").fetchone()[0])


async def _main(
    document: dict[str, Any], state: Path, resources: contextlib.AsyncExitStack
) -> None:
    cfg = cosigner_config.load(document)
    logs.configure("cosigner", cfg.log_level)
    stop_tracing = tracing.configure("cosigner")
    if stop_tracing is not None:
        resources.callback(stop_tracing)
    credential = devpki.credential(state, "cosigner")
    store = await KeyStore.open(
        store_location("cosigner", cfg.database, state / "cosigner", "cosigner")
    )
    resources.push_async_callback(store.close)
    hsm_channel = channels.mutual_tls(cfg.hsm_proxy, credential, "hsm-proxy")
    resources.push_async_callback(hsm_channel.close)
    ra_channel = channels.mutual_tls(cfg.ra, credential, "ra")
    resources.push_async_callback(ra_channel.close)
    cosigner = Cosigner(
        store=store,
        sealer=Sealer(hsm_channel),
        registry=Registry(ra_channel),
        step_timeout=cfg.step_timeout_seconds,
        max_pin_attempts=cfg.max_pin_attempts,
    )

    async def check_store() -> None:
        # The database check counts the locked keys too: one query, and the gauge stays as
        # fresh as the health status without a task of its own.
        metrics.LOCKED_KEYS.set(await store._db.run(_locked_keys))

    await serve.serve(
        name="cosigner",
        services={servicer.SERVICE: servicer.POLICY},
        register=lambda server: cosigner_pb2_grpc.add_CosignerServiceServicer_to_server(
            servicer.CosignerServicer(cosigner, cfg.first_message_timeout_seconds), server
        ),
        listeners=[
            serve.Listener("internal", cfg.listen, mutual=True),
            serve.Listener(
                "public",
                cfg.public_listen,
                mutual=False,
                credential=devpki.credential(state, "cosigner-public"),
                max_concurrent_rpcs=cfg.public_max_concurrent_rpcs,
                max_rpcs_per_peer=cfg.public_max_rpcs_per_peer,
                first_message_timeout=cfg.first_message_timeout_seconds,
            ),
        ],
        credential=credential,
        limits=serve.Limits(cfg.max_message_bytes, cfg.max_concurrent_rpcs, cfg.grace_seconds),
        state_dir=state,
        peers=[
            health.grpc_peer("hsm-proxy", hsm_channel, "mobilesign.v1.HsmService"),
            health.Peer("database", check_store),
        ],
        health_listen=cfg.health_listen,
        metrics_listen=cfg.metrics_listen,
    )


def main() -> None:
    """Command-line entry point."""
    entrypoint.run("cosigner", __doc__, _main)


if __name__ == "__main__":
    main()
