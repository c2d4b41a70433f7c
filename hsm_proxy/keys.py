"""Key operations inside the token. Every function here blocks and takes a PKCS#11 session:
they run on the session pool's worker threads only.

Key objects carry ``CKA_LABEL = "<purpose>:<label>"`` and ``CKA_ID`` = 16 random bytes shared by
the public and private halves, so purpose and label live in the token itself and survive restarts
without a second store to keep consistent.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TypeVar

import pkcs11
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from pkcs11 import MGF, Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11 import exceptions as p11e
from pkcs11.types import DecryptMixin, EncryptMixin, PublicKey, SecretKey, SignMixin
from pkcs11.util.ec import encode_ec_public_key, encode_named_curve_parameters

from hsm_proxy import handles, oaep
from hsm_proxy.errors import HsmProxyError
from mobilesign import domains, ids
from mobilesign.errors import Kind

_KEY_ID_BYTES = 16
DIGEST_BYTES = 32
MAX_SEAL_BYTES = 4096
_SEAL_VERSION = b"\x01"
_GCM_IV_BYTES = 12
_GCM_TAG_BYTES = 16
# DER DigestInfo header for SHA-256 (RFC 8017 section 9.2, note 1).
_SHA256_DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")


class Purpose(enum.Enum):
    """What a key pair is for."""

    ORGANISATION = "organisation"
    CA = "ca"
    TICKET = "ticket"  # the RA's enrolment-ticket key
    LOG = "log"
    GRANT = "grant"  # the RA's grant key


class Algorithm(enum.Enum):
    """Type and size of a key pair."""

    EC_P256 = "ec-p256"
    RSA_2048 = "rsa-2048"
    RSA_3072 = "rsa-3072"


class SignMechanism(enum.Enum):
    """Signature schemes over a SHA-256 digest."""

    ECDSA_SHA256 = "ecdsa-sha256"
    RSA_PKCS1V15_SHA256 = "rsa-pkcs1v15-sha256"
    RSA_PSS_SHA256 = "rsa-pss-sha256"


@dataclass(frozen=True)
class KeyRecord:
    """A key pair held in the token, as callers see it."""

    key_id: bytes
    label: str
    purpose: Purpose
    algorithm: Algorithm
    spki: bytes


def parse_key_id(text: str) -> bytes:
    """Decode a key id (32 lowercase hex digits, one spelling per key) or refuse it."""
    return bytes.fromhex(
        ids.ORGANISATION_KEY_ID.check(
            text, reason="MALFORMED_KEY_ID", message="a key id is 32 hexadecimal digits"
        )
    )


def _public_spki(public: PublicKey) -> tuple[Algorithm, bytes]:
    if public.key_type == KeyType.EC:
        spki = encode_ec_public_key(public)
        key = serialization.load_der_public_key(spki)
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
            raise HsmProxyError(Kind.INTERNAL, "UNSUPPORTED_KEY", "unexpected curve")
        return Algorithm.EC_P256, spki
    if public.key_type == KeyType.RSA:
        n = int.from_bytes(public[Attribute.MODULUS], "big")
        e = int.from_bytes(public[Attribute.PUBLIC_EXPONENT], "big")
        rsa_key = rsa.RSAPublicNumbers(e, n).public_key()
        algorithm = {2048: Algorithm.RSA_2048, 3072: Algorithm.RSA_3072}.get(rsa_key.key_size)
        if algorithm is None:
            raise HsmProxyError(Kind.INTERNAL, "UNSUPPORTED_KEY", "unexpected size")
        return algorithm, rsa_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    raise HsmProxyError(Kind.INTERNAL, "UNSUPPORTED_KEY", "unexpected key type")


def _record(public: PublicKey) -> KeyRecord | None:
    purpose_text, _, label = str(public[Attribute.LABEL]).partition(":")
    try:
        purpose = Purpose(purpose_text)
    except ValueError:
        return None  # not one of ours (e.g. a sealing key or a foreign object)
    algorithm, spki = _public_spki(public)
    return KeyRecord(bytes(public[Attribute.ID]), label, purpose, algorithm, spki)


def generate(
    session: pkcs11.Session, label: str, purpose: Purpose, algorithm: Algorithm
) -> KeyRecord:
    """Generate a non-extractable key pair in the token; labels are unique per purpose."""
    ids.KEY_LABEL.check(label)
    token_label = f"{purpose.value}:{label}"
    if any(True for _ in session.get_objects({Attribute.LABEL: token_label})):
        raise HsmProxyError(
            Kind.CONFLICT,
            "LABEL_IN_USE",
            f"a {purpose.value} key is labelled {label}",
        )
    if purpose is not Purpose.ORGANISATION or algorithm is Algorithm.EC_P256:
        capabilities = MechanismFlag.SIGN | MechanismFlag.VERIFY
    else:
        capabilities = (
            MechanismFlag.SIGN
            | MechanismFlag.VERIFY
            | MechanismFlag.DECRYPT
            | MechanismFlag.ENCRYPT
        )
    key_id = os.urandom(_KEY_ID_BYTES)
    private_template = {
        Attribute.TOKEN: True,
        Attribute.PRIVATE: True,
        Attribute.SENSITIVE: True,
        Attribute.EXTRACTABLE: False,
    }
    if algorithm is Algorithm.EC_P256:
        params = session.create_domain_parameters(
            KeyType.EC,
            {Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")},
            local=True,
        )
        public, _ = params.generate_keypair(
            id=key_id,
            label=token_label,
            store=True,
            capabilities=capabilities,
            private_template=private_template,
        )
    else:
        bits = 2048 if algorithm is Algorithm.RSA_2048 else 3072
        public, _ = session.generate_keypair(
            KeyType.RSA,
            bits,
            id=key_id,
            label=token_label,
            store=True,
            capabilities=capabilities,
            private_template=private_template,
            public_template={Attribute.PUBLIC_EXPONENT: b"\x01\x00\x01"},
        )
    record = _record(public)
    assert record is not None
    return record


def ensure(
    session: pkcs11.Session, label: str, purpose: Purpose, algorithm: Algorithm
) -> KeyRecord:
    """The key pair of this purpose and label, generated when the token has none (run where
    no other caller can generate the same key at once, such as at start-up)."""
    for record in list_keys(session, purpose):
        if record.label == label:
            return record
    return generate(session, label, purpose, algorithm)


def list_keys(session: pkcs11.Session, purpose: Purpose | None) -> list[KeyRecord]:
    """Every key pair of ours in the token, optionally of one purpose, by purpose and label."""
    records = [
        r
        for obj in session.get_objects({Attribute.CLASS: ObjectClass.PUBLIC_KEY})
        if isinstance(obj, PublicKey)
        and (r := _record(obj)) is not None
        and (purpose is None or r.purpose is purpose)
    ]
    return sorted(records, key=lambda r: (r.purpose.value, r.label))


_M = TypeVar("_M")


def _find(session: pkcs11.Session, key_id: bytes, cls: ObjectClass, kind: type[_M]) -> _M:
    def lookup() -> pkcs11.Object | None:
        try:
            return session.get_key(object_class=cls, id=key_id)
        except (p11e.NoSuchKey, p11e.MultipleObjectsReturned):
            return None

    held = handles.kept(session, ("key", cls, key_id), lookup)
    if held is None or held[1] != key_id or not isinstance(held[0], kind):
        raise HsmProxyError(Kind.NOT_FOUND, "KEY_NOT_FOUND", "no such key")
    return held[0]


def describe(session: pkcs11.Session, key_id: bytes) -> KeyRecord:
    """The record of one key pair."""
    record = _record(_find(session, key_id, ObjectClass.PUBLIC_KEY, PublicKey))
    if record is None:
        raise HsmProxyError(Kind.NOT_FOUND, "KEY_NOT_FOUND", "no such key")
    return record


def sign_digest(
    session: pkcs11.Session, record: KeyRecord, mechanism: SignMechanism, digest: bytes
) -> bytes:
    """Sign a SHA-256 digest with the key ``record`` describes; the mechanism must suit the key
    (checked before the token is)."""
    if len(digest) != DIGEST_BYTES:
        raise HsmProxyError(
            Kind.INVALID, "DIGEST_LENGTH", f"a SHA-256 digest is {DIGEST_BYTES} bytes"
        )
    key_id = record.key_id
    is_ec = record.algorithm is Algorithm.EC_P256
    if is_ec != (mechanism is SignMechanism.ECDSA_SHA256):
        raise HsmProxyError(
            Kind.PRECONDITION,
            "MECHANISM_NOT_ALLOWED",
            f"{mechanism.value} cannot be used with a {record.algorithm.value} key",
        )
    private = _find(session, key_id, ObjectClass.PRIVATE_KEY, SignMixin)
    if mechanism is SignMechanism.ECDSA_SHA256:
        raw = private.sign(digest, mechanism=Mechanism.ECDSA)
        half = len(raw) // 2
        return encode_dss_signature(
            int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big")
        )
    if mechanism is SignMechanism.RSA_PKCS1V15_SHA256:
        return bytes(private.sign(_SHA256_DIGEST_INFO + digest, mechanism=Mechanism.RSA_PKCS))
    return bytes(
        private.sign(
            digest,
            mechanism=Mechanism.RSA_PKCS_PSS,
            mechanism_param=(Mechanism.SHA256, MGF.SHA256, DIGEST_BYTES),
        )
    )


def check_decryptable(record: KeyRecord, ciphertext: bytes) -> None:
    """Refuse keys that do not decrypt and ciphertexts of the wrong size for the key."""
    if record.algorithm is Algorithm.EC_P256 or record.purpose is not Purpose.ORGANISATION:
        raise HsmProxyError(
            Kind.PRECONDITION,
            "MECHANISM_NOT_ALLOWED",
            "only RSA organisation keys decrypt",
        )
    size = 256 if record.algorithm is Algorithm.RSA_2048 else 384
    if len(ciphertext) != size:
        raise HsmProxyError(
            Kind.INVALID, "CIPHERTEXT_LENGTH", f"the ciphertext must be {size} bytes for this key"
        )


def decrypt_oaep(session: pkcs11.Session, record: KeyRecord, ciphertext: bytes) -> bytes:
    """Decrypt RSA-OAEP (SHA-256) with the organisation key ``record`` describes."""
    check_decryptable(record, ciphertext)
    key_id = record.key_id
    size = len(ciphertext)
    private = _find(session, key_id, ObjectClass.PRIVATE_KEY, DecryptMixin)
    failed = HsmProxyError(Kind.INVALID, "DECRYPTION_FAILED", "the ciphertext does not decrypt")
    if _native_oaep_sha256:
        try:
            return _output(
                private.decrypt(
                    ciphertext,
                    mechanism=Mechanism.RSA_PKCS_OAEP,
                    mechanism_param=(Mechanism.SHA256, MGF.SHA256, None),
                )
            )
        except (p11e.ArgumentsBad, p11e.MechanismParamInvalid):
            _disable_native_oaep()
        except (p11e.EncryptedDataInvalid, p11e.EncryptedDataLenRange, p11e.DataInvalid):
            raise failed from None
    try:
        raw = _output(private.decrypt(ciphertext, mechanism=Mechanism.RSA_X_509))
        return oaep.decode(raw.rjust(size, b"\x00"), size)
    except (
        p11e.EncryptedDataInvalid,
        p11e.EncryptedDataLenRange,
        p11e.DataInvalid,
        oaep.OaepError,
    ):
        raise failed from None


# The module's OAEP is tried first; SoftHSM 2.6 refuses SHA-256 parameters, and then the token
# does raw RSA and the padding is removed by `oaep` (the key still never leaves the token).
_native_oaep_sha256 = True


def _disable_native_oaep() -> None:
    global _native_oaep_sha256
    _native_oaep_sha256 = False


def _sealing_key(
    session: pkcs11.Session, caller: str, key_id: bytes | None = None
) -> tuple[SecretKey, bytes] | None:
    """The caller's sealing key and its id: the one with ``key_id`` when given (a blob names
    the key it was sealed with), else the first by id."""
    template = {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: f"seal:{caller}"}
    if key_id is not None:
        template[Attribute.ID] = key_id

    def lookup() -> pkcs11.Object | None:
        found = sorted(
            (k for k in session.get_objects(template) if isinstance(k, SecretKey)),
            key=handles.object_id,
        )
        return found[0] if found else None

    held = handles.kept(session, ("seal", caller, key_id), lookup)
    if held is None or not isinstance(held[0], SecretKey):
        return None
    return held[0], held[1]


def ensure_sealing_key(session: pkcs11.Session, caller: str) -> None:
    """Create the caller's AES-256 sealing key when the token has none. Run at start-up, before
    any caller can seal, so that concurrent first seals never create two."""
    if _sealing_key(session, caller) is not None:
        return
    session.generate_key(
        KeyType.AES,
        256,
        id=os.urandom(_KEY_ID_BYTES),
        label=f"seal:{caller}",
        store=True,
        capabilities=MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT,
        template={Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False, Attribute.PRIVATE: True},
    )


def _capable(key: object, capability: type[_M]) -> _M:
    # python-pkcs11 builds key classes at run time from the key's capabilities.
    if not isinstance(key, capability):
        raise HsmProxyError(Kind.INTERNAL, "UNSUPPORTED_KEY", "sealing key unusable")
    return key


def _output(result: bytes | Iterator[bytes]) -> bytes:
    # python-pkcs11 returns an iterator only for iterator input, which is never passed here.
    if not isinstance(result, bytes):
        raise TypeError("unexpected streaming result")
    return result


def _seal_aad(caller: str, associated_data: bytes) -> bytes:
    # Binds the blob to its owner as well as to the caller's context.
    return domains.HSM_SEAL_AAD + caller.encode() + b"\x00" + associated_data


def seal(session: pkcs11.Session, caller: str, plaintext: bytes, associated_data: bytes) -> bytes:
    """AES-256-GCM under the caller's sealing key: version || key id || IV || ciphertext+tag."""
    if not plaintext or len(plaintext) > MAX_SEAL_BYTES:
        raise HsmProxyError(
            Kind.INVALID, "PLAINTEXT_LENGTH", f"a sealed secret is 1 to {MAX_SEAL_BYTES} bytes"
        )
    held = _sealing_key(session, caller)
    if held is None:
        raise HsmProxyError(Kind.INTERNAL, "UNSUPPORTED_KEY", "no sealing key")
    key, key_id = held
    encryptor = _capable(key, EncryptMixin)
    iv = os.urandom(_GCM_IV_BYTES)
    ciphertext = encryptor.encrypt(
        plaintext,
        mechanism=Mechanism.AES_GCM,
        mechanism_param=pkcs11.GCMParams(iv, _seal_aad(caller, associated_data), 128),
    )
    return _SEAL_VERSION + key_id + iv + _output(ciphertext)


