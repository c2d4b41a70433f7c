"""C2SP signed notes and tlog checkpoints: round trips, interop vectors, strict rejection."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from mobilesign.auditlog import (
    EMPTY_ROOT,
    Checkpoint,
    NoteError,
    NoteSigner,
    NoteVerifier,
    open_note,
    sign_checkpoint,
    sign_note,
    verify_checkpoint,
)
from mobilesign.auditlog.checkpoint import MAX_NOTE_SIZE, MAX_SIGNATURES

ORIGIN = "log.mobilesign.example/audit"
ROOT = hashlib.sha256(b"some root").digest()
EM_DASH = "\N{EM DASH}".encode()

P256_KEY = ec.generate_private_key(ec.SECP256R1())
ED25519_KEY = Ed25519PrivateKey.generate()


def _p256_sign(key: ec.EllipticCurvePrivateKey) -> Callable[[bytes], bytes]:
    return lambda text: key.sign(text, ec.ECDSA(hashes.SHA256()))


def p256_signer(name: str = ORIGIN, key: ec.EllipticCurvePrivateKey = P256_KEY) -> NoteSigner:
    return NoteSigner(name, key.public_key(), _p256_sign(key))


def ed25519_signer(name: str = ORIGIN, key: Ed25519PrivateKey = ED25519_KEY) -> NoteSigner:
    return NoteSigner(name, key.public_key(), key.sign)


SIGNERS: dict[str, Callable[[], NoteSigner]] = {"p256": p256_signer, "ed25519": ed25519_signer}
CHECKPOINT = Checkpoint(ORIGIN, 20852163, ROOT)
NOTE = sign_checkpoint(CHECKPOINT, p256_signer())
VERIFIER = p256_signer().verifier


def _reason(note: bytes, verifier: NoteVerifier = VERIFIER, origin: str | None = None) -> str:
    with pytest.raises(NoteError) as info:
        verify_checkpoint(note, verifier, origin=origin)
    return info.value.reason


def _sig_line(name: str, raw: bytes) -> bytes:
    return EM_DASH + b" " + name.encode() + b" " + base64.b64encode(raw) + b"\n"


# --- Round trips.


@pytest.mark.parametrize("kind", SIGNERS)
@pytest.mark.parametrize(
    "checkpoint",
    [
        CHECKPOINT,
        Checkpoint(ORIGIN, 0, EMPTY_ROOT),
        Checkpoint(ORIGIN, 2**64 - 1, ROOT, ("ext one", "ext+two — ü")),
    ],
)
def test_round_trip(kind: str, checkpoint: Checkpoint) -> None:
    signer = SIGNERS[kind]()
    note = sign_checkpoint(checkpoint, signer)
    body = checkpoint.to_body()
    assert note.startswith(body + b"\n" + EM_DASH + b" " + ORIGIN.encode() + b" ")
    assert note.endswith(b"\n")
    assert note.count(b"\n\n") == 1
    assert verify_checkpoint(note, signer.verifier) == checkpoint
    assert Checkpoint.from_body(body) == checkpoint
    raw = base64.b64decode(note.rsplit(b" ", 1)[1])
    assert raw[:4] == signer.verifier.key_id


def test_body_format() -> None:
    body = Checkpoint("example.com/behind-the-sofa", 20852163, ROOT, ("x",)).to_body()
    root_b64 = base64.b64encode(ROOT)
    assert body == b"example.com/behind-the-sofa\n20852163\n" + root_b64 + b"\nx\n"


def test_key_ids_follow_the_spec() -> None:
    ed_pub = ED25519_KEY.public_key()
    raw = ed_pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    expected = hashlib.sha256(ORIGIN.encode() + b"\n\x01" + raw).digest()[:4]
    assert NoteVerifier(ORIGIN, ed_pub).key_id == expected

    ec_pub = P256_KEY.public_key()
    spki = ec_pub.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert NoteVerifier(ORIGIN, ec_pub).key_id == hashlib.sha256(spki).digest()[:4]


# --- Interop with published notes.

# golang.org/x/mod/sumdb/note documentation example (Ed25519, type 0x01).
PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
PETER_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
PETER_TEXT = (
    b"If you think cryptography is the answer to your problem,\n"
    b"then you don't know what your problem is.\n"
)
PETER_NOTE = (
    PETER_TEXT
    + (
        "\n— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdn"
        "gotpRZb6KE6RyyBwJnAM=\n"
    ).encode()
)

# ECDSA (type 0x02) checkpoints from transparency-dev/formats note tests and sigstore-js tests:
# (key name, key hash, base64(0x02 || SPKI DER), note, origin, size).
REKOR_KEY = (
    "AjBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABNhtmPtrWm3U1eQXBogSMdGvXwBcK5AW5i0hrZLOC96l+smGNM7nwZ4"
    "QvFK/4sueRoVj//QP22Ni4Qt9DPfkWLc="
)
ECDSA_VECTORS = [
    (
        "rekor.sigstore.dev",
        "c0d23d6a",
        REKOR_KEY,
        "Rekor\n798034\nf+7CoKgXKE/tNys9TTXcr/ad6U/K3xvznmzew9y6SP0=\n\n— rekor.sigstore.dev wNI9aj"
        "BEAiARInWIWyCdyG27CO6LPnPekyw20qO0YJfoaPaowGp/XgIgc+qEHS3+GKVClgqq20uDLet7MCoTURUCRdxwWBHHufk="
        "\n",
        "Rekor",
        798034,
    ),
    (
        "pixel6_transparency_log",
        "91c16e30",
        "AjBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABN+4x0Jk1yTwvLFI9A4NDdGZcX0aiWVdWM5XJVy0M4VWD3AvyW5Q6Hs"
        "9A0mcDkpUoYgn+KKPNzFC0H3nN3q6JQ8=",
        "DEFAULT\n10\nbsWRucJU5xJPHb5eBdOm6+DM+VelCZBuvtI3sHERJ9Y=\n\n"
        "— pixel6_transparency_log kcFuMDBFAiEAhqMAP8P6qf6QxtUJhzMhbN+MbZ9dwfUHzGQJmffJHtoCIGD0cNe"
        "47dHWBoPwYdgBCepB06/+g5O1FmYjXl06owL4\n",
        "DEFAULT",
        10,
    ),
    (
        "rekor.sigstore.dev",
        "c0d23d6a",
        REKOR_KEY,
        "rekor.sigstore.dev - 2605736670972794746\n21428036\n"
        "rxnoKyFZlJ7/R6bMh/d3lcqwKqAy5CL1LcNBJP17kgQ=\nTimestamp: 1688058656037355364\n\n"
        "— rekor.sigstore.dev wNI9ajBFAiEAuDk7uu5Ae8Own/MjhSZNuVzbLuYH2jBMxbSA0WaNDNACIDV4reKpYiOp"
        "kwtvazCClnpUuduF2o/th2xR3gRZAUU4\n",
        "rekor.sigstore.dev - 2605736670972794746",
        21428036,
    ),
]


def test_ed25519_matches_go_reference() -> None:
    name, key_hash, vkey = PETER_VKEY.split("+")
    vraw = base64.b64decode(vkey)
    assert vraw[0] == 1
    verifier = NoteVerifier(name, Ed25519PublicKey.from_public_bytes(vraw[1:]))
    assert verifier.key_id.hex() == key_hash
    assert open_note(PETER_NOTE, [verifier]) == PETER_TEXT
    seed = base64.b64decode(PETER_SKEY.split("+", 4)[4])[1:]
    private = Ed25519PrivateKey.from_private_bytes(seed)
    assert sign_note(PETER_TEXT, [NoteSigner(name, private.public_key(), private.sign)]) == (
        PETER_NOTE
    )


@pytest.mark.parametrize(("name", "key_hash", "key", "note", "origin", "size"), ECDSA_VECTORS)
def test_ecdsa_matches_published_checkpoints(
    name: str, key_hash: str, key: str, note: str, origin: str, size: int
) -> None:
    raw = base64.b64decode(key)
    assert raw[0] == 2
    public = serialization.load_der_public_key(raw[1:])
    assert isinstance(public, ec.EllipticCurvePublicKey)
    verifier = NoteVerifier(name, public)
    assert verifier.key_id.hex() == key_hash
    checkpoint = verify_checkpoint(note.encode(), verifier, origin=origin)
    assert (checkpoint.origin, checkpoint.size) == (origin, size)
    assert _reason(note.encode(), verifier) == "ORIGIN_MISMATCH"
    tampered = note.replace(f"\n{size}\n", f"\n{size + 1}\n").encode()
    assert _reason(tampered, verifier, origin) == "BAD_SIGNATURE"


# --- Rejections: signatures.


def test_tampered_body_rejected() -> None:
    tampered = NOTE.replace(b"\n20852163\n", b"\n20852164\n")
    assert _reason(tampered) == "BAD_SIGNATURE"


def test_tampered_signature_rejected() -> None:
    body, line = NOTE.split(b"\n\n")
    raw = bytearray(base64.b64decode(line.rsplit(b" ", 1)[1]))
    raw[-1] ^= 1
    assert _reason(body + b"\n\n" + _sig_line(ORIGIN, bytes(raw))) == "BAD_SIGNATURE"


@pytest.mark.parametrize("kind", SIGNERS)
def test_wrong_key_rejected(kind: str) -> None:
    signer = SIGNERS[kind]()
    text = CHECKPOINT.to_body()
    note = sign_checkpoint(CHECKPOINT, signer)
    if kind == "p256":
        other_key = ec.generate_private_key(ec.SECP256R1())
        other = p256_signer(ORIGIN, other_key)
        forged_sig = other_key.sign(text, ec.ECDSA(hashes.SHA256()))
    else:
        other_ed = Ed25519PrivateKey.generate()
        other = ed25519_signer(ORIGIN, other_ed)
        forged_sig = other_ed.sign(text)
    # Same name, different key: a different key ID, so the signature is not from a trusted key.
    assert _reason(note, other.verifier) == "UNTRUSTED"
    # The trusted key's ID on a signature made by another key.
    forged = text + b"\n" + _sig_line(ORIGIN, signer.verifier.key_id + forged_sig)
    assert _reason(forged, signer.verifier) == "BAD_SIGNATURE"


def test_wrong_key_name_rejected() -> None:
    renamed = p256_signer("log.mobilesign.example/other").verifier
    assert _reason(NOTE, renamed) == "UNTRUSTED"
    assert _reason(NOTE, renamed, origin=ORIGIN) == "UNTRUSTED"
    with pytest.raises(ValueError, match="differs from origin"):
        sign_checkpoint(CHECKPOINT, p256_signer("log.mobilesign.example/other"))


def test_origin_must_match() -> None:
    other = p256_signer("other.example/log")
    note = sign_note(CHECKPOINT.to_body(), [other])
    assert _reason(note, other.verifier) == "ORIGIN_MISMATCH"
    assert verify_checkpoint(note, other.verifier, origin=ORIGIN) == CHECKPOINT


def test_unknown_signatures_ignored_but_known_failures_fatal() -> None:
    witness = ed25519_signer("witness.example/w1")
    cosigned = sign_note(CHECKPOINT.to_body(), [witness, p256_signer()])
    assert verify_checkpoint(cosigned, VERIFIER) == CHECKPOINT
    assert verify_checkpoint(cosigned, witness.verifier, origin=ORIGIN) == CHECKPOINT
    # Unknown name with the trusted key ID, and trusted name with an unknown key ID: ignored.
    junk = _sig_line("someone.else", VERIFIER.key_id + b"sig") + _sig_line(ORIGIN, b"\0\0\0\0sig")
    assert verify_checkpoint(NOTE + junk, VERIFIER) == CHECKPOINT
    assert _reason(CHECKPOINT.to_body() + b"\n" + junk) == "UNTRUSTED"
    # A trusted witness whose signature fails rejects the note, even though the log's verifies.
    bad_witness = _sig_line(witness.name, witness.verifier.key_id + b"\0" * 64)
    with pytest.raises(NoteError) as info:
        open_note(NOTE + bad_witness, [VERIFIER, witness.verifier])
    assert info.value.reason == "BAD_SIGNATURE"
    assert open_note(NOTE + bad_witness, [VERIFIER]) == CHECKPOINT.to_body()
    # The same key twice is malformed, whatever the signatures.
    assert _reason(NOTE + NOTE.split(b"\n\n")[1]) == "DUPLICATE_SIGNATURE"


def test_signer_failures_are_caught() -> None:
    def raw_rs(text: bytes) -> bytes:  # r || s instead of DER: a classic HSM boundary bug
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        r, s = decode_dss_signature(P256_KEY.sign(text, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    for sign in (raw_rs, lambda text: b"\x00" * 72):
        signer = NoteSigner(ORIGIN, P256_KEY.public_key(), sign)
        with pytest.raises(NoteError) as info:
            sign_checkpoint(CHECKPOINT, signer)
        assert info.value.reason == "SIGNER_FAILURE"


def test_key_and_name_validation() -> None:
    with pytest.raises(TypeError):
        NoteVerifier(ORIGIN, ec.generate_private_key(ec.SECP384R1()).public_key())
    with pytest.raises(TypeError):
        NoteVerifier(ORIGIN, rsa.generate_private_key(65537, 2048).public_key())  # type: ignore[arg-type]
    for name in ["", "a b", "a+b", "a\tb", "a\u00a0b", "a\nb"]:
        with pytest.raises(ValueError, match="key name"):
            NoteVerifier(name, P256_KEY.public_key())
    with pytest.raises(ValueError, match="signer"):
        sign_note(b"text\n", [])
    with pytest.raises(ValueError, match="differ"):
        sign_note(b"text\n", [p256_signer(), p256_signer()])
    with pytest.raises(NoteError):
        sign_note(b"no newline", [p256_signer()])
    with pytest.raises(NoteError):
        sign_note(b"bad\rtext\n", [p256_signer()])


# --- Rejections: malformed notes.

BODY, SIGS = NOTE.split(b"\n\n")
SIG_RAW = base64.b64decode(SIGS.rsplit(b" ", 1)[1])
SIG_B64 = base64.b64encode(SIG_RAW)
PREFIX = EM_DASH + b" " + ORIGIN.encode() + b" "


# 68 bytes: base64 ends in one "=" after a character with two unused (zero) bits.
PADDED_B64 = base64.b64encode(VERIFIER.key_id + b"\x07" * 64)


def _noncanonical(b64: bytes) -> bytes:
    # Same bytes, but a nonzero unused bit before the padding.
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = alphabet.index(b64[-2:-1])
    assert last & 1 == 0
    return b64[:-2] + alphabet[last | 1 : (last | 1) + 1] + b"="


MALFORMED = {
    "missing final newline": (NOTE[:-1], "MALFORMED"),
    "no blank line": (BODY + b"\n" + SIGS, "MALFORMED"),
    "no signatures": (BODY + b"\n\n", "MALFORMED"),
    "trailing blank line": (NOTE + b"\n", "MALFORMED"),
    "extra blank line before signatures": (BODY + b"\n\n\n" + SIGS, "BAD_SIGNATURE"),
    "blank line between signatures": (
        NOTE + b"\n" + _sig_line("w.example", b"\1\2\3\4\5"),
        "UNTRUSTED",
    ),
    "hyphen instead of em dash": (BODY + b"\n\n- " + SIGS[4:], "MALFORMED"),
    "no space after em dash": (BODY + b"\n\n" + EM_DASH + SIGS[4:], "MALFORMED"),
    "no signature field": (BODY + b"\n\n" + EM_DASH + b" " + ORIGIN.encode() + b"\n", "MALFORMED"),
    "empty key name": (BODY + b"\n\n" + EM_DASH + b"  " + SIG_B64 + b"\n", "BAD_KEY_NAME"),
    "plus in key name": (BODY + b"\n\n" + EM_DASH + b" a+b " + SIG_B64 + b"\n", "BAD_KEY_NAME"),
    "nbsp in key name": (
        BODY + b"\n\n" + EM_DASH + " a\u00a0b ".encode() + SIG_B64 + b"\n",
        "BAD_KEY_NAME",
    ),
    "bad base64": (BODY + b"\n\n" + PREFIX + b"!!!!\n", "BAD_BASE64"),
    "unpadded base64": (BODY + b"\n\n" + PREFIX + PADDED_B64[:-1] + b"\n", "BAD_BASE64"),
    "non-canonical base64": (
        BODY + b"\n\n" + PREFIX + _noncanonical(PADDED_B64) + b"\n",
        "BAD_BASE64",
    ),
    "space in base64": (
        BODY + b"\n\n" + PREFIX + SIG_B64[:8] + b" " + SIG_B64[8:] + b"\n",
        "BAD_BASE64",
    ),
    "signature too short": (BODY + b"\n\n" + _sig_line(ORIGIN, SIG_RAW[:4]), "MALFORMED"),
    "crlf": (NOTE.replace(b"\n", b"\r\n"), "ENCODING"),
    "nul byte": (NOTE.replace(b"audit", b"au\0it", 1), "ENCODING"),
    "invalid utf-8": (NOTE.replace(b"audit", b"au\xffit", 1), "ENCODING"),
    "overlong utf-8": (NOTE.replace(b"audit", b"au\xc0\xafit", 1), "ENCODING"),
    "oversized": (
        BODY + b"\n" + b"x" * MAX_NOTE_SIZE + b"\n\n" + SIGS,
        "TOO_LARGE",
    ),
    "too many signatures": (
        NOTE + b"".join(_sig_line(f"w{i}.example", b"\1\2\3\4\5") for i in range(MAX_SIGNATURES)),
        "TOO_MANY_SIGNATURES",
    ),
    "empty": (b"", "MALFORMED"),
}


def test_noncanonical_case_is_lenient_base64_of_same_bytes() -> None:
    lenient = base64.b64decode(_noncanonical(PADDED_B64), validate=True)
    assert lenient == base64.b64decode(PADDED_B64)


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_note_rejected(case: str) -> None:
    note, reason = MALFORMED[case]
    assert _reason(note) == reason


def test_signature_limit_is_inclusive() -> None:
    extra = b"".join(_sig_line(f"w{i}.example", b"\1\2\3\4\5") for i in range(MAX_SIGNATURES - 1))
    assert verify_checkpoint(NOTE + extra, VERIFIER) == CHECKPOINT


# --- Rejections: checkpoint text (validly signed, so only the body parser can object).

ROOT_B64 = base64.b64encode(ROOT).decode()
BAD_BODIES = {
    "two lines": (f"{ORIGIN}\n1\n", "BAD_CHECKPOINT"),
    "empty origin": (f"\n1\n{ROOT_B64}\n", "BAD_CHECKPOINT"),
    "empty extension": (f"{ORIGIN}\n1\n{ROOT_B64}\n\next\n", "BAD_CHECKPOINT"),
    "blank size": (f"{ORIGIN}\n\n{ROOT_B64}\n", "BAD_CHECKPOINT"),
    "leading zero": (f"{ORIGIN}\n01\n{ROOT_B64}\n", "BAD_SIZE"),
    "plus sign": (f"{ORIGIN}\n+1\n{ROOT_B64}\n", "BAD_SIZE"),
    "negative": (f"{ORIGIN}\n-1\n{ROOT_B64}\n", "BAD_SIZE"),
    "space": (f"{ORIGIN}\n 1\n{ROOT_B64}\n", "BAD_SIZE"),
    "underscore": (f"{ORIGIN}\n1_0\n{ROOT_B64}\n", "BAD_SIZE"),
    "non-ascii digits": (f"{ORIGIN}\n\u0661\u0662\n{ROOT_B64}\n", "BAD_SIZE"),
    "hex": (f"{ORIGIN}\n0x10\n{ROOT_B64}\n", "BAD_SIZE"),
    "above uint64": (f"{ORIGIN}\n{2**64}\n{ROOT_B64}\n", "BAD_SIZE"),
    "huge": (f"{ORIGIN}\n{'9' * 4000}\n{ROOT_B64}\n", "BAD_SIZE"),
    "root not base64": (f"{ORIGIN}\n1\n{ROOT_B64[:-2]}!=\n", "BAD_BASE64"),
    "root unpadded": (f"{ORIGIN}\n1\n{ROOT_B64.rstrip('=')}\n", "BAD_BASE64"),
    "root 31 bytes": (f"{ORIGIN}\n1\n{base64.b64encode(ROOT[:31]).decode()}\n", "BAD_ROOT_HASH"),
    "root 33 bytes": (f"{ORIGIN}\n1\n{base64.b64encode(ROOT + b'x').decode()}\n", "BAD_ROOT_HASH"),
}


@pytest.mark.parametrize("case", BAD_BODIES)
def test_bad_checkpoint_body_rejected(case: str) -> None:
    body, reason = BAD_BODIES[case]
    note = sign_note(body.encode(), [p256_signer()])
    assert _reason(note) == reason
    with pytest.raises(NoteError) as info:
        Checkpoint.from_body(body.encode())
    assert info.value.reason == reason


def test_from_body_requires_final_newline() -> None:
    with pytest.raises(NoteError) as info:
        Checkpoint.from_body(CHECKPOINT.to_body()[:-1])
    assert info.value.reason == "BAD_CHECKPOINT"


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"origin": ""}, "BAD_CHECKPOINT"),
        ({"origin": "a\nb"}, "BAD_CHECKPOINT"),
        ({"origin": "a\ud800"}, "BAD_CHECKPOINT"),
        ({"size": -1}, "BAD_SIZE"),
        ({"size": 2**64}, "BAD_SIZE"),
        ({"root_hash": ROOT[:16]}, "BAD_ROOT_HASH"),
        ({"extensions": ("",)}, "BAD_CHECKPOINT"),
        ({"extensions": ("a\nb",)}, "BAD_CHECKPOINT"),
    ],
)
def test_checkpoint_constructor_validates(kwargs: dict[str, object], reason: str) -> None:
    fields: dict[str, object] = {"origin": ORIGIN, "size": 1, "root_hash": ROOT}
    fields.update(kwargs)
    with pytest.raises(NoteError) as info:
        Checkpoint(**fields)  # type: ignore[arg-type]
    assert info.value.reason == reason


# --- Properties.


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_only_raise_note_error(data: bytes) -> None:
    with pytest.raises(NoteError):
        verify_checkpoint(data, VERIFIER)
    try:
        checkpoint = Checkpoint.from_body(data)
    except NoteError:
        return
    assert checkpoint.to_body() == data  # whatever parses is canonical


NOTE_PIECES = ["\n", " ", "—", "+", "=", "/", "0", "1", "9", "A", "a", "é", "\u00a0", "\r"]
NOTE_ALPHABET = st.sampled_from([*NOTE_PIECES, ORIGIN, ROOT_B64, SIGS.decode()])


@settings(max_examples=400, deadline=None)
@given(st.lists(NOTE_ALPHABET, max_size=40))
def test_structured_garbage_only_raises_note_error(parts: list[str]) -> None:
    data = "".join(parts).encode()
    with pytest.raises(NoteError):
        verify_checkpoint(data, VERIFIER)
    try:
        checkpoint = Checkpoint.from_body(data)
    except NoteError:
        return
    assert checkpoint.to_body() == data


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_any_single_byte_edit_is_rejected(data: st.DataObject) -> None:
    position = data.draw(st.integers(0, len(NOTE)), label="position")
    edit = data.draw(st.sampled_from(["replace", "insert", "delete"]), label="edit")
    byte = data.draw(st.integers(0, 255), label="byte")
    if edit == "insert":
        mutated = NOTE[:position] + bytes([byte]) + NOTE[position:]
    elif position == len(NOTE):
        return
    elif edit == "delete":
        mutated = NOTE[:position] + NOTE[position + 1 :]
    else:
        if NOTE[position] == byte:
            return
        mutated = NOTE[:position] + bytes([byte]) + NOTE[position + 1 :]
    with pytest.raises(NoteError):
        verify_checkpoint(mutated, VERIFIER)
