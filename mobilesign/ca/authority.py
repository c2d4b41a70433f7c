"""Issuing certificates and CRLs with a key that stays in the HSM."""

from __future__ import annotations

import asyncio
import datetime
import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from mobilesign import pkix
from mobilesign.ca.repository import CertificateRecord, CertificateStore, SerialInUse
from mobilesign.errors import Error, Kind

_log = logging.getLogger("mobilesign.ca")

#: Where the CA reads the time: a callable returning an aware UTC datetime, passed in.
Clock = Callable[[], datetime.datetime]


class CaError(Error):
    """A refusal by the certification authority."""


#: Policy OID of mobilesign personal certificates: 2.25 (UUID-based, ITU-T X.667) with the
#: project's UUID 0db749f0-dff6-4be9-b76b-eb9f4f13a0a2.
PERSONAL_POLICY_OID = "2.25.18231653970288761229732193313012031650"
#: Policy OID of organisation certificates: the personal OID's arc .2.
ORGANISATION_POLICY_OID = PERSONAL_POLICY_OID + ".2"
#: RFC 5280 reason names the CA accepts (asn1crypto's spelling).
REASONS = frozenset(
    {
        "key_compromise",
        "ca_compromise",
        "affiliation_changed",
        "superseded",
        "cessation_of_operation",
        "privilege_withdrawn",
    }
)


@dataclass(frozen=True)
class CaSettings:
    """Names, lifetimes and the published CRL location."""

    organisation: str = "mobilesign"
    root_common_name: str = "mobilesign Root CA"
    root_validity_days: int = 3650
    certificate_validity_days: int = 365
    crl_validity_days: int = 7
    crl_url: str = "http://pki.mobilesign.invalid/crl/root.crl"


class Status(enum.Enum):
    """What the CA says of a serial number."""

    GOOD = "good"
    REVOKED = "revoked"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Issued:
    """An issued certificate."""

    serial: str
    der: bytes


def key_identifier(spki: bytes) -> bytes:
    """RFC 5280 method 1: SHA-1 of the subjectPublicKey bit string."""
    public_key = serialization.load_der_public_key(spki)
    return x509.SubjectKeyIdentifier.from_public_key(public_key).digest  # type: ignore[arg-type]


def serial_hex(serial: int) -> str:
    """How serials are written in the API: lowercase hex, no leading zeros."""
    return format(serial, "x")


