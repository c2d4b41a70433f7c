"""``python -m server [--config FILE]``: run the signing gateway until SIGTERM."""

from __future__ import annotations

import contextlib
import datetime
from pathlib import Path
from typing import Any

import grpc

from mobilesign.ca import CaSettings, CertificateAuthority
from mobilesign.hosting import devpki, entrypoint, logs, serve
from mobilesign.rpc import channels
from mobilesign.v1 import gateway_pb2_grpc, hsm_pb2
from server import admin, public
from server import config as gateway_config
from server.audit import AuditLog
from server.ca_repository import CaStore
from server.cosigner_client import CosignerClient
from server.database import open_gateway_db
from server.hsm_proxy_client import HsmClient, HsmSigner
from server.ledger import Ledger
from server.operations import Operations
from server.organisations import OrganisationStore
from server.registration import RegistrationAuthority
from server.sessions import Sessions
from server.users import UserStore


async def _main(
    document: dict[str, Any], state: Path, resources: contextlib.AsyncExitStack
) -> None:
    cfg = gateway_config.load(document)
    logs.configure("gateway", cfg.log_level)
    credential = devpki.credential(state, "gateway")
    db = await open_gateway_db(state / "gateway" / "gateway.db")
    resources.push_async_callback(db.close)
    ca_store = await CaStore.open(state / "gateway" / "ca.db")
    resources.push_async_callback(ca_store.close)
    hsm_channel = channels.mutual_tls(cfg.hsm_proxy, credential, "hsm-proxy")
    resources.push_async_callback(hsm_channel.close)
    cosigner_channel = channels.mutual_tls(cfg.cosigner, credential, "cosigner")
    resources.push_async_callback(cosigner_channel.close)
    hsm = HsmClient(hsm_channel)
    ca_key = await hsm.ensure_key(cfg.ca_key_label, hsm_pb2.KEY_PURPOSE_CA)
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
    (state / "gateway" / "ca.der").write_bytes(ca.root_der)
    users = UserStore(db)
    organisations = OrganisationStore(db)
    cosigner = CosignerClient(cosigner_channel)
    ra = RegistrationAuthority(
        ca=ca,
        users=users,
        organisations=organisations,
        hsm=hsm,
        cosigner=cosigner,
        ticket_key_label=cfg.ticket_key_label,
    )
    ledger = await Ledger.open(state / "gateway" / "ledger.db")
    resources.push_async_callback(ledger.close)
    audit = AuditLog(ledger, hsm, await hsm.log_state())
    operations = Operations(
        ledger=ledger,
        audit=audit,
        hsm=hsm,
        ca=ca,
        users=users,
        organisations=organisations,
        cosigner=cosigner,
    )
    admin_servicer = admin.AdminServicer(
        users=users,
        organisations=organisations,
        hsm=hsm,
        ca=ca,
        ra=ra,
        operations=operations,
        ticket_key_label=cfg.ticket_key_label,
        default_ttl=cfg.default_ticket_ttl_seconds,
    )
    public_servicer = public.GatewayServicer(
        ca=ca,
        ra=ra,
        organisations=organisations,
        sessions=Sessions(db, ca, cosigner),
        operations=operations,
        audit=audit,
    )

    def register(server: grpc.aio.Server) -> None:
        gateway_pb2_grpc.add_AdminServiceServicer_to_server(admin_servicer, server)
        gateway_pb2_grpc.add_GatewayServiceServicer_to_server(public_servicer, server)

    await serve.serve(
        name="gateway",
        services={admin.SERVICE: admin.POLICY, public.SERVICE: public.POLICY},
        register=register,
        listeners=[
            serve.Listener("internal", cfg.listen, mutual=True),
            serve.Listener(
                "public",
                cfg.public_listen,
                mutual=False,
                credential=devpki.credential(state, "gateway-public"),
            ),
        ],
        credential=credential,
        limits=serve.Limits(cfg.max_message_bytes, cfg.max_concurrent_rpcs, cfg.grace_seconds),
        state_dir=state,
    )


def main() -> None:
    """Command-line entry point."""
    entrypoint.run("server", __doc__, _main)


if __name__ == "__main__":
    main()
