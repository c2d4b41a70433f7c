"""The activation-code proofs against an independent HMAC (``cryptography``'s), and each input
changing the result."""

from __future__ import annotations

import os
import struct

import pytest
from cryptography.hazmat.primitives import hashes, hmac

from mobilesign import activation, domains

CODE = bytes(range(16))
CSR = b"0\x82\x01\x00 a DER CSR"


def _hmac(key: bytes, data: bytes) -> bytes:
    mac = hmac.HMAC(key, hashes.SHA256())
    mac.update(data)
    return mac.finalize()


def test_the_application_proof_is_hmac_sha256_over_the_tagged_csr() -> None:
    expected = _hmac(CODE, b"mobilesign/v1 certificate-application\x00" + CSR)
    assert activation.application_proof(CODE, CSR) == expected
    assert domains.CERTIFICATE_APPLICATION == b"mobilesign/v1 certificate-application\x00"


def test_the_answer_proof_frames_each_field_with_its_length() -> None:
    fields = (b"certificate", b"ca", b"grant key")
    framed = b"".join(struct.pack(">I", len(f)) + f for f in fields)
    expected = _hmac(CODE, b"mobilesign/v1 certificate-answer\x00" + framed)
    assert activation.answer_proof(CODE, *fields) == expected
    # Moving a byte from one field to the next changes the proof (the lengths are covered).
    assert activation.answer_proof(CODE, b"certificat", b"eca", b"grant key") != expected


@pytest.mark.parametrize("which", range(3))
def test_every_answer_field_is_covered(which: int) -> None:
    fields = [b"certificate", b"ca", b"grant key"]
    before = activation.answer_proof(CODE, *fields)
    fields[which] += b"!"
    assert activation.answer_proof(CODE, *fields) != before


def test_the_code_and_the_purpose_matter() -> None:
    proof = activation.application_proof(CODE, CSR)
    assert activation.application_proof(os.urandom(activation.CODE_BYTES), CSR) != proof
    assert activation.application_proof(CODE, CSR + b"\x00") != proof
    # An application proof never passes as an answer proof for the same bytes.
    assert activation.answer_proof(CODE, CSR, b"", b"") != proof
    assert activation.matches(proof, proof)
    assert not activation.matches(proof, proof[:-1] + bytes([proof[-1] ^ 1]))
    assert not activation.matches(proof, b"")
