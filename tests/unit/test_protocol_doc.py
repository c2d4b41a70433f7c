"""Every worked example of docs/protocol.md, recomputed from the inputs it states.

Each fenced block ```` ```text id=NAME ```` is a worked example. Its values are recomputed twice
where that is reasonable: with the project's own code (what runs) and independently, with
hashlib, ``cryptography`` and a few lines of RFC 8032 / RFC 9591 arithmetic (what a Kotlin or
Swift team would write). ECDSA signatures in the examples are RFC 6979 deterministic, so they are
recomputed too, not only verified. Changing any value in the document fails a test here.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import hmac
import re
import struct
from collections.abc import Callable
from functools import cache
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from mobilesign import activation, deviceauth, domains, pkix, records, tickets, twoparty
from mobilesign.auditlog import (
    Checkpoint,
    MerkleTree,
    NoteSigner,
    NoteVerifier,
    leaf_hash,
    merkle_tree_hash,
    sign_checkpoint,
    verify_checkpoint,
    verify_inclusion,
)
from mobilesign.v1 import ra_pb2

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "protocol.md"

#: RFC 6979 deterministic ECDSA P-256 / SHA-256, as the examples' signatures were made.
DETERMINISTIC = ec.ECDSA(hashes.SHA256(), deterministic_signing=True)
PIN = "123456"
OTHER_PIN = "654321"
ORIGIN = "mobilesign.invalid/audit-log"
CHECKED = {
    "device-key",
    "ticket",
    "dkg",
    "enrolment",
    "session",
    "signature",
    "personal-csr",
    "gateway-login",
    "service-record",
    "log-entries",
    "checkpoint",
    "checkpoint-note",
}

_FENCE = re.compile(r"^```(?P<info>[^\n]*)\n(?P<body>.*?)^```$", re.MULTILINE | re.DOTALL)
_HEX = re.compile(r"(?:[0-9a-f]{2})+")


# The document --------------------------------------------------------------------------------


@cache
def _text() -> str:
    return DOC.read_text(encoding="utf-8")


@cache
def _blocks() -> dict[str, str]:
    """Body of each ```` ```text id=NAME ```` block, by NAME."""
    found: dict[str, str] = {}
    for match in _FENCE.finditer(_text()):
        info = re.fullmatch(r"text id=([a-z0-9-]+)", match["info"])
        if info:
            assert info[1] not in found, f"two examples named {info[1]}"
            found[info[1]] = match["body"]
    return found


@cache
def fields(name: str) -> dict[str, bytes]:
    """The labelled hex values of example ``name``.

    A line is ``label  hex``; a line holding only hex continues the previous value; an
    indented ``label  hex`` line belongs to the group named by the first word of the last
    unindented label (``phone    a0 …`` then ``         a1 …`` is ``phone a0``, ``phone a1``).
    Anything else is an error, so no value in an example goes unread.
    """
    values: dict[str, str] = {}
    label = group = ""
    for line in _blocks()[name].splitlines():
        words = line.split()
        if not words:
            continue
        indented = line[0].isspace()
        assert _HEX.fullmatch(words[-1]), f"{name}: not a hex value: {line!r}"
        if indented and len(words) == 1:
            assert label, f"{name}: continuation without a label: {line!r}"
            values[label] += words[0]
            continue
        label = " ".join(words[:-1])
        if indented:
            label = f"{group} {label}"
        else:
            group = words[0]
        assert label not in values, f"{name}: {label} given twice"
        values[label] = words[-1]
    return {key: bytes.fromhex(value) for key, value in values.items()}


def _prose() -> str:
    """The document outside fenced blocks, with runs of white space made single spaces."""
    return " ".join(_FENCE.sub("", _text()).split())


def _flat() -> str:
    """The whole document, with runs of white space made single spaces."""
    return " ".join(_text().split())


def _abbreviation(what: str) -> tuple[str, str]:
    """The two ends of an abbreviated value written ``what = 0123abcd…89ef`` in the prose."""
    match = re.search(re.escape(what) + r" = ([0-9a-f]+)…([0-9a-f]+)`", _prose())
    assert match, f"no abbreviated {what} in the document"
    return match[1], match[2]


