"""What the cosigner's protocol handlers share: storage, the HSM, the RA, settings."""

from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass, field

from cosigner.hsm_proxy_client import Sealer
from cosigner.ra_client import Registry
from cosigner.repository import KeyStore
from mobilesign import domains


class KeyLocks:
    """One asyncio lock per key id, kept while someone holds or waits for it."""

    def __init__(self) -> None:
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    def __call__(self, key_id: str) -> asyncio.Lock:
        """The lock of ``key_id``."""
        lock = self._locks.get(key_id)
        if lock is None:
            lock = self._locks[key_id] = asyncio.Lock()
        return lock


@dataclass(frozen=True)
class Cosigner:
    """The cosigner's dependencies and limits."""

    store: KeyStore
    sealer: Sealer
    registry: Registry
    step_timeout: float
    max_pin_attempts: int
    #: At most one PIN proof per key is checked at a time.
    pin_locks: KeyLocks = field(default_factory=KeyLocks)


def key_package_aad(key_id: str) -> bytes:
    """Associated data binding a sealed key package to its key."""
    return domains.SEALED_KEY_PACKAGE_AAD + key_id.encode()


def pin_verifier_aad(key_id: str) -> bytes:
    """Associated data binding a sealed PIN verifier to its key."""
    return domains.SEALED_PIN_VERIFIER_AAD + key_id.encode()
