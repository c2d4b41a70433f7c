"""Configuration of the HSM proxy (section ``[hsm_proxy]``, env ``MOBILESIGN_HSM_PROXY_*``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mobilesign.hosting import config

_SOFTHSM_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
)


@dataclass(frozen=True)
class HsmProxyConfig:
    """Settings of the HSM proxy; defaults suit one machine with a SoftHSM2 token."""

    listen: str = "127.0.0.1:50051"
    #: PKCS#11 module; empty means SoftHSM2 at its usual Debian paths.
    module: str = ""
    token_label: str = "mobilesign"  # noqa: S105 (a token name, not a secret)
    #: File holding the token user PIN; empty means ``<state>/hsm/user.pin`` (created with a
    #: random PIN when the proxy initialises a SoftHSM2 token itself).
    user_pin_file: str = ""
    #: Initialise a SoftHSM2 token under ``<state>/hsm`` when none has the label.
    init_softhsm_token: bool = True
    #: Label of the audit log's key (created at the first start; it signs only checkpoints).
    log_key_label: str = "audit-log"
    #: The log's origin line in every checkpoint, and the note key name.
    log_origin: str = "mobilesign.invalid/audit-log"
    workers: int = 4
    queue_size: int = 256
    max_message_bytes: int = 64 * 1024
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

    def module_path(self) -> str:
        """The PKCS#11 module to load."""
        if self.module:
            return self.module
        for candidate in _SOFTHSM_CANDIDATES:
            if Path(candidate).exists():
                return candidate
        raise config.ConfigError(
            "no PKCS#11 module: [hsm_proxy] module is empty and SoftHSM2 is not installed at "
            f"{', '.join(_SOFTHSM_CANDIDATES)}: install softhsm2 or set [hsm_proxy] module"
        )


def load(document: dict[str, Any]) -> HsmProxyConfig:
    """Read ``[hsm_proxy]`` from the configuration document and the environment; refuse the
    SoftHSM2 initialisation with another module configured."""
    cfg = config.load_section(HsmProxyConfig, "hsm_proxy", document)
    if cfg.init_softhsm_token and cfg.module and "softhsm" not in Path(cfg.module).name.lower():
        # softhsm2-util would make a token the configured module never sees: the proxy would
        # then fail with "no token", far from the cause.
        raise config.ConfigError(
            f"[hsm_proxy] init_softhsm_token is true but [hsm_proxy] module is {cfg.module}, "
            "not SoftHSM2: set init_softhsm_token = false (MOBILESIGN_HSM_PROXY_INIT_SOFTHSM_"
            "TOKEN=false) and initialise the token with the module's own tools, or empty "
            "module for SoftHSM2"
        )
    return cfg
