"""The development PKI: an internal CA and one certificate per service and operator.

Created on first use under ``<state_dir>/pki``; several services starting at once take a file
lock so exactly one of them creates it. Production deployments replace these files with
certificates from their own internal CA: the services only read the paths.

The identity of a caller is the Common Name of its certificate (``gateway``, ``cosigner``,
``hsm-proxy``, ``admin``); services authorise by that name, never by network address.
"""

from __future__ import annotations

import datetime
import fcntl
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mobilesign.rpc.channels import Credential

#: Every identity the development PKI issues a certificate for.
IDENTITIES = ("hsm-proxy", "ra", "cosigner", "gateway", "admin")
#: Server-only certificates for the phone-facing listeners: their keys are not the services'
#: internal identities, and they cannot act as client certificates.
PUBLIC_EDGES = ("cosigner-public", "gateway-public")

_VALIDITY = datetime.timedelta(days=825)


def _write_private(path: Path, data: bytes) -> None:
    """Write a file readable by its owner only, atomically."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _create_ca(pki: Path) -> None:
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mobilesign development CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    _write_private(pki / "ca.key", _key_pem(ca_key))
    # ca.pem last: its presence marks a usable CA.
    (pki / "ca.pem").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))


def _issue(pki: Path, name: str) -> None:
    ca_key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca_name = x509.load_pem_x509_certificate((pki / "ca.pem").read_bytes()).subject
    now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH]
                if name in PUBLIC_EDGES
                else [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.DNSName(name),
                    x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
                    x509.IPAddress(ipaddress.IPv6Address("::1")),
                ]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_private(pki / f"{name}.key", _key_pem(key))
    # The certificate last: its presence marks a complete credential.
    (pki / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def ensure(state_dir: Path) -> Path:
    """Create the development PKI under ``state_dir/pki``, or what it lacks; return its path."""
    pki = state_dir / "pki"
    pki.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(pki / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (pki / "ca.pem").exists():
            _create_ca(pki)
        for name in (*IDENTITIES, *PUBLIC_EDGES):
            if not (pki / f"{name}.pem").exists():
                _issue(pki, name)
    return pki


def credential(state_dir: Path, name: str) -> Credential:
    """The credential of ``name`` from the development PKI, creating the PKI when missing."""
    if name not in IDENTITIES and name not in PUBLIC_EDGES:
        raise ValueError(f"no development certificate for {name!r}")
    pki = ensure(state_dir)
    return Credential(name, pki / f"{name}.pem", pki / f"{name}.key", pki / "ca.pem")
