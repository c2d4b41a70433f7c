"""Configuration of the RA (section ``[ra]``, env ``MOBILESIGN_RA_*``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mobilesign.hosting import config


@dataclass(frozen=True)
class RaConfig:
    """Settings of the registration authority and CA."""

    #: Internal listener (mutual TLS): administrators, the gateway and the cosigner.
    listen: str = "127.0.0.1:50054"
    hsm_proxy: str = "127.0.0.1:50051"
    #: Label of the enrolment-ticket key (EC P-256, purpose ticket) in the HSM.
    ticket_key_label: str = "ra-tickets"
    #: Label of the grant key (EC P-256, purpose grant) in the HSM.
    grant_key_label: str = "ra-grants"
    default_ticket_ttl_seconds: int = 86_400
    #: Label of the CA key (EC P-256, purpose CA) in the HSM.
    ca_key_label: str = "mobilesign-root-ca"
    #: O= of the CA certificate.
    ca_organisation: str = "mobilesign"
    #: Where relying parties fetch the CRL (written into every certificate).
    crl_url: str = "http://pki.mobilesign.invalid/crl/root.crl"
    certificate_validity_days: int = 365
    max_message_bytes: int = 256 * 1024
    max_concurrent_rpcs: int = 1024
    #: Where the service keeps its state: empty for SQLite files under the state directory, or
    #: a ``postgresql://`` URL for a database of its own (each store a schema in it; replicas
    #: of the service may share it).
    database: str = ""
    #: Prometheus metrics over plain HTTP (``HOST:PORT``); empty: none. Keep it on loopback or
    #: a monitoring network: it is not authenticated.
    metrics_listen: str = ""
    #: A plaintext gRPC health listener (``HOST:PORT``, health service only) for probes that
    #: present no client certificate, such as Kubernetes' ``grpc`` probe; empty: none.
    health_listen: str = ""
    grace_seconds: float = 5.0
    log_level: str = "info"


def load(document: dict[str, Any]) -> RaConfig:
    """Read ``[ra]`` from the configuration document and the environment."""
    return config.load_section(RaConfig, "ra", document)
