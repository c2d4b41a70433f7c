"""The activation code: a secret the administrator hands the user beside the enrolment ticket,
which never passes through the cosigner.

Every ticket passes through the cosigner at enrolment, so a ticket alone cannot tell the RA
that a certificate application comes from the user's phone rather than from a compromised
cosigner applying for a key of its own. The phone therefore proves that it knows the code,
over the exact CSR it applies with, and the RA proves the same over its answer, so that no one
between them can change the certificate, the CA certificate or the grant key in it:

- application proof: HMAC-SHA256(code, ``"mobilesign/v1 certificate-application" || 0x00 ||
  csr``);
- answer proof: HMAC-SHA256(code, ``"mobilesign/v1 certificate-answer" || 0x00 ||`` each of
  certificate, CA certificate and grant key as a 4-byte big-endian length and its bytes).
"""

from __future__ import annotations

import hashlib
import hmac
import struct

from mobilesign import domains

CODE_BYTES = 16


def application_proof(code: bytes, csr: bytes) -> bytes:
    """The phone's proof, over its CSR, that it holds the ticket's activation code."""
    return hmac.new(code, domains.CERTIFICATE_APPLICATION + csr, hashlib.sha256).digest()


def answer_proof(code: bytes, certificate: bytes, ca_certificate: bytes, grant_key: bytes) -> bytes:
    """The RA's proof, over its answer, that it holds the same code."""
    fields = b"".join(
        struct.pack(">I", len(f)) + f for f in (certificate, ca_certificate, grant_key)
    )
    return hmac.new(code, domains.CERTIFICATE_ANSWER + fields, hashlib.sha256).digest()


def matches(expected: bytes, given: bytes) -> bool:
    """Constant-time comparison of two proofs."""
    return hmac.compare_digest(expected, given)
