"""What the tests expect of the project's certificates, and a signer for building them in-process.

Shared by the PKIX and CA unit tests and the certificate integration tests, so that the profile
of an issued certificate is stated once.
"""

from __future__ import annotations

from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import ExtensionOID

from mobilesign import pkix

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

#: The extensions every end-entity certificate carries, and no others.
END_ENTITY_EXTENSIONS = {
    ExtensionOID.BASIC_CONSTRAINTS,
    ExtensionOID.KEY_USAGE,
    ExtensionOID.CERTIFICATE_POLICIES,
    ExtensionOID.SUBJECT_KEY_IDENTIFIER,
    ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
    ExtensionOID.CRL_DISTRIBUTION_POINTS,
}


class SoftwareSigner:
    """A :class:`mobilesign.pkix.Signer` with the key in this process; ``fail_next`` makes the
    next signature fail as an unreachable HSM would."""

    def __init__(self, key: PrivateKey) -> None:
        self.key = key
        self.calls = 0
        self.fail_next = False

    @property
    def algorithm(self) -> pkix.SignatureAlgorithm:
        if isinstance(self.key, ed25519.Ed25519PrivateKey):
            return pkix.SignatureAlgorithm.ED25519
        if isinstance(self.key, rsa.RSAPrivateKey):
            return pkix.SignatureAlgorithm.RSA_PKCS1_SHA256
        return pkix.SignatureAlgorithm.ECDSA_SHA256

    async def sign(self, data: bytes) -> bytes:
        self.calls += 1
        if self.fail_next:
            self.fail_next = False
            raise ConnectionError("the HSM is unavailable")
        if isinstance(self.key, ed25519.Ed25519PrivateKey):
            return self.key.sign(data)
        if isinstance(self.key, rsa.RSAPrivateKey):
            return self.key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        return self.key.sign(data, ec.ECDSA(hashes.SHA256()))

    @property
    def public_key(self) -> Any:
        return self.key.public_key()

    @property
    def spki(self) -> bytes:
        return spki_of(self.key.public_key())


def spki_of(public_key: Any) -> bytes:
    """The DER SubjectPublicKeyInfo of a ``cryptography`` public key."""
    return bytes(
        public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def key_usage(**allowed: bool) -> x509.KeyUsage:
    """A KeyUsage value with exactly the named usages set."""
    flags = dict.fromkeys(
        (
            "digital_signature",
            "content_commitment",
            "key_encipherment",
            "data_encipherment",
            "key_agreement",
            "key_cert_sign",
            "crl_sign",
            "encipher_only",
            "decipher_only",
        ),
        False,
    )
    flags.update(allowed)
    return x509.KeyUsage(**flags)


def extension_of(certificate: x509.Certificate, kind: type[Any]) -> x509.Extension[Any]:
    """The certificate's extension of this type (KeyError-like failure when absent)."""
    return certificate.extensions.get_extension_for_class(kind)


def check_end_entity_extensions(
    certificate: x509.Certificate,
    root: x509.Certificate,
    *,
    usage: x509.KeyUsage,
    policy: str,
    crl_url: str,
) -> None:
    """The extensions of an end-entity certificate issued by ``root``, one by one."""
    assert {e.oid for e in certificate.extensions} == END_ENTITY_EXTENSIONS
    constraints = extension_of(certificate, x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value == x509.BasicConstraints(ca=False, path_length=None)
    usage_extension = extension_of(certificate, x509.KeyUsage)
    assert usage_extension.critical
    assert usage_extension.value == usage
    policies = extension_of(certificate, x509.CertificatePolicies)
    assert not policies.critical
    assert [(p.policy_identifier.dotted_string, p.policy_qualifiers) for p in policies.value] == [
        (policy, None)
    ]
    ski = extension_of(certificate, x509.SubjectKeyIdentifier)
    assert not ski.critical
    assert ski.value == x509.SubjectKeyIdentifier.from_public_key(certificate.public_key())
    aki = extension_of(certificate, x509.AuthorityKeyIdentifier)
    assert not aki.critical
    root_ski = extension_of(root, x509.SubjectKeyIdentifier).value
    assert aki.value == x509.AuthorityKeyIdentifier(root_ski.digest, None, None)
    distribution = extension_of(certificate, x509.CRLDistributionPoints)
    assert not distribution.critical
    assert list(distribution.value) == [
        x509.DistributionPoint([x509.UniformResourceIdentifier(crl_url)], None, None, None)
    ]
