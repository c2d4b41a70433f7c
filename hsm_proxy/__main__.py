"""``python -m hsm_proxy [--config FILE]``: run the HSM proxy until SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from pathlib import Path
from typing import Any

from hsm_proxy import config as hsm_config
from hsm_proxy import keys, servicer, token
from hsm_proxy.authorisation import AuthorisationChecker
from hsm_proxy.uses import UseStore
from hsm_proxy.witness import Witness
from mobilesign.hosting import devpki, entrypoint, health, logs, metrics, serve, tracing
from mobilesign.hosting.stores import store_location
from mobilesign.v1 import hsm_pb2_grpc


async def _main(
    document: dict[str, Any], state: Path, resources: contextlib.AsyncExitStack
) -> None:
    cfg = hsm_config.load(document)
    logs.configure("hsm-proxy", cfg.log_level)
    stop_tracing = tracing.configure("hsm-proxy")
    if stop_tracing is not None:
        resources.callback(stop_tracing)
    hsm_dir = state / "hsm"
    hsm_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    pin_file = Path(cfg.user_pin_file) if cfg.user_pin_file else hsm_dir / "user.pin"
    if cfg.init_softhsm_token:
        token.ensure_softhsm_token(hsm_dir, cfg.token_label, pin_file)
    pool = token.SessionPool(
        cfg.module_path(), cfg.token_label, token.read_pin(pin_file), cfg.workers, cfg.queue_size
    )
    # Closed last: finishes queued operations, then logs out of the token.
    resources.push_async_callback(asyncio.to_thread, pool.close)
    metrics.HSM_QUEUE_CAPACITY.set(cfg.workers + cfg.queue_size)

    # Sealing keys exist before anyone may seal: concurrent first seals cannot create two.
    for caller in sorted(servicer.POLICY.rules["Seal"]):
        await servicer.run_in_token(
            pool, functools.partial(keys.ensure_sealing_key, caller=caller), name="ensure_key"
        )
    uses = await UseStore.open(store_location("hsm-proxy", cfg.database, hsm_dir, "authorisations"))
    resources.push_async_callback(uses.close)
    log_key = await servicer.run_in_token(
        pool,
        lambda s: keys.ensure(s, cfg.log_key_label, keys.Purpose.LOG, keys.Algorithm.EC_P256),
        name="ensure_key",
    )
    witness = await Witness.open(
        store_location("hsm-proxy", cfg.database, hsm_dir, "witness"),
        cfg.log_origin,
        log_key.spki,
        lambda digest: servicer.run_in_token(
            pool,
            lambda s: keys.sign_digest(s, log_key, keys.SignMechanism.ECDSA_SHA256, digest),
            name="sign_checkpoint",
        ),
    )
    resources.push_async_callback(witness.close)
    checker = AuthorisationChecker(
        lambda purpose: servicer.run_in_token(
            pool, lambda s: keys.list_keys(s, purpose), name="list_keys"
        ),
        lambda sealed, aad: servicer.run_in_token(
            pool, lambda s: keys.unseal(s, "cosigner", sealed, aad), name="unseal"
        ),
        uses,
        witness.root_at,
    )

    await serve.serve(
        name="hsm-proxy",
        services={servicer.SERVICE: servicer.POLICY},
        register=lambda server: hsm_pb2_grpc.add_HsmServiceServicer_to_server(
            servicer.HsmServicer(pool, checker, witness, uses), server
        ),
        listeners=[serve.Listener("internal", cfg.listen, mutual=True)],
        credential=devpki.credential(state, "hsm-proxy"),
        limits=serve.Limits(cfg.max_message_bytes, cfg.max_concurrent_rpcs, cfg.grace_seconds),
        state_dir=state,
        # The token itself needs no watcher: a failing token fails its operations, each with
        # HSM_UNAVAILABLE. The authorisation store is what every use needs.
        peers=[health.database_peer(uses._db)],
        health_listen=cfg.health_listen,
        metrics_listen=cfg.metrics_listen,
    )


def main() -> None:
    """Command-line entry point."""
    entrypoint.run("hsm_proxy", __doc__, _main)


if __name__ == "__main__":
    main()
