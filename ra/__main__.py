"""``python -m ra [--config FILE]``: run the registration authority and CA until SIGTERM."""

from __future__ import annotations

import contextlib
import datetime
from pathlib import Path
from typing import Any

import grpc

from mobilesign.ca import CaSettings, CertificateAuthority
from mobilesign.hosting import devpki, entrypoint, health, logs, serve, tracing
from mobilesign.hosting.stores import store_location
from mobilesign.rpc import channels
from mobilesign.v1 import hsm_pb2, ra_pb2_grpc
from ra import admin, registry
from ra import config as ra_config
from ra.ca_repository import CaStore
from ra.certification import RegistrationAuthority
from ra.changes import ChangeFeed
from ra.database import open_ra_db
from ra.grants import GrantIssuer, GrantStore
from ra.hsm_proxy_client import HsmClient, HsmSigner
from ra.key_creations import KeyCreations
from ra.organisations import OrganisationStore
from ra.users import UserStore


async def _main(
    document: dict[str, Any], state: Path, resources: contextlib.AsyncExitStack
) -> None:
    cfg = ra_config.load(document)
    logs.configure("ra", cfg.log_level)
    stop_tracing = tracing.configure("ra")
    if stop_tracing is not None:
        resources.callback(stop_tracing)
    credential = devpki.credential(state, "ra")
    (state / "ra").mkdir(parents=True, exist_ok=True, mode=0o700)
    db = await open_ra_db(store_location("ra", cfg.database, state / "ra", "ra"))
    resources.push_async_callback(db.close)
    ca_store = await CaStore.open(store_location("ra", cfg.database, state / "ra", "ca"))
    resources.push_async_callback(ca_store.close)
    hsm_channel = channels.mutual_tls(cfg.hsm_proxy, credential, "hsm-proxy")
    resources.push_async_callback(hsm_channel.close)
    hsm = HsmClient(hsm_channel)
    ca_key = await hsm.ensure_key(cfg.ca_key_label, hsm_pb2.KEY_PURPOSE_CA)
    ticket_key = await hsm.ensure_key(cfg.ticket_key_label, hsm_pb2.KEY_PURPOSE_TICKET)
    grant_key = await hsm.ensure_key(cfg.grant_key_label, hsm_pb2.KEY_PURPOSE_GRANT)
    ca = await CertificateAuthority.start(
        HsmSigner(hsm, ca_key),
        ca_key.key_id,
        ca_key.public_key_spki,
        ca_store,
        CaSettings(
            organisation=cfg.ca_organisation,
            certificate_validity_days=cfg.certificate_validity_days,
            crl_url=cfg.crl_url,
        ),
        clock=lambda: datetime.datetime.now(datetime.UTC),
    )
    (state / "ra" / "ca.der").write_bytes(ca.root_der)
    users = UserStore(db)
    organisations = OrganisationStore(db)
    changes = ChangeFeed()
    authority = RegistrationAuthority(
        ca=ca,
        users=users,
        organisations=organisations,
        hsm=hsm,
        ticket_key=ticket_key,
        creations=KeyCreations(db),
        changes=changes,
    )
    # An organisation key left in the token by a creation cut short is adopted (and any other
    # key no organisation holds is named in the log) before the first request.
    await authority.reconcile_organisation_keys()
    issuer = GrantIssuer(
        store=GrantStore(db),
        users=users,
        organisations=organisations,
        hsm=hsm,
        grant_key=grant_key,
        changes=changes,
    )
    # A revocation stored here whose push to the HSM proxy was cut short reaches it now.
    await authority.push_revocations(
        [(r.kind, r.serial, r.subject_key_id) for r in await ca_store.revoked()]
    )
    await issuer.push_revocations()
    admin_servicer = admin.AdminServicer(
        users=users,
        organisations=organisations,
        hsm=hsm,
        ca=ca,
        ra=authority,
        issuer=issuer,
        ticket_key=ticket_key,
        default_ttl=cfg.default_ticket_ttl_seconds,
    )
    registry_servicer = registry.RegistryServicer(
        ca=ca,
        ra=authority,
        organisations=organisations,
        issuer=issuer,
        ticket_key=ticket_key,
        changes=changes,
    )

    def register(server: grpc.aio.Server) -> None:
        ra_pb2_grpc.add_AdminServiceServicer_to_server(admin_servicer, server)
        ra_pb2_grpc.add_RegistrationServiceServicer_to_server(registry_servicer, server)

    await serve.serve(
        name="ra",
        services={admin.SERVICE: admin.POLICY, registry.SERVICE: registry.POLICY},
        register=register,
        listeners=[serve.Listener("internal", cfg.listen, mutual=True)],
        credential=credential,
        limits=serve.Limits(cfg.max_message_bytes, cfg.max_concurrent_rpcs, cfg.grace_seconds),
        state_dir=state,
        peers=[
            health.grpc_peer("hsm-proxy", hsm_channel, "mobilesign.v1.HsmService"),
            health.database_peer(db),
        ],
        health_listen=cfg.health_listen,
        metrics_listen=cfg.metrics_listen,
    )


def main() -> None:
    """Command-line entry point."""
    entrypoint.run("ra", __doc__, _main)


if __name__ == "__main__":
    main()