def unseal(session: pkcs11.Session, caller: str, sealed: bytes, associated_data: bytes) -> bytes:
    """Open a blob made by :func:`seal` for the same caller and associated data."""
    header = 1 + _KEY_ID_BYTES + _GCM_IV_BYTES
    refused = HsmProxyError(Kind.INVALID, "SEALED_BLOB_INVALID", "the sealed blob does not open")
    if len(sealed) < header + _GCM_TAG_BYTES + 1 or sealed[:1] != _SEAL_VERSION:
        raise refused
    if len(sealed) > header + _GCM_TAG_BYTES + MAX_SEAL_BYTES:
        raise refused
    held = _sealing_key(session, caller, sealed[1 : 1 + _KEY_ID_BYTES])
    if held is None:
        raise refused
    key = held[0]
    iv = sealed[1 + _KEY_ID_BYTES : header]
    decryptor = _capable(key, DecryptMixin)
    try:
        return _output(
            decryptor.decrypt(
                sealed[header:],
                mechanism=Mechanism.AES_GCM,
                mechanism_param=pkcs11.GCMParams(iv, _seal_aad(caller, associated_data), 128),
            )
        )
    except (
        p11e.EncryptedDataInvalid,
        p11e.EncryptedDataLenRange,
        p11e.DataInvalid,
        p11e.FunctionFailed,
        p11e.GeneralError,
    ):
        # SoftHSM reports a GCM tag mismatch as CKR_GENERAL_ERROR.
        raise refused from None
