"""What the CA keeps: the records it reads and writes, and the repository interface it needs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class SerialInUse(Exception):
    """A serial number was issued before (never happens with 159 random bits, but checked)."""


@dataclass(frozen=True)
class CertificateRecord:
    """One issued certificate and its revocation state."""

    serial: str
    kind: str
    subject_key_id: str
    holder: str
    der: bytes
    not_after: int
    issued_at: int
    revoked_at: int | None
    revocation_reason: str | None


class CertificateStore(Protocol):
    """Durable records of one CA: issued certificates, revocations, the root and the CRL."""

    async def authority(self) -> tuple[str, bytes] | None:
        """(CA key id, root certificate DER), once the root exists."""

    async def set_authority(self, ca_key_id: str, root_der: bytes) -> None:
        """Record the root certificate (once)."""

    async def add(self, record: CertificateRecord) -> None:
        """Record an issued certificate; :class:`SerialInUse` when the serial exists."""

    async def get(self, serial: str) -> CertificateRecord | None:
        """The certificate with this serial, or None."""

    async def latest_for_key(self, subject_key_id: str) -> CertificateRecord | None:
        """The most recently issued certificate for a key, or None."""

    async def any_revoked_for_key(self, subject_key_id: str) -> bool:
        """True when some certificate of this key was revoked."""

    async def revoke(self, serial: str, revoked_at: int, reason: str) -> bool:
        """Mark a certificate revoked; False when it was already revoked."""

    async def revoked(self) -> list[CertificateRecord]:
        """Every revoked certificate, by revocation time."""

    async def next_crl_number(self) -> int:
        """Allocate the next CRL number (monotonic, durable)."""

    async def crl(self) -> tuple[bytes, int] | None:
        """(current CRL DER, issued at), once one was issued."""

    async def set_crl(self, der: bytes, issued_at: int) -> None:
        """Replace the current CRL."""