# Independent arithmetic: Ed25519 (RFC 8032 section 5.1) and FROST (RFC 9591) -------------------

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
_D = -121665 * pow(121666, -1, P) % P
_SQRT_M1 = pow(2, (P - 1) // 4, P)
_Point = tuple[int, int, int, int]  # extended coordinates (X, Y, Z, T)


def _recover_x(y: int, sign: int) -> int:
    x2 = (y * y - 1) * pow(_D * y * y + 1, -1, P) % P
    x = pow(x2, (P + 3) // 8, P)
    if (x * x - x2) % P:
        x = x * _SQRT_M1 % P
    return P - x if x & 1 != sign else x


_GY = 4 * pow(5, -1, P) % P
_GX = _recover_x(_GY, 0)
_G: _Point = (_GX, _GY, 1, _GX * _GY % P)


def _add(p: _Point, q: _Point) -> _Point:
    a = (p[1] - p[0]) * (q[1] - q[0]) % P
    b = (p[1] + p[0]) * (q[1] + q[0]) % P
    c = 2 * p[3] * q[3] * _D % P
    d = 2 * p[2] * q[2] % P
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def base_mult(k: int) -> bytes:
    """``k·G``, compressed (RFC 8032 5.1.2)."""
    acc: _Point = (0, 1, 1, 0)
    point = _G
    k %= L
    while k:
        if k & 1:
            acc = _add(acc, point)
        point = _add(point, point)
        k >>= 1
    z = pow(acc[2], -1, P)
    x, y = acc[0] * z % P, acc[1] * z % P
    return (y | (x & 1) << 255).to_bytes(32, "little")


def scalar(data: bytes) -> int:
    """A little-endian scalar (or a SHA-512 digest reduced mod L)."""
    return int.from_bytes(data, "little") % L


def encode_scalar(value: int) -> bytes:
    """SerializeScalar."""
    return (value % L).to_bytes(32, "little")


def frost_hash(tag: bytes, message: bytes) -> int:
    """RFC 9591 H1, H3 and the DKG challenge: SHA-512(contextString || tag || m) mod L."""
    return scalar(hashlib.sha512(b"FROST-ED25519-SHA512-v1" + tag + message).digest())


def ed25519_sign(secret: int, message: bytes) -> bytes:
    """RFC 8032 signing with a bare secret scalar, nonce ``SHA-512(secret || message) mod L``:
    how the examples' user signatures were made from the joint secret ``2·s1 - s2``."""
    r = scalar(hashlib.sha512(encode_scalar(secret) + message).digest())
    big_r = base_mult(r)
    k = scalar(hashlib.sha512(big_r + base_mult(secret) + message).digest())
    return big_r + encode_scalar(r + k * secret)


def ed25519_verify(public_key: bytes, signature: bytes, message: bytes) -> None:
    """RFC 8032 verification by ``cryptography`` (OpenSSL); raises when it fails."""
    ed25519.Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)


def der(tag: int, body: bytes) -> bytes:
    """One DER TLV."""
    if len(body) < 0x80:
        return bytes([tag, len(body)]) + body
    size = len(body).to_bytes((len(body).bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + body


def length_prefixed(*values: bytes) -> bytes:
    """Each value as a 2-byte big-endian length and its bytes (records and log entries)."""
    return b"".join(struct.pack(">H", len(v)) + v for v in values)


# Shared inputs ---------------------------------------------------------------------------------


def _p256(scalar_bytes: bytes) -> ec.EllipticCurvePrivateKey:
    return ec.derive_private_key(int.from_bytes(scalar_bytes, "big"), ec.SECP256R1())


def _spki(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def device_key() -> ec.EllipticCurvePrivateKey:
    """The example device key (section 7)."""
    return _p256(fields("device-key")["device private scalar"])


def joint_secret() -> int:
    """``x = λ1·s1 + λ2·s2 = 2·s1 - s2 mod L``, the secret of the joint key (section 7 shares)."""
    dkg = fields("dkg")
    return (2 * scalar(dkg["s1"]) - scalar(dkg["s2"])) % L


def group_public_key() -> bytes:
    """The example joint key ``PK`` (section 7)."""
    return fields("dkg")["group_public_key = key id"]


def _source(*chunks: bytes, size: int) -> Callable[[int], bytes]:
    """A random source returning ``chunks`` in order, each asked for as ``size`` bytes."""
    pending = iter(chunks)

    def random(n: int) -> bytes:
        assert n == size
        return next(pending)

    return random


def _scalar_source(*scalars: bytes) -> Callable[[int], bytes]:
    # random_scalar reduces 64 bytes mod L: a scalar followed by 32 zero bytes gives that scalar.
    return _source(*(s + bytes(32) for s in scalars), size=64)


# The document as a whole -----------------------------------------------------------------------


def test_every_worked_example_is_checked_here() -> None:
    assert set(_blocks()) == CHECKED


def test_every_fenced_block_with_values_is_a_named_example() -> None:
    for match in _FENCE.finditer(_text()):
        if re.search(r"[0-9a-f]{16}|[A-Za-z0-9+/]{40}={0,2}", match["body"]):
            assert match["info"].startswith("text id="), match["body"][:80]


def test_every_value_in_the_prose_is_accounted_for() -> None:
    device_spki = deviceauth.device_key_spki(device_key())
    ed25519_spki = ed25519.Ed25519PublicKey.from_public_bytes(group_public_key()).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    claims = ra_pb2.EnrolmentTicketClaims.FromString(fields("ticket")["claims"])
    expected = {
        device_spki[:-65].hex(),  # the P-256 SPKI prefix, before 04 || X || Y
        ed25519_spki[:-32].hex(),  # the RFC 8410 SPKI prefix, before PK
        ed25519_spki[2:9].hex(),  # its AlgorithmIdentifier, also the CSR's
        records.RECORD_MAGIC.hex(),
        records.ENTRY_MAGIC.hex(),
        fields("signature")["message"].hex(),
        claims.ticket_id,
        str(claims.issued_at_unix),
        str(claims.expires_at_unix),
        str(L - 2**252),
    }
    # The table of domain-separation tags is checked by tests/unit/test_domains.py; abbreviated
    # values (``head…tail``) with the example they abbreviate.
    tags = {tag.hex() for tag in domains.ALL.values()}
    prose = re.sub(r"[0-9a-f]+…[0-9a-f]+", "", _prose())
    found = set(re.findall(r"[0-9a-f]{8,}", prose))
    assert found - tags == expected
    assert f"L = 2^252 + {L - 2**252}" in prose


# Section 7 -------------------------------------------------------------------------------------


def test_device_key_and_pin() -> None:
    values = fields("device-key")
    key = device_key()
    spki = deviceauth.device_key_spki(key)
    numbers = key.public_key().public_numbers()
    point = b"\x04" + numbers.x.to_bytes(32, "big") + numbers.y.to_bytes(32, "big")
    assert spki == bytes.fromhex("3059301306072a8648ce3d020106082a8648ce3d030107034200") + point
    assert values["device_spki (91 bytes)"] == spki
    assert len(spki) == 91
    salt = hashlib.sha256(b"mobilesign/v1 pin-verifier\0" + spki).digest()
    assert values["pin_salt"] == salt
    verifier = hashlib.pbkdf2_hmac("sha256", PIN.encode(), salt, 200_000, dklen=32)
    assert values["pin_verifier"] == verifier == deviceauth.pin_verifier(PIN, spki)
    assert "**Device key and PIN** (PIN `123456`)" in _prose()
    assert "iterations = 200000, dkLen = 32)" in _flat()


def test_ticket() -> None:
    values = fields("ticket")
    match = re.search(
        r"claims: `ticket_id ([0-9a-f]{32})`, user `([^`]+)`, issued (\d+), expires (\d+), "
        r"audience `([^`]+)`; (\d+) bytes\)",
        _prose(),
    )
    assert match
    ticket_id, user_id, issued, expires, audience, size = match.groups()
    assert audience == tickets.AUDIENCE
    claims = tickets.Claims(ticket_id, user_id, int(issued), int(expires), additional_key=False)
    assert values["claims"] == tickets.encode(claims)
    stated = ra_pb2.EnrolmentTicketClaims(
        ticket_id=ticket_id,
        user_id=user_id,
        issued_at_unix=int(issued),
        expires_at_unix=int(expires),
        audience=audience,
    )
    assert ra_pb2.EnrolmentTicketClaims.FromString(values["claims"]) == stated
    key = _p256(values["ticket key private scalar"])
    signature = key.sign(b"mobilesign/v1 enrolment-ticket\0" + values["claims"], DETERMINISTIC)
    assert values["signature"] == signature
    assert values["ticket"] == tickets.assemble(values["claims"], signature)
    # SignedEnrolmentTicket{1: claims, 2: signature}, each length below 128: a one-byte varint.
    claims_field = bytes([0x0A, len(values["claims"])]) + values["claims"]
    assert values["ticket"] == claims_field + bytes([0x12, len(signature)]) + signature
    assert len(values["ticket"]) == int(size)
    assert tickets.verify(values["ticket"], key.public_key(), now=int(issued)) == claims


def test_dkg_with_the_project_state_machines() -> None:
    values = fields("dkg")
    phone = twoparty.PhoneKeyGen(
        random=_scalar_source(values["phone a0"], values["phone a1"], values["phone k"])
    )
    cosigner = twoparty.CosignerKeyGen(
        random=_scalar_source(values["cosigner a0"], values["cosigner a1"], values["cosigner k"])
    )
    phone_round1 = phone.start()
    cosigner_round1 = cosigner.receive_round1(phone_round1)
    for party, message in (("phone", phone_round1), ("cosigner", cosigner_round1)):
        assert message.commitment == (values[f"{party} C0"], values[f"{party} C1"])
        assert message.proof_r == values[f"{party} R"]
        assert message.proof_mu == values[f"{party} mu"]
    phone_share = phone.receive_round1(cosigner_round1)
    assert phone_share.secret_share == values["f1(2) (phone -> cosigner)"]
    cosigner_share = cosigner.receive_round2(phone_share)
    assert cosigner_share.secret_share == values["f2(1) (cosigner -> phone)"]
    assert cosigner_share.group_public_key == group_public_key()
    confirm, phone_package = phone.receive_round2(cosigner_share)
    cosigner_package = cosigner.receive_confirm(confirm)
    assert phone_package.group_public_key == cosigner_package.group_public_key == group_public_key()
    assert phone_package.signing_share == values["s1"]
    assert cosigner_package.signing_share == values["s2"]
    assert phone_package.verifying_share == values["V1 = s1·G"]
    assert cosigner_package.peer_verifying_share == values["V1 = s1·G"]
    assert cosigner_package.verifying_share == values["V2 = s2·G"]
    assert phone_package.peer_verifying_share == values["V2 = s2·G"]


def test_dkg_independently() -> None:
    values = fields("dkg")
    coefficients = {}
    for identifier, party in ((1, "phone"), (2, "cosigner")):
        a0, a1, k = (scalar(values[f"{party} {name}"]) for name in ("a0", "a1", "k"))
        coefficients[party] = (a0, a1)
        assert values[f"{party} C0"] == base_mult(a0)
        assert values[f"{party} C1"] == base_mult(a1)
        assert values[f"{party} R"] == base_mult(k)
        c = frost_hash(b"dkg", encode_scalar(identifier) + base_mult(a0) + base_mult(k))
        assert values[f"{party} c"] == encode_scalar(c)
        assert values[f"{party} mu"] == encode_scalar(k + a0 * c)
    (a10, a11), (a20, a21) = coefficients["phone"], coefficients["cosigner"]
    assert values["f1(2) (phone -> cosigner)"] == encode_scalar(a10 + 2 * a11)
    assert values["f2(1) (cosigner -> phone)"] == encode_scalar(a20 + a21)
    s1, s2 = a10 + a11 + a20 + a21, a10 + 2 * a11 + a20 + 2 * a21
    assert values["s1"] == encode_scalar(s1)
    assert values["s2"] == encode_scalar(s2)
    assert values["V1 = s1·G"] == base_mult(s1)
    assert values["V2 = s2·G"] == base_mult(s2)
    assert group_public_key() == base_mult(a10 + a20) == base_mult(joint_secret())


def test_enrolment() -> None:
    values = fields("enrolment")
    ticket = fields("ticket")["ticket"]
    spki = deviceauth.device_key_spki(device_key())
    ticket_hash, spki_hash = hashlib.sha256(ticket).digest(), hashlib.sha256(spki).digest()
    transcript = b"mobilesign/v1 enrol\0" + ticket_hash + group_public_key() + spki_hash
    assert values["transcript"] == transcript
    assert deviceauth.enrol_transcript(ticket, group_public_key(), spki) == transcript
    assert len(transcript) == 116
    assert "|| SHA-256(device_spki) (116 bytes)" in _flat()
    assert "…c63eb35a`; 116 bytes) and its device signature" in _prose()
    for what, digest in (("SHA-256(ticket)", ticket_hash), ("SHA-256(device_spki)", spki_hash)):
        head, tail = _abbreviation(what)
        assert digest.hex().startswith(head)
        assert digest.hex().endswith(tail)
    assert values["signature"] == device_key().sign(transcript, DETERMINISTIC)
    assert deviceauth.verify(device_key().public_key(), values["signature"], transcript)


def test_session() -> None:
    values = fields("session")
    assert values["challenge"] == bytes(range(32))
    transcript = b"mobilesign/v1 session\0" + group_public_key() + values["challenge"]
    assert values["transcript"] == transcript
    assert deviceauth.session_transcript(group_public_key(), values["challenge"]) == transcript
    assert len(transcript) == 86
    assert "|| challenge (86 bytes)" in _flat()
    assert "**Session** (key id above, challenge `000102…1f`; transcript 86 bytes)" in _prose()
    spki = deviceauth.device_key_spki(device_key())
    for pin, label in ((PIN, "pin_proof"), (OTHER_PIN, "pin_proof with PIN 654321")):
        verifier = deviceauth.pin_verifier(pin, spki)
        proof = hmac.digest(verifier, b"mobilesign/v1 pin-proof\0" + transcript, "sha256")
        assert values[label] == proof == deviceauth.pin_proof(verifier, transcript)
    assert values["device sig"] == device_key().sign(transcript, DETERMINISTIC)
    assert deviceauth.verify(device_key().public_key(), values["device sig"], transcript)


def _key_packages() -> tuple[twoparty.KeyPackage, twoparty.KeyPackage]:
    dkg = fields("dkg")
    scheme = twoparty.Scheme.FROST_ED25519_SHA512
    v1, v2 = dkg["V1 = s1·G"], dkg["V2 = s2·G"]
    phone = twoparty.KeyPackage(scheme, 1, dkg["s1"], v1, v2, group_public_key())
    cosigner = twoparty.KeyPackage(scheme, 2, dkg["s2"], v2, v1, group_public_key())
    return phone, cosigner


def test_signature_with_the_project_signers() -> None:
    values = fields("signature")
    phone_package, cosigner_package = _key_packages()
    phone = twoparty.PhoneSigner(
        phone_package,
        random=_source(
            values["phone hiding randomness"], values["phone binding randomness"], size=32
        ),
    )
    cosigner = twoparty.CosignerSigner(
        cosigner_package,
        random=_source(
            values["cosigner hiding randomness"], values["cosigner binding randomness"], size=32
        ),
    )
    request = phone.request(values["message"])
    assert request.hiding_commitment == values["phone D1"]
    assert request.binding_commitment == values["phone E1"]
    response = cosigner.receive_request(request)
    assert response.hiding_commitment == values["cosigner D2"]
    assert response.binding_commitment == values["cosigner E2"]
    assert response.signature_share == values["z2 (SignShare)"]
    report = phone.receive_response(response)
    assert report.signature == values["signature R || z"]
    assert cosigner.receive_report(report).signature == values["signature R || z"]


def test_signature_independently() -> None:
    values = fields("signature")
    dkg = fields("dkg")
    message = values["message"]
    assert message == b"mobilesign example message"
    assert f'message = "{message.decode()}"' in _prose()
    nonces = {}
    for party, share in (("phone", dkg["s1"]), ("cosigner", dkg["s2"])):
        hiding = frost_hash(b"nonce", values[f"{party} hiding randomness"] + share)
        binding = frost_hash(b"nonce", values[f"{party} binding randomness"] + share)
        nonces[party] = hiding, binding
    (d1, e1), (d2, e2) = nonces["phone"], nonces["cosigner"]
    assert [values[f"phone {n}"] for n in ("d1", "e1", "D1", "E1")] == [
        encode_scalar(d1),
        encode_scalar(e1),
        base_mult(d1),
        base_mult(e1),
    ]
    assert [values[f"cosigner {n}"] for n in ("d2", "e2", "D2", "E2")] == [
        encode_scalar(d2),
        encode_scalar(e2),
        base_mult(d2),
        base_mult(e2),
    ]
    pk = group_public_key()
    commitment_list = b"".join(
        encode_scalar(i) + base_mult(d) + base_mult(e)
        for i, (d, e) in ((1, (d1, e1)), (2, (d2, e2)))
    )
    prefix = (
        pk
        + hashlib.sha512(b"FROST-ED25519-SHA512-v1msg" + message).digest()
        + hashlib.sha512(b"FROST-ED25519-SHA512-v1com" + commitment_list).digest()
    )
    rho1, rho2 = (frost_hash(b"rho", prefix + encode_scalar(i)) for i in (1, 2))
    assert values["rho1"] == encode_scalar(rho1)
    assert values["rho2"] == encode_scalar(rho2)
    big_r = base_mult(d1 + rho1 * e1 + d2 + rho2 * e2)
    c = scalar(hashlib.sha512(big_r + pk + message).digest())
    z1 = d1 + e1 * rho1 + 2 * scalar(dkg["s1"]) * c  # λ1 = 2
    z2 = d2 + e2 * rho2 - scalar(dkg["s2"]) * c  # λ2 = -1
    assert values["z1"] == encode_scalar(z1)
    assert values["z2 (SignShare)"] == encode_scalar(z2)
    assert values["signature R || z"] == big_r + encode_scalar(z1 + z2)
    ed25519_verify(pk, values["signature R || z"], message)
    assert values["cosigner record: SHA-256(message)"] == hashlib.sha256(message).digest()


# Section 4.9 -----------------------------------------------------------------------------------


class _JointSecretSigner:
    """A ``pkix.Signer`` that signs with the joint secret, as the example was made."""

    algorithm = pkix.SignatureAlgorithm.ED25519

    async def sign(self, data: bytes) -> bytes:
        return ed25519_sign(joint_secret(), data)


def test_personal_csr_with_the_project_builder() -> None:
    values = fields("personal-csr")
    assert values["group_public_key"] == group_public_key()
    assert values["joint secret x"] == encode_scalar(joint_secret())
    subject = pkix.name({"common_name": "alice"})
    assert values["subject"] == subject
    spki = ed25519.Ed25519PublicKey.from_public_bytes(group_public_key()).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert values["subject_public_key_info"] == spki
    csr = asyncio.run(
        pkix.build_csr(signer=_JointSecretSigner(), subject=subject, subject_public_key_info=spki)
    )
    assert values["csr"] == csr
    assert values["activation_code"] == bytes(range(16))
    assert "(user `alice`, `PK` from section 7, activation code `000102…0f`;" in _prose()
    assert values["application_proof"] == activation.application_proof(bytes(range(16)), csr)


def test_personal_csr_independently() -> None:
    values = fields("personal-csr")
    subject = der(0x30, der(0x31, der(0x30, der(0x06, b"\x55\x04\x03") + der(0x0C, b"alice"))))
    assert values["subject"] == subject
    algorithm = der(0x30, der(0x06, b"\x2b\x65\x70"))  # 1.3.101.112, no parameters
    spki = der(0x30, algorithm + der(0x03, b"\0" + group_public_key()))
    assert values["subject_public_key_info"] == spki
    info = der(0x30, der(0x02, b"\0") + subject + spki + der(0xA0, b""))
    assert values["certification_request_info"] == info
    x = joint_secret()
    assert base_mult(x) == group_public_key()
    assert values["signature"] == ed25519_sign(x, info)
    ed25519_verify(group_public_key(), values["signature"], info)
    csr = der(0x30, info + algorithm + der(0x03, b"\0" + values["signature"]))
    assert values["csr"] == csr
    proof = hmac.digest(values["activation_code"], domains.CERTIFICATE_APPLICATION + csr, "sha256")
    assert values["application_proof"] == proof


# Section 9 -------------------------------------------------------------------------------------


def test_gateway_login() -> None:
    values = fields("gateway-login")
    device = fields("device-key")
    assert values["device private scalar"] == device["device private scalar"]
    assert values["device_spki"] == device["device_spki (91 bytes)"]
    assert values["key_id"] == group_public_key()
    assert values["challenge"] == bytes(range(0x20, 0x40))
    transcript = b"mobilesign/v1 gateway-session\0" + values["key_id"] + values["challenge"]
    assert values["transcript"] == transcript
    assert (
        deviceauth.gateway_session_transcript(values["key_id"], values["challenge"]) == transcript
    )
    assert len(transcript) == 94
    assert "|| challenge (94 bytes)" in _flat()
    assert domains.GATEWAY_SESSION.hex() in _prose()
    assert values["device_signature"] == device_key().sign(transcript, DETERMINISTIC)
    assert deviceauth.verify(device_key().public_key(), values["device_signature"], transcript)


# Section 10 ------------------------------------------------------------------------------------


def _record() -> records.ServiceRecord:
    """The example record, from its stated fields, with a zero nonce."""
    values = fields("service-record")
    return records.ServiceRecord(
        record_id=values["record_id"].hex(),
        user_id=values["user_id"].decode(),
        user_key_id=values["user_key_id"].hex(),
        certificate_serial=values["certificate_serial"].decode(),
        organisation_key_id=values["organisation_key_id"].hex(),
        organisation_certificate_sha256=values["organisation_certificate_sha256"],
        operation=records.Operation(values["operation"].decode()),
        input_sha256=values["input_sha256"],
        purpose=values["purpose"].decode(),
        grant_id=values["grant_id"].hex(),
        time_ms=int.from_bytes(values["time_ms"], "big"),
        gateway_nonce=bytes(16),
    )


def test_service_record_inputs() -> None:
    values = fields("service-record")
    prose = _prose()
    assert values["user_id"] == b"alice"
    assert values["user_key_id"] == group_public_key()
    assert values["gateway record key"] == b"\x42" * 32
    assert "gateway record key 32 bytes `42`" in prose
    stated = {
        "input": b"mobilesign example document",
        "organisation_certificate_sha256": b"example organisation certificate",
    }
    for label, text in stated.items():
        assert values[label] == hashlib.sha256(text).digest()
        assert f'SHA-256("{text.decode()}")' in prose
    assert values["input_sha256"] == hashlib.sha256(values["input"]).digest()


def test_service_record_with_the_project_code() -> None:
    values = fields("service-record")
    unsealed = _record()
    assert unsealed.encode() == values["record with zero nonce"]
    nonce = records.prepared_nonce(values["gateway record key"], unsealed)
    assert values["gateway_nonce"] == nonce
    record = dataclasses.replace(unsealed, gateway_nonce=nonce)
    assert values["record"] == record.encode()
    assert records.decode_record(values["record"]) == record
    assert records.prepared_with(values["gateway record key"], record)


def test_service_record_independently() -> None:
    values = fields("service-record")
    names = (
        "record_id",
        "user_id",
        "user_key_id",
        "certificate_serial",
        "organisation_key_id",
        "organisation_certificate_sha256",
        "operation",
        "input_sha256",
        "purpose",
        "grant_id",
        "time_ms",
    )
    body = [values[name] for name in names]
    unsealed = b"MSR1" + length_prefixed(*body, bytes(16))
    assert values["record with zero nonce"] == unsealed
    mac = hmac.digest(
        values["gateway record key"], b"mobilesign/v1 prepared-record\0" + unsealed, "sha256"
    )
    assert values["gateway_nonce"] == mac[:16]
    assert values["record"] == b"MSR1" + length_prefixed(*body, mac[:16])
    assert values["user_signature"] == ed25519_sign(joint_secret(), values["record"])
    ed25519_verify(group_public_key(), values["user_signature"], values["record"])


def _entries() -> tuple[bytes, bytes]:
    values = fields("log-entries")
    return values["record entry"], values["outcome entry"]


def test_log_entries_with_the_project_code() -> None:
    record = fields("service-record")
    values = fields("log-entries")
    entry = records.RecordEntry(record["record"], record["user_signature"])
    assert values["record entry"] == entry.encode()
    outcome = records.OutcomeEntry(record["record_id"].hex(), True, "", values["result_sha256"])
    assert values["outcome entry"] == outcome.encode()
    assert records.decode_entry(values["record entry"]) == entry
    assert records.decode_entry(values["outcome entry"]) == outcome
    assert values["leaf 0"] == leaf_hash(values["record entry"])
    assert values["leaf 1"] == leaf_hash(values["outcome entry"])
    assert values["root"] == merkle_tree_hash(_entries())
    tree = MerkleTree.from_leaves([values["leaf 0"], values["leaf 1"]])
    assert tree.root(2) == values["root"]
    # As the prose says: the proof of entry 0 is [leaf 1], of entry 1 [leaf 0].
    assert tree.inclusion_proof(0, 2) == [values["leaf 1"]]
    assert tree.inclusion_proof(1, 2) == [values["leaf 0"]]
    for index, leaf, proof in ((0, "leaf 0", "leaf 1"), (1, "leaf 1", "leaf 0")):
        verify_inclusion(
            leaf_hash=values[leaf], index=index, size=2, proof=[values[proof]], root=values["root"]
        )
    assert "(inclusion proof of entry 0: `[leaf 1]`; of entry 1: `[leaf 0]`)" in _prose()


def test_log_entries_independently() -> None:
    record = fields("service-record")
    values = fields("log-entries")
    assert values["result_sha256"] == hashlib.sha256(b"example result").digest()
    assert 'the result hash `SHA-256("example result")`' in _prose()
    record_entry = b"MSL1\x01" + length_prefixed(record["record"], record["user_signature"])
    assert values["record entry"] == record_entry
    outcome_entry = b"MSL1\x02" + length_prefixed(
        record["record_id"], b"\x01", b"", values["result_sha256"]
    )
    assert values["outcome entry"] == outcome_entry
    leaves = [hashlib.sha256(b"\0" + e).digest() for e in (record_entry, outcome_entry)]
    assert [values["leaf 0"], values["leaf 1"]] == leaves
    assert values["root"] == hashlib.sha256(b"\1" + leaves[0] + leaves[1]).digest()


def _log_key() -> ec.EllipticCurvePrivateKey:
    return _p256(fields("checkpoint")["log private scalar"])


def _checkpoint_text() -> bytes:
    root = base64.b64encode(fields("log-entries")["root"]).decode()
    return f"{ORIGIN}\n2\n{root}\n".encode()


def test_checkpoint() -> None:
    values = fields("checkpoint")
    key = _log_key()
    assert values["log key spki"] == _spki(key)
    assert values["key id"] == hashlib.sha256(_spki(key)).digest()[:4]
    assert values["key id"] == NoteVerifier(ORIGIN, key.public_key()).key_id
    text = _checkpoint_text()
    assert values["checkpoint text"] == text
    assert Checkpoint(ORIGIN, 2, fields("log-entries")["root"]).to_body() == text
    assert values["SHA-256(text)"] == hashlib.sha256(text).digest()
    assert values["signature"] == key.sign(text, DETERMINISTIC)
    assert NoteVerifier(ORIGIN, key.public_key()).verify(text, values["signature"])
    assert f"default `{ORIGIN}`" in _prose()


def test_checkpoint_note() -> None:
    note = _blocks()["checkpoint-note"].encode()
    values = fields("checkpoint")
    key = _log_key()
    line = "\N{EM DASH} " + ORIGIN + " "
    line += base64.b64encode(values["key id"] + values["signature"]).decode() + "\n"
    assert note == _checkpoint_text() + b"\n" + line.encode()
    signer = NoteSigner(ORIGIN, key.public_key(), lambda text: key.sign(text, DETERMINISTIC))
    checkpoint = Checkpoint(ORIGIN, 2, fields("log-entries")["root"])
    assert sign_checkpoint(checkpoint, signer) == note
    assert verify_checkpoint(note, signer.verifier) == checkpoint
