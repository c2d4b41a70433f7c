"""``python -m server [--config FILE]``: run the signing gateway until SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import grpc

from mobilesign.hosting import (
    devpki,
    entrypoint,
    health,
    logs,
    metrics,
    secret_file,
    serve,
    tracing,
)
from mobilesign.hosting.stores import store_location
from mobilesign.rpc import channels
from mobilesign.v1 import csc_pb2_grpc, gateway_pb2_grpc
from server import config as gateway_config
from server import public, shared_keys
from server.audit import AuditLog
from server.cosigner_client import CosignerClient
from server.csc import admin as csc_admin
from server.csc import api as csc_api
from server.csc.applications import Applications
from server.csc.approvals import Approvals
from server.database import open_gateway_db
from server.hsm_proxy_client import HsmClient
from server.ledger import Ledger
from server.operations import Operations
from server.ra_cache import CachedRegistry
from server.sessions import Challenges, Sessions


async def _main(
    document: dict[str, Any], state: Path, resources: contextlib.AsyncExitStack
) -> None:
    cfg = gateway_config.load(document)
    logs.configure("gateway", cfg.log_level)
    stop_tracing = tracing.configure("gateway")
    if stop_tracing is not None:
        resources.callback(stop_tracing)
    credential = devpki.credential(state, "gateway")
    db = await open_gateway_db(
        store_location("gateway", cfg.database, state / "gateway", "gateway")
    )
    resources.push_async_callback(db.close)
    channels_to = {}
    for name, address in (("hsm-proxy", cfg.hsm_proxy), ("cosigner", cfg.cosigner), ("ra", cfg.ra)):
        channels_to[name] = channels.mutual_tls(address, credential, name)
        resources.push_async_callback(channels_to[name].close)
    hsm = HsmClient(channels_to["hsm-proxy"])
    cosigner = CosignerClient(channels_to["cosigner"])
    registry = CachedRegistry(channels_to["ra"])
    watch = asyncio.create_task(registry.watch())
    resources.callback(watch.cancel)
    ledger = await Ledger.open(store_location("gateway", cfg.database, state / "gateway", "ledger"))
    resources.push_async_callback(ledger.close)
    audit = AuditLog(ledger, hsm, await hsm.log_state())
    metrics.observe_audit_log(lambda: ledger.size, lambda: ledger.batches)
    record_key_file = (
        Path(cfg.record_key_file) if cfg.record_key_file else state / "gateway" / "record.key"
    )
    record_key = secret_file.load_or_create(record_key_file)
    await shared_keys.check_shared(db, "record", record_key, "[gateway] record_key_file")
    operations = Operations(
        ledger=ledger,
        audit=audit,
        hsm=hsm,
        registry=registry,
        cosigner=cosigner,
        record_key=record_key,
    )
    challenge_key_file = (
        Path(cfg.challenge_key_file)
        if cfg.challenge_key_file
        else state / "gateway" / "challenge.key"
    )
    challenge_key = secret_file.load_or_create(challenge_key_file)
    await shared_keys.check_shared(db, "challenge", challenge_key, "[gateway] challenge_key_file")
    challenges = Challenges(challenge_key, cfg.session_challenge_seconds)
    sessions = Sessions(db, registry, cosigner, challenges)
    approvals = Approvals(
        db=db,
        registry=registry,
        sessions=sessions,
        operations=operations,
        approval_seconds=cfg.csc_approval_seconds,
        sad_seconds=cfg.csc_sad_seconds,
        max_signatures=cfg.csc_max_signatures,
    )
    applications = Applications(db, registry, cfg.csc_token_seconds)
    public_servicer = public.GatewayServicer(
        registry=registry,
        sessions=sessions,
        operations=operations,
        audit=audit,
        approvals=approvals,
    )
    admin_servicer = csc_admin.CscAdminServicer(applications)

    def register(server: grpc.aio.Server) -> None:
        gateway_pb2_grpc.add_GatewayServiceServicer_to_server(public_servicer, server)
        csc_pb2_grpc.add_CscAdminServiceServicer_to_server(admin_servicer, server)

    sidecars: list[serve.Sidecar] = []
    if cfg.csc_listen:
        settings = csc_api.Settings(
            cfg.csc_wait_seconds, cfg.csc_max_request_bytes, cfg.csc_max_requests_per_peer
        )
        endpoint = csc_api.Endpoint(
            applications=applications, approvals=approvals, registry=registry, settings=settings
        )
        edge = devpki.credential(state, "gateway-public")
        sidecars.append(
            csc_api.HttpsListener(
                csc_api.application(endpoint, settings),
                cfg.csc_listen,
                csc_api.tls_context(str(edge.cert), str(edge.key)),
                cfg.grace_seconds,
            )
        )

    await serve.serve(
        name="gateway",
        services={public.SERVICE: public.POLICY, csc_admin.SERVICE: csc_admin.POLICY},
        register=register,
        listeners=[
            serve.Listener("internal", cfg.listen, mutual=True),
            serve.Listener(
                "public",
                cfg.public_listen,
                mutual=False,
                credential=devpki.credential(state, "gateway-public"),
                max_concurrent_rpcs=cfg.public_max_concurrent_rpcs,
                max_rpcs_per_peer=cfg.public_max_rpcs_per_peer,
                first_message_timeout=cfg.first_message_timeout_seconds,
            ),
        ],
        credential=credential,
        limits=serve.Limits(cfg.max_message_bytes, cfg.max_concurrent_rpcs, cfg.grace_seconds),
        state_dir=state,
        peers=[
            health.grpc_peer("hsm-proxy", channels_to["hsm-proxy"], "mobilesign.v1.HsmService"),
            health.database_peer(db),
        ],
        health_listen=cfg.health_listen,
        metrics_listen=cfg.metrics_listen,
        sidecars=sidecars,
    )


def main() -> None:
    """Command-line entry point."""
    entrypoint.run("server", __doc__, _main)


if __name__ == "__main__":
    main()
