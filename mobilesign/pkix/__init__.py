"""PKIX structures (certificates, CRLs, PKCS#10 requests) signed by a key that is not in this
process: the CA and organisation keys in the HSM, and the user's two-party key.

Builders use asn1crypto to lay out the to-be-signed DER; the signature comes from an async
:class:`Signer`. Everything built here is parsed and verified independently (``cryptography``,
``openssl``) by the tests.
"""

from mobilesign.pkix.build import (
    Extension,
    RevokedEntry,
    authority_key_identifier,
    basic_constraints,
    build_certificate,
    build_crl,
    build_csr,
    certificate_policies,
    crl_distribution_point,
    key_usage,
    name,
    random_serial,
    subject_key_identifier,
)
from mobilesign.pkix.signing import SignatureAlgorithm, Signer
from mobilesign.pkix.verify import ChainError, verify_issued_by

__all__ = [
    "ChainError",
    "Extension",
    "RevokedEntry",
    "SignatureAlgorithm",
    "Signer",
    "authority_key_identifier",
    "basic_constraints",
    "build_certificate",
    "build_crl",
    "build_csr",
    "certificate_policies",
    "crl_distribution_point",
    "key_usage",
    "name",
    "random_serial",
    "subject_key_identifier",
    "verify_issued_by",
]
