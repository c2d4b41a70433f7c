"""What the cosigner's protocol handlers share: storage, the HSM, the gateway, settings."""

from __future__ import annotations

from dataclasses import dataclass

from cosigner.gateway_client import Gateway
from cosigner.hsm_proxy_client import Sealer
from cosigner.repository import KeyStore
from mobilesign import domains


@dataclass(frozen=True)
class Cosigner:
    """The cosigner's dependencies and limits."""

    store: KeyStore
    sealer: Sealer
    gateway: Gateway
    step_timeout: float
    max_pin_attempts: int


def key_package_aad(key_id: str) -> bytes:
    """Associated data binding a sealed key package to its key."""
    return domains.SEALED_KEY_PACKAGE_AAD + key_id.encode()


def pin_verifier_aad(key_id: str) -> bytes:
    """Associated data binding a sealed PIN verifier to its key."""
    return domains.SEALED_PIN_VERIFIER_AAD + key_id.encode()
