"""C2SP ``tlog-checkpoint`` tree heads inside C2SP ``signed-note`` envelopes.

A checkpoint's note text is ``<origin>\\n<tree size>\\n<base64 root hash>\\n`` followed by optional
non-empty extension lines. A signed note is that text, a blank line, and one or more lines
``— <key name> <base64(4-byte key ID || signature)>\\n``, each signing the text (final newline
included).

Signature types. The signed-note spec assigns identifier bytes and recommends supporting only the
ones a design needs; this module supports two:

* ``0x01`` Ed25519 (RFC 8032 over the text). Key ID =
  ``SHA-256(key name || 0x0A || 0x01 || 32-byte public key)[:4]``.
* ``0x02`` ECDSA, which the spec defines as "ECDSA signatures as implemented by
  github.com/transparency-dev/witness" (the format Sigstore Rekor checkpoints use). This is the
  log's production type: its key is ECDSA P-256 in the PKCS#11 token. The signature is the ASN.1
  DER ``ECDSA-Sig-Value`` over ``SHA-256(text)``; the key ID is, as the spec notes,
  ``SHA-256(DER SubjectPublicKeyInfo)[:4]`` (neither the key name nor the type byte is hashed,
  unlike Ed25519). Only P-256 is accepted. Because the spec does assign a type for ECDSA, no
  project-specific ``0xff`` type is needed, and any 0x02-aware note verifier can check our
  checkpoints.

Signing goes through a callback, ``sign(text) -> signature``, so the private key can stay in the
HSM: for ECDSA it must return the DER signature over SHA-256 of the text (CKM_ECDSA_SHA256 with
the raw ``r || s`` DER-encoded at the proxy boundary); for Ed25519 the 64-byte signature. Every
signature the callback returns is verified before it is published, so a faulty token cannot
emit a note that does not verify.

Verification follows the spec: signatures from keys other than the trusted one (name and key ID
both matching) are ignored; a trusted key's signature that fails rejects the whole note; a note
with no verified trusted signature is rejected; the text is parsed only after its signature
verifies. :func:`verify_checkpoint` also requires the origin line to equal the expected origin
(by default the key name, which the checkpoint spec says SHOULD match it), so a checkpoint of
another log signed with the same key is not accepted for this one.

Parsing is strict and every failure raises :class:`NoteError` with a stable ``reason``
(:data:`NoteFailure`): notes over :data:`MAX_NOTE_SIZE` bytes or with more than
:data:`MAX_SIGNATURES` signature lines, invalid UTF-8, control characters other than newline, a
missing blank-line separator or final newline, malformed signature lines or key names,
non-canonical base64, repeated signatures, tree sizes with signs or leading zeros or above
2**64 - 1, root hashes that are not 32 bytes, and empty lines in the checkpoint text.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from mobilesign.auditlog.merkle import HASH_SIZE
from mobilesign.errors import Error, Kind

__all__ = [
    "MAX_NOTE_SIZE",
    "MAX_SIGNATURES",
    "Checkpoint",
    "NoteError",
    "NoteFailure",
    "NoteSigner",
    "NoteVerifier",
    "PublicKey",
    "open_note",
    "sign_checkpoint",
    "sign_note",
    "verify_checkpoint",
]

# The spec requires accepting at least 16 signatures and warns post-quantum ones approach 5 kB:
# 16 such lines in base64 fit in 128 KiB, our own single ECDSA line needs about 100 bytes.
MAX_NOTE_SIZE = 128 * 1024
MAX_SIGNATURES = 100

_MAX_TREE_SIZE = (1 << 64) - 1
_SIG_PREFIX = "\N{EM DASH} ".encode()
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")
_LINE_FORBIDDEN = re.compile(r"[\x00-\x1f]")
_TREE_SIZE = re.compile(r"0|[1-9][0-9]{0,19}")
_TYPE_ED25519 = b"\x01"

PublicKey = Ed25519PublicKey | ec.EllipticCurvePublicKey
"""Log key types accepted: Ed25519, or ECDSA on NIST P-256."""

NoteFailure = Literal[
    "TOO_LARGE",  # note over MAX_NOTE_SIZE bytes
    "ENCODING",  # not UTF-8, or a control character other than newline
    "MALFORMED",  # no blank line before signatures, no final newline, bad signature line
    "BAD_KEY_NAME",  # key name empty or containing a space or "+"
    "BAD_BASE64",  # signature or root hash not canonical standard base64
    "TOO_MANY_SIGNATURES",  # more than MAX_SIGNATURES signature lines
    "DUPLICATE_SIGNATURE",  # two signature lines with the same key name and key ID
    "BAD_SIGNATURE",  # the trusted key's signature does not verify
    "UNTRUSTED",  # no signature from the trusted key
    "SIGNER_FAILURE",  # the signing callback returned a signature that does not verify
    "BAD_CHECKPOINT",  # checkpoint text: missing newline, fewer than 3 lines, an empty line
    "BAD_SIZE",  # tree size not canonical decimal or above 2**64 - 1
    "BAD_ROOT_HASH",  # root hash not 32 bytes
    "ORIGIN_MISMATCH",  # checkpoint origin differs from the expected one
]


class NoteError(Error):
    """A signed note or checkpoint was rejected (INVALID); ``reason`` is a stable
    :data:`NoteFailure`."""

    def __init__(self, reason: NoteFailure, message: str) -> None:
        super().__init__(Kind.INVALID, reason, message)
        self.reason: NoteFailure = reason


def _is_key_name(name: str) -> bool:
    return bool(name) and not any(c.isspace() or c == "+" or c < " " for c in name)


def _is_text_line(line: str) -> bool:
    try:
        line.encode()
    except UnicodeEncodeError:  # lone surrogates cannot appear in a UTF-8 note
        return False
    return _LINE_FORBIDDEN.search(line) is None


def _decode_text(data: bytes) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NoteError("ENCODING", "not valid UTF-8") from exc
    if _CONTROL.search(text):
        raise NoteError("ENCODING", "control character other than newline")
    return text


def _b64decode_canonical(data: str | bytes) -> bytes | None:
    """Standard padded base64 that re-encodes to exactly the input, else ``None``."""
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return None
    encoded = base64.b64encode(raw)
    return raw if encoded == (data.encode() if isinstance(data, str) else data) else None


class NoteVerifier:
    """A trusted note key: its name, public key and the 4-byte key ID its signatures carry."""

    def __init__(self, name: str, public_key: PublicKey) -> None:
        if not _is_key_name(name) or not _is_text_line(name):
            raise ValueError(f"invalid note key name {name!r}")
        if isinstance(public_key, Ed25519PublicKey):
            raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
            digest = hashlib.sha256(name.encode() + b"\n" + _TYPE_ED25519 + raw).digest()
        elif isinstance(public_key, ec.EllipticCurvePublicKey) and isinstance(
            public_key.curve, ec.SECP256R1
        ):
            spki = public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
            digest = hashlib.sha256(spki).digest()
        else:
            raise TypeError("note keys must be Ed25519 or ECDSA P-256")
        self._name = name
        self._public_key = public_key
        self._key_id = digest[:4]

    @property
    def name(self) -> str:
        """Key name as it appears in signature lines."""
        return self._name

    @property
    def public_key(self) -> PublicKey:
        """The verifying key."""
        return self._public_key

    @property
    def key_id(self) -> bytes:
        """The 4-byte key ID prefixed to this key's signatures."""
        return self._key_id

    def verify(self, text: bytes, signature: bytes) -> bool:
        """Whether ``signature`` (without key ID) is this key's valid signature on ``text``."""
        try:
            if isinstance(self._public_key, Ed25519PublicKey):
                self._public_key.verify(signature, text)
            else:
                self._public_key.verify(signature, text, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return False
        return True

    def __repr__(self) -> str:
        return f"NoteVerifier(name={self._name!r}, key_id={self._key_id.hex()})"


class NoteSigner:
    """A note key whose private half is reached only through ``sign(text) -> signature``."""

    def __init__(self, name: str, public_key: PublicKey, sign: Callable[[bytes], bytes]) -> None:
        self._verifier = NoteVerifier(name, public_key)
        self._sign = sign

    @property
    def name(self) -> str:
        """Key name as it appears in signature lines."""
        return self._verifier.name

    @property
    def verifier(self) -> NoteVerifier:
        """The matching verifier, for publishing or self-checks."""
        return self._verifier

    def _signature_line(self, text: bytes) -> bytes:
        signature = self._sign(text)
        if not self._verifier.verify(text, signature):
            raise NoteError("SIGNER_FAILURE", f"key {self.name!r} produced an invalid signature")
        encoded = base64.b64encode(self._verifier.key_id + signature)
        return _SIG_PREFIX + self.name.encode() + b" " + encoded + b"\n"

    def __repr__(self) -> str:
        return f"NoteSigner(name={self.name!r}, key_id={self._verifier.key_id.hex()})"


def sign_note(text: bytes, signers: Sequence[NoteSigner]) -> bytes:
    """Sign note ``text`` (UTF-8, ending in a newline) with each signer, in order."""
    _decode_text(text)
    if not text.endswith(b"\n"):
        raise NoteError("MALFORMED", "note text must end with a newline")
    if not signers:
        raise ValueError("at least one signer is required")
    if len({(s.name, s.verifier.key_id) for s in signers}) != len(signers):
        raise ValueError("signers must differ in key name or key ID")
    note = text + b"\n" + b"".join(s._signature_line(text) for s in signers)
    if len(note) > MAX_NOTE_SIZE:  # never publish a note our own parser would refuse
        raise NoteError("TOO_LARGE", f"note is {len(note)} bytes, limit {MAX_NOTE_SIZE}")
    return note


def open_note(note: bytes, verifiers: Sequence[NoteVerifier]) -> bytes:
    """Return the text of ``note`` once a signature from one of ``verifiers`` has verified.

    Raises :class:`NoteError` if the note is malformed, a trusted key's signature fails, or no
    trusted key signed it.
    """
    if len(note) > MAX_NOTE_SIZE:
        raise NoteError("TOO_LARGE", f"note is {len(note)} bytes, limit {MAX_NOTE_SIZE}")
    _decode_text(note)
    split = note.rfind(b"\n\n")
    if split < 0:
        raise NoteError("MALFORMED", "no blank line between text and signatures")
    text, signature_block = note[: split + 1], note[split + 2 :]
    if not signature_block:
        raise NoteError("MALFORMED", "no signature lines")
    if not signature_block.endswith(b"\n"):
        raise NoteError("MALFORMED", "signature block must end with a newline")
    lines = signature_block[:-1].split(b"\n")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError("TOO_MANY_SIGNATURES", f"{len(lines)} signatures, limit {MAX_SIGNATURES}")

    trusted = {(v.name, v.key_id): v for v in verifiers}
    seen: set[tuple[str, bytes]] = set()
    verified = False
    for line in lines:
        if not line.startswith(_SIG_PREFIX):
            raise NoteError("MALFORMED", "signature line must start with an em dash and a space")
        name_bytes, space, encoded = line[len(_SIG_PREFIX) :].partition(b" ")
        if not space:
            raise NoteError("MALFORMED", "signature line needs a key name and a signature")
        name = name_bytes.decode()  # cannot fail: the note is valid UTF-8, split at ASCII bytes
        if not _is_key_name(name):
            raise NoteError("BAD_KEY_NAME", f"invalid key name {name!r}")
        raw = _b64decode_canonical(encoded)
        if raw is None:
            raise NoteError("BAD_BASE64", "signature is not canonical base64")
        if len(raw) < 5:
            raise NoteError("MALFORMED", "signature shorter than key ID plus one byte")
        key = (name, raw[:4])
        if key in seen:
            raise NoteError("DUPLICATE_SIGNATURE", f"repeated signature by {name!r}")
        seen.add(key)
        verifier = trusted.get(key)
        if verifier is None:
            continue  # the spec requires ignoring unknown keys (witnesses, rotated keys)
        if not verifier.verify(text, raw[4:]):
            raise NoteError("BAD_SIGNATURE", f"signature by {name!r} does not verify")
        verified = True
    if not verified:
        raise NoteError("UNTRUSTED", "no signature from a trusted key")
    return text


@dataclass(frozen=True)
class Checkpoint:
    """A log's tree head: origin, tree size, RFC 9162 root hash and opaque extension lines."""

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.origin or not _is_text_line(self.origin):
            raise NoteError("BAD_CHECKPOINT", "origin must be a non-empty single line")
        if not 0 <= self.size <= _MAX_TREE_SIZE:
            raise NoteError("BAD_SIZE", f"tree size {self.size} is outside 0..2**64-1")
        if len(self.root_hash) != HASH_SIZE:
            raise NoteError("BAD_ROOT_HASH", f"root hash is {len(self.root_hash)} bytes")
        for line in self.extensions:
            if not line or not _is_text_line(line):
                raise NoteError("BAD_CHECKPOINT", "extension lines must be non-empty single lines")

    def to_body(self) -> bytes:
        """The checkpoint note text, final newline included."""
        lines = [self.origin, str(self.size), base64.b64encode(self.root_hash).decode()]
        return "".join(line + "\n" for line in [*lines, *self.extensions]).encode()

    @classmethod
    def from_body(cls, text: bytes) -> Checkpoint:
        """Parse checkpoint note text strictly. Raises :class:`NoteError`."""
        decoded = _decode_text(text)
        if not decoded.endswith("\n"):
            raise NoteError("BAD_CHECKPOINT", "checkpoint text must end with a newline")
        lines = decoded[:-1].split("\n")
        if len(lines) < 3 or not all(lines):
            raise NoteError("BAD_CHECKPOINT", "need origin, size and root lines, none empty")
        origin, size_line, root_line, *extensions = lines
        if not _TREE_SIZE.fullmatch(size_line):
            raise NoteError("BAD_SIZE", "tree size must be decimal without leading zeros")
        root_hash = _b64decode_canonical(root_line)
        if root_hash is None:
            raise NoteError("BAD_BASE64", "root hash is not canonical base64")
        return cls(origin, int(size_line), root_hash, tuple(extensions))


def sign_checkpoint(checkpoint: Checkpoint, signer: NoteSigner) -> bytes:
    """The signed note for ``checkpoint``; the signer's key name must equal its origin."""
    if signer.name != checkpoint.origin:
        raise ValueError(f"key name {signer.name!r} differs from origin {checkpoint.origin!r}")
    return sign_note(checkpoint.to_body(), [signer])


def verify_checkpoint(
    note: bytes, verifier: NoteVerifier, *, origin: str | None = None
) -> Checkpoint:
    """Verify a signed checkpoint note from the log key ``verifier`` and parse it.

    ``origin`` defaults to the verifier's key name. Raises :class:`NoteError`.
    """
    checkpoint = Checkpoint.from_body(open_note(note, [verifier]))
    expected = verifier.name if origin is None else origin
    if checkpoint.origin != expected:
        raise NoteError("ORIGIN_MISMATCH", f"origin {checkpoint.origin!r}, expected {expected!r}")
    return checkpoint