class CertificateAuthority:
    """A single-level CA (self-signed root issuing end-entity certificates)."""

    def __init__(
        self,
        signer: pkix.Signer,
        store: CertificateStore,
        settings: CaSettings,
        root_der: bytes,
        clock: Clock,
    ) -> None:
        self._signer = signer
        self._clock = clock
        self._store = store
        self._settings = settings
        self._root = x509.load_der_x509_certificate(root_der)
        self._root_der = root_der
        self._issuer = self._root.subject.public_bytes()
        self._aki = key_identifier(
            self._root.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        # One issuance, revocation or CRL at a time: CRL numbers and contents stay in order.
        self._lock = asyncio.Lock()

    @classmethod
    async def start(
        cls,
        signer: pkix.Signer,
        ca_key_id: str,
        ca_spki: bytes,
        store: CertificateStore,
        settings: CaSettings,
        clock: Clock,
    ) -> CertificateAuthority:
        """Load the root certificate, creating it (and the first CRL) on first start."""
        existing = await store.authority()
        if existing is not None:
            if existing[0] != ca_key_id:
                raise RuntimeError("the CA database belongs to another CA key")
            root_der = existing[1]
        else:
            root_der = await cls._self_sign(signer, ca_spki, settings, clock())
            await store.set_authority(ca_key_id, root_der)
            _log.info("root certificate created", extra={"fields": {"ca_key_id": ca_key_id}})
        authority = cls(signer, store, settings, root_der, clock)
        if await store.crl() is None:
            async with authority._lock:
                await authority._issue_crl()
        return authority

    @staticmethod
    async def _self_sign(
        signer: pkix.Signer, spki: bytes, settings: CaSettings, now: datetime.datetime
    ) -> bytes:
        subject = pkix.name(
            {"common_name": settings.root_common_name, "organization_name": settings.organisation}
        )
        return await pkix.build_certificate(
            signer=signer,
            serial=pkix.random_serial(),
            issuer=subject,
            subject=subject,
            subject_public_key_info=spki,
            not_before=now - datetime.timedelta(minutes=5),
            not_after=now + datetime.timedelta(days=settings.root_validity_days),
            extensions=[
                pkix.basic_constraints(ca=True),
                pkix.key_usage("key_cert_sign", "crl_sign"),
                pkix.subject_key_identifier(key_identifier(spki)),
            ],
        )

    @property
    def root_der(self) -> bytes:
        """The CA certificate (DER)."""
        return self._root_der

    async def _issue(
        self,
        *,
        kind: str,
        holder: str,
        subject_key_id: str,
        subject: bytes,
        spki: bytes,
        extensions: list[pkix.Extension],
    ) -> Issued:
        now = self._clock()
        # Never beyond the root: a certificate cannot outlive its issuer.
        not_after = min(
            now + datetime.timedelta(days=self._settings.certificate_validity_days),
            self._root.not_valid_after_utc,
        )
        async with self._lock:
            while True:
                serial = pkix.random_serial()
                if await self._store.get(serial_hex(serial)) is None:
                    break
            der = await pkix.build_certificate(
                signer=self._signer,
                serial=serial,
                issuer=self._issuer,
                subject=subject,
                subject_public_key_info=spki,
                not_before=now - datetime.timedelta(minutes=5),
                not_after=not_after,
                extensions=[
                    pkix.basic_constraints(ca=False),
                    *extensions,
                    pkix.subject_key_identifier(key_identifier(spki)),
                    pkix.authority_key_identifier(self._aki),
                    pkix.crl_distribution_point(self._settings.crl_url),
                ],
            )
            record = CertificateRecord(
                serial=serial_hex(serial),
                kind=kind,
                subject_key_id=subject_key_id,
                holder=holder,
                der=der,
                not_after=int(not_after.timestamp()),
                issued_at=int(now.timestamp()),
                revoked_at=None,
                revocation_reason=None,
            )
            try:
                await self._store.add(record)
            except SerialInUse:
                raise CaError(Kind.INTERNAL, "SERIAL_COLLISION", "serial number reused") from None
        _log.info(
            "certificate issued",
            extra={"fields": {"serial": record.serial, "kind": kind, "holder": holder}},
        )
        return Issued(record.serial, der)

    async def issue_organisation(
        self, *, organisation: str, label: str, key_id: str, spki: bytes, encipherment: bool
    ) -> Issued:
        """An organisation certificate: O=<organisation>, CN=<key label>; signing usages and,
        for RSA keys, key encipherment."""
        usages = ["digital_signature", "non_repudiation"]
        if encipherment:
            usages.append("key_encipherment")
        return await self._issue(
            kind="organisation",
            holder=organisation,
            subject_key_id=key_id,
            subject=pkix.name({"common_name": label, "organization_name": organisation}),
            spki=spki,
            extensions=[
                pkix.key_usage(*usages),
                pkix.certificate_policies(ORGANISATION_POLICY_OID),
            ],
        )

    async def issue_personal(self, *, user_id: str, key_id: str, spki: bytes) -> Issued:
        """A personal certificate for a joint Ed25519 key: CN=<user id>, digitalSignature and
        nonRepudiation, the project's certificate policy."""
        return await self._issue(
            kind="personal",
            holder=user_id,
            subject_key_id=key_id,
            subject=pkix.name({"common_name": user_id}),
            spki=spki,
            extensions=[
                pkix.key_usage("digital_signature", "non_repudiation"),
                pkix.certificate_policies(PERSONAL_POLICY_OID),
            ],
        )

    async def revoke(self, serial: str, reason: str) -> None:
        """Revoke a certificate and reissue the CRL before returning."""
        if reason not in REASONS:
            raise CaError(
                Kind.INVALID,
                "REASON_REQUIRED",
                "a revocation reason is required",
            )
        async with self._lock:
            record = await self._store.get(serial)
            if record is None:
                raise CaError(
                    Kind.NOT_FOUND,
                    "CERTIFICATE_NOT_FOUND",
                    "no certificate has this serial",
                )
            if not await self._store.revoke(serial, int(self._clock().timestamp()), reason):
                current = await self._store.crl()
                if current is not None and await self._publishes_all(current[0]):
                    raise CaError(
                        Kind.PRECONDITION,
                        "ALREADY_REVOKED",
                        "the certificate is already revoked",
                    )
                # Revoked earlier, but the CRL that should list it was never issued (the
                # signer failed): publishing it now is what the caller asked for.
            await self._issue_crl()
        _log.info("certificate revoked", extra={"fields": {"serial": serial, "reason": reason}})

    async def _publishes_all(self, crl_der: bytes) -> bool:
        """True when the CRL lists every certificate the store says is revoked."""
        listed = {entry.serial_number for entry in x509.load_der_x509_crl(crl_der)}
        return all(int(r.serial, 16) in listed for r in await self._store.revoked())

    async def _issue_crl(self) -> bytes:
        now = self._clock()
        revoked = [
            pkix.RevokedEntry(
                serial=int(r.serial, 16),
                revoked_at=datetime.datetime.fromtimestamp(r.revoked_at or 0, datetime.UTC),
                reason=r.revocation_reason or "unspecified",
            )
            for r in await self._store.revoked()
        ]
        der = await pkix.build_crl(
            signer=self._signer,
            issuer=self._issuer,
            number=await self._store.next_crl_number(),
            this_update=now,
            next_update=now + datetime.timedelta(days=self._settings.crl_validity_days),
            revoked=revoked,
            authority_key_identifier=self._aki,
        )
        await self._store.set_crl(der, int(now.timestamp()))
        return der

    async def crl(self) -> bytes:
        """The current CRL, reissued once half its validity has passed, or when it misses a
        revocation (a reissue that failed after the revocation was stored)."""
        current = await self._store.crl()
        half = self._settings.crl_validity_days * 86_400 // 2
        fresh = current is not None and self._clock().timestamp() - current[1] < half
        if current is not None and fresh and await self._publishes_all(current[0]):
            return current[0]
        async with self._lock:
            return await self._issue_crl()

    async def status(self, serial: str) -> tuple[Status, CertificateRecord | None]:
        """GOOD, REVOKED (with the record) or UNKNOWN for a serial number."""
        record = await self._store.get(serial)
        if record is None:
            return Status.UNKNOWN, None
        return (Status.REVOKED if record.revoked_at is not None else Status.GOOD), record

    async def current_for_key(self, key_id: str) -> CertificateRecord | None:
        """The latest certificate issued for a key (the HSM key id or the joint key's hex)."""
        return await self._store.latest_for_key(key_id)

    async def key_revoked(self, key_id: str) -> bool:
        """True when any certificate of this key was revoked (a revoked key stays revoked)."""
        return await self._store.any_revoked_for_key(key_id)
