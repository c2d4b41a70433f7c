"""What the cosigner's protocol handlers share: storage, the HSM, the gateway, settings."""

from __future__ import annotations

from dataclasses import dataclass

from cosigner.errors import CosignerError
from cosigner.gateway_client import Gateway
from cosigner.hsm_proxy_client import Sealer
from cosigner.repository import KeyStore
from mobilesign import records
from mobilesign.errors import Kind


@dataclass(frozen=True)
class Cosigner:
    """The cosigner's dependencies and limits."""

    store: KeyStore
    sealer: Sealer
    gateway: Gateway
    step_timeout: float
    max_pin_attempts: int


def check_key_id(key_id: str) -> None:
    """Refuse key ids that are not 64 lowercase hex digits (the joint public key)."""
    if not records.is_user_key_id(key_id):
        raise CosignerError(Kind.INVALID, "MALFORMED_KEY_ID", "a key id is 64 hex digits")


def key_package_aad(key_id: str) -> bytes:
    """Associated data binding a sealed key package to its key."""
    return b"mobilesign/v1 sealed-key-package\x00" + key_id.encode()


def pin_verifier_aad(key_id: str) -> bytes:
    """Associated data binding a sealed PIN verifier to its key."""
    return b"mobilesign/v1 sealed-pin-verifier\x00" + key_id.encode()
