"""Two-party FROST signing state machines: validity, identifiable abort, nonce hygiene."""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl import bindings as na

from mobilesign.twoparty import (
    Cosigned,
    CosignerKeyGen,
    CosignerSigner,
    KeyPackage,
    PhoneKeyGen,
    PhoneSigner,
    ProtocolError,
    Reason,
    Scheme,
    SignatureReport,
    SignResponse,
    _signing,
)

ORDER = 2**252 + 27742317777372353535851937790883648493
IDENTITY = b"\x01" + bytes(31)
ORDER8 = bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05")
# A point of the prime-order subgroup plus one of order 8: on the curve, not of small order,
# outside the subgroup (only the [L]P check refuses it).
MIXED = na.crypto_core_ed25519_add(
    na.crypto_scalarmult_ed25519_base_noclamp((7).to_bytes(32, "little")), ORDER8
)


def drbg(seed: bytes) -> Callable[[int], bytes]:
    counter = 0

    def source(n: int) -> bytes:
        nonlocal counter
        counter += 1
        return hashlib.shake_256(seed + counter.to_bytes(8, "big")).digest(n)

    return source


def run_dkg(phone_seed: bytes | None = None, cosigner_seed: bytes | None = None) -> Keys:
    phone = PhoneKeyGen(random=drbg(phone_seed) if phone_seed else secrets.token_bytes)
    cosigner = CosignerKeyGen(random=drbg(cosigner_seed) if cosigner_seed else secrets.token_bytes)
    c2 = cosigner.receive_round2(phone.receive_round1(cosigner.receive_round1(phone.start())))
    confirm, phone_kp = phone.receive_round2(c2)
    return Keys(phone_kp, cosigner.receive_confirm(confirm))


@dataclasses.dataclass(frozen=True)
class Keys:
    phone: KeyPackage
    cosigner: KeyPackage

    def signers(self, **kwargs: Any) -> tuple[PhoneSigner, CosignerSigner]:
        return PhoneSigner(self.phone, **kwargs), CosignerSigner(self.cosigner, **kwargs)


@pytest.fixture(scope="module")
def keys() -> Keys:
    return run_dkg()


def openssl_verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except InvalidSignature:
        return False
    return True


def sign(phone: PhoneSigner, cosigner: CosignerSigner, message: bytes) -> Cosigned:
    report = phone.receive_response(cosigner.receive_request(phone.request(message)))
    return cosigner.receive_report(report)


def expect(reason: Reason, culprit: int | None, call: Callable[[], Any]) -> ProtocolError:
    with pytest.raises(ProtocolError) as e:
        call()
    assert e.value.reason is reason, str(e.value)
    assert e.value.culprit == culprit, str(e.value)
    return e.value


def point(k: int | None = None) -> bytes:
    k = k if k is not None else secrets.randbelow(ORDER - 1) + 1
    return bytes(na.crypto_scalarmult_ed25519_base_noclamp(k.to_bytes(32, "little")))


def add(scalar: bytes, k: int) -> bytes:
    return ((int.from_bytes(scalar, "little") + k) % ORDER).to_bytes(32, "little")


# --- Valid signatures --------------------------------------------------------------------


def test_many_signatures_in_one_session(keys: Keys) -> None:
    phone, cosigner = keys.signers()
    for i in range(20):
        message = b"service record %d" % i
        event = sign(phone, cosigner, message)
        assert event.message == message
        assert openssl_verify(keys.phone.group_public_key, message, event.signature)
        assert not phone.pending
        assert not cosigner.pending


@settings(max_examples=30, deadline=None)
@given(
    phone_seed=st.binary(min_size=16, max_size=16),
    cosigner_seed=st.binary(min_size=16, max_size=16),
    messages=st.lists(st.binary(max_size=300), min_size=1, max_size=4),
)
def test_random_keys_and_messages_verify_under_openssl(
    phone_seed: bytes, cosigner_seed: bytes, messages: list[bytes]
) -> None:
    keys = run_dkg(phone_seed, cosigner_seed)
    phone, cosigner = keys.signers()
    for message in messages:
        event = sign(phone, cosigner, message)
        assert event.message == message
        assert openssl_verify(keys.cosigner.group_public_key, message, event.signature)
        assert not openssl_verify(keys.cosigner.group_public_key, message + b"!", event.signature)


# --- Tampering and identifiable abort --------------------------------------------------

IN_FLIGHT = [
    "response_share",
    "response_hiding",
    "response_binding",
    "request_hiding",
    "request_binding",
    "request_message",
]


@settings(max_examples=50, deadline=None)
@given(target=st.sampled_from(IN_FLIGHT), k=st.integers(1, ORDER - 1), extra=st.binary(min_size=1))
def test_tampering_blames_the_cosigner(keys: Keys, target: str, k: int, extra: bytes) -> None:
    """Whatever changes between the phone's request and its check, the phone names 2."""
    phone, cosigner = keys.signers()
    request = phone.request(b"pay 10 EUR")
    if target == "request_hiding":
        request = dataclasses.replace(request, hiding_commitment=point(k))
    elif target == "request_binding":
        request = dataclasses.replace(request, binding_commitment=point(k))
    elif target == "request_message":
        request = dataclasses.replace(request, message=request.message + extra)
    response = cosigner.receive_request(request)
    if target == "response_share":
        response = dataclasses.replace(response, signature_share=add(response.signature_share, k))
    elif target == "response_hiding":
        response = dataclasses.replace(response, hiding_commitment=point(k))
    elif target == "response_binding":
        response = dataclasses.replace(response, binding_commitment=point(k))
    expect(Reason.INVALID_SIGNATURE_SHARE, 2, lambda: phone.receive_response(response))
    assert not phone.pending


@settings(max_examples=30, deadline=None)
@given(part=st.sampled_from(["r", "z"]), k=st.integers(1, ORDER - 1))
def test_tampered_report_blames_the_phone(keys: Keys, part: str, k: int) -> None:
    phone, cosigner = keys.signers()
    report = phone.receive_response(cosigner.receive_request(phone.request(b"record")))
    r, z = report.signature[:32], report.signature[32:]
    forged = (point(k) + z) if part == "r" else (r + add(z, k))
    expect(Reason.INVALID_SIGNATURE, 1, lambda: cosigner.receive_report(SignatureReport(forged)))
    assert not cosigner.pending


def test_report_of_another_valid_signature_is_refused(keys: Keys) -> None:
    """A valid signature on the same message, but not the one this cosigner helped make."""
    phone, cosigner = keys.signers()
    other = sign(*keys.signers(), b"same message").signature
    phone.receive_response(cosigner.receive_request(phone.request(b"same message")))
    expect(Reason.INVALID_SIGNATURE, 1, lambda: cosigner.receive_report(SignatureReport(other)))


@pytest.mark.parametrize(
    ("field", "bad", "reason"),
    [
        ("signature_share", ORDER.to_bytes(32, "little"), Reason.NON_CANONICAL_SCALAR),
        ("signature_share", (2**256 - 1).to_bytes(32, "little"), Reason.NON_CANONICAL_SCALAR),
        ("signature_share", bytes(33), Reason.MALFORMED_MESSAGE),
        ("hiding_commitment", IDENTITY, Reason.IDENTITY_ELEMENT),
        ("hiding_commitment", ORDER8, Reason.INVALID_ELEMENT),
        ("binding_commitment", (2**255 - 19 + 3).to_bytes(32, "little"), Reason.INVALID_ELEMENT),
        ("binding_commitment", (2).to_bytes(32, "little"), Reason.INVALID_ELEMENT),
        ("binding_commitment", b"", Reason.MALFORMED_MESSAGE),
        ("hiding_commitment", None, Reason.MALFORMED_MESSAGE),
    ],
)
def test_malformed_response(keys: Keys, field: str, bad: Any, reason: Reason) -> None:
    phone, cosigner = keys.signers()
    response = cosigner.receive_request(phone.request(b"m"))
    tampered = dataclasses.replace(response, **{field: bad})
    expect(reason, 2, lambda: phone.receive_response(tampered))
    assert not phone.pending


@pytest.mark.parametrize(
    ("field", "bad", "reason"),
    [
        ("hiding_commitment", IDENTITY, Reason.IDENTITY_ELEMENT),
        ("hiding_commitment", bytes(32), Reason.INVALID_ELEMENT),
        ("binding_commitment", ORDER8, Reason.INVALID_ELEMENT),
        ("binding_commitment", IDENTITY, Reason.IDENTITY_ELEMENT),
        ("binding_commitment", bytes(32), Reason.INVALID_ELEMENT),
        ("binding_commitment", (2**255 - 19 + 3).to_bytes(32, "little"), Reason.INVALID_ELEMENT),
        ("binding_commitment", (2).to_bytes(32, "little"), Reason.INVALID_ELEMENT),
        ("binding_commitment", MIXED, Reason.INVALID_ELEMENT),
        ("hiding_commitment", MIXED, Reason.INVALID_ELEMENT),
        ("binding_commitment", point()[:16], Reason.MALFORMED_MESSAGE),
        ("message", "text", Reason.MALFORMED_MESSAGE),
    ],
)
def test_malformed_request(keys: Keys, field: str, bad: Any, reason: Reason) -> None:
    phone, cosigner = keys.signers()
    tampered = dataclasses.replace(phone.request(b"m"), **{field: bad})
    expect(reason, 1, lambda: cosigner.receive_request(tampered))
    assert not cosigner.pending


def test_a_refused_request_leaves_no_trace(keys: Keys) -> None:
    """The binding commitment is validated by its multiplication: a request refused there
    must not have been remembered, so the same hiding commitment with a valid binding one
    is still answered (and then, once, remembered)."""
    phone, cosigner = keys.signers()
    request = phone.request(b"m")
    tampered = dataclasses.replace(request, binding_commitment=MIXED)
    expect(Reason.INVALID_ELEMENT, 1, lambda: cosigner.receive_request(tampered))
    phone.receive_response(cosigner.receive_request(request))


@pytest.mark.parametrize("signature", [b"", bytes(63), bytes(65), "x" * 64, None])
def test_malformed_report(keys: Keys, signature: object) -> None:
    phone, cosigner = keys.signers()
    phone.receive_response(cosigner.receive_request(phone.request(b"m")))
    report = SignatureReport(signature)  # type: ignore[arg-type]
    expect(Reason.MALFORMED_MESSAGE, 1, lambda: cosigner.receive_report(report))
    assert not cosigner.pending


def test_wrong_message_types(keys: Keys) -> None:
    phone, cosigner = keys.signers()
    request = phone.request(b"m")
    wrong: Any = SignatureReport(bytes(64))
    expect(Reason.MALFORMED_MESSAGE, 1, lambda: cosigner.receive_request(wrong))
    expect(Reason.MALFORMED_MESSAGE, 2, lambda: phone.receive_response(wrong))
    expect(Reason.MALFORMED_MESSAGE, None, lambda: phone.request("text"))  # type: ignore[arg-type]
    cosigner.receive_request(dataclasses.replace(request, hiding_commitment=point()))
    expect(Reason.MALFORMED_MESSAGE, 1, lambda: cosigner.receive_report(request))  # type: ignore[arg-type]


# --- Order, repetition, replay -------------------------------------------------------------


def test_out_of_order_and_repeated_input(keys: Keys) -> None:
    phone, cosigner = keys.signers()
    response_from_nowhere = SignResponse(point(), point(), bytes(32))
    expect(Reason.UNEXPECTED_MESSAGE, 2, lambda: phone.receive_response(response_from_nowhere))
    expect(
        Reason.UNEXPECTED_MESSAGE, 1, lambda: cosigner.receive_report(SignatureReport(bytes(64)))
    )

    request = phone.request(b"one")
    response = cosigner.receive_request(request)
    report = phone.receive_response(response)
    expect(Reason.UNEXPECTED_MESSAGE, 2, lambda: phone.receive_response(response))  # second
    cosigner.receive_report(report)
    expect(Reason.UNEXPECTED_MESSAGE, 1, lambda: cosigner.receive_report(report))  # repeated
    expect(Reason.REPLAYED_MESSAGE, 1, lambda: cosigner.receive_request(request))  # replayed

    # A stale response replayed into the next signature fails the share check.
    phone.request(b"two")
    expect(Reason.INVALID_SIGNATURE_SHARE, 2, lambda: phone.receive_response(response))


def test_new_request_while_pending_aborts(keys: Keys) -> None:
    phone, cosigner = keys.signers()
    request = phone.request(b"one")
    expect(Reason.UNEXPECTED_MESSAGE, None, lambda: phone.request(b"two"))
    assert not phone.pending
    cosigner.receive_request(request)
    second = PhoneSigner(keys.phone).request(b"three")
    expect(Reason.UNEXPECTED_MESSAGE, 1, lambda: cosigner.receive_request(second))
    assert not cosigner.pending  # the earlier signature is over: no report will be accepted
    expect(
        Reason.UNEXPECTED_MESSAGE, 1, lambda: cosigner.receive_report(SignatureReport(bytes(64)))
    )


def test_signers_refuse_the_wrong_key(keys: Keys) -> None:
    expect(Reason.INVALID_KEY_PACKAGE, None, lambda: PhoneSigner(keys.cosigner))
    expect(Reason.INVALID_KEY_PACKAGE, None, lambda: CosignerSigner(keys.phone))
    assert PhoneSigner(keys.phone).key_package.scheme is Scheme.FROST_ED25519_SHA512


# --- Nonces --------------------------------------------------------------------------------


class Recorder:
    """A random source that records everything it hands out."""

    def __init__(self) -> None:
        self.outputs: list[bytes] = []

    def __call__(self, n: int) -> bytes:
        self.outputs.append(secrets.token_bytes(n))
        return self.outputs[-1]


def test_nonces_never_repeat(keys: Keys) -> None:
    phone_rng, cosigner_rng = Recorder(), Recorder()
    phone = PhoneSigner(keys.phone, random=phone_rng)
    cosigner = CosignerSigner(keys.cosigner, random=cosigner_rng)
    commitments: list[bytes] = []
    rounds = 100
    for i in range(rounds):
        request = phone.request(b"%d" % (i % 3))  # messages repeat; nonces must not
        response = cosigner.receive_request(request)
        commitments += [request.hiding_commitment, request.binding_commitment]
        commitments += [response.hiding_commitment, response.binding_commitment]
        cosigner.receive_report(phone.receive_response(response))
    assert len(set(commitments)) == len(commitments) == 4 * rounds
    # Exactly one fresh 32-byte draw per nonce (RFC 9591 nonce_generate), never reused.
    for rng in (phone_rng, cosigner_rng):
        assert len(rng.outputs) == 2 * rounds
        assert all(len(o) == 32 for o in rng.outputs)
        assert len(set(rng.outputs)) == len(rng.outputs)


def test_stuck_random_source_is_refused(keys: Keys) -> None:
    """Hedging cannot save a constant source: equal nonces would leak the share, so refuse."""

    def constant(n: int) -> bytes:
        return bytes(n)

    phone = PhoneSigner(keys.phone, random=constant)
    cosigner = CosignerSigner(keys.cosigner)
    sign(phone, cosigner, b"first")
    expect(Reason.NONCE_REUSE, 1, lambda: phone.request(b"second"))
    assert not phone.pending

    phone = PhoneSigner(keys.phone)
    cosigner = CosignerSigner(keys.cosigner, random=constant)
    sign(phone, cosigner, b"first")
    expect(Reason.NONCE_REUSE, 2, lambda: cosigner.receive_request(phone.request(b"second")))
    assert not cosigner.pending


@pytest.fixture
def held(monkeypatch: pytest.MonkeyPatch) -> list[bytearray]:
    """Every nonce buffer the signers create."""
    buffers: list[bytearray] = []

    def hold(value: bytes) -> bytearray:
        buffers.append(bytearray(value))
        return buffers[-1]

    monkeypatch.setattr(_signing, "hold", hold)
    return buffers


def all_zero(buffers: list[bytearray]) -> bool:
    return all(not any(b) for b in buffers)


def test_nonces_wiped_after_success(keys: Keys, held: list[bytearray]) -> None:
    phone, cosigner = keys.signers()
    request = phone.request(b"m")
    assert len(held) == 1
    assert not all_zero(held)
    response = cosigner.receive_request(request)
    assert len(held) == 2
    assert all_zero(held[1:])  # the cosigner's, wiped before its response left
    assert not all_zero(held[:1])  # the phone's, still needed
    cosigner.receive_report(phone.receive_response(response))
    assert all_zero(held)
    assert not phone.pending


@pytest.mark.parametrize("how", ["error", "abort", "second_request"])
def test_phone_nonces_wiped_on_failure(keys: Keys, held: list[bytearray], how: str) -> None:
    phone, cosigner = keys.signers()
    response = cosigner.receive_request(phone.request(b"m"))
    if how == "error":
        bad = dataclasses.replace(response, signature_share=add(response.signature_share, 1))
        expect(Reason.INVALID_SIGNATURE_SHARE, 2, lambda: phone.receive_response(bad))
    elif how == "abort":
        phone.abort()
    else:
        expect(Reason.UNEXPECTED_MESSAGE, None, lambda: phone.request(b"again"))
    assert all_zero(held)
    assert not phone.pending
    expect(Reason.UNEXPECTED_MESSAGE, 2, lambda: phone.receive_response(response))


def test_cosigner_nonces_wiped_when_signing_fails(
    keys: Keys, held: list[bytearray], monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_context(*args: object) -> object:
        raise ProtocolError(Reason.IDENTITY_ELEMENT)

    phone, cosigner = keys.signers()
    request = phone.request(b"m")
    monkeypatch.setattr(_signing, "signing_context", failing_context)
    expect(Reason.IDENTITY_ELEMENT, 1, lambda: cosigner.receive_request(request))
    assert len(held) == 2  # the phone's (still pending) and the cosigner's
    assert all_zero(held[1:])
    assert not cosigner.pending


def test_nothing_secret_in_errors_or_reprs(keys: Keys) -> None:
    phone, cosigner = keys.signers()
    request = phone.request(b"m")
    assert phone._pending is not None
    nonces = bytes(phone._pending.nonces)
    response = cosigner.receive_request(request)
    bad = dataclasses.replace(response, signature_share=add(response.signature_share, 1))
    err = expect(Reason.INVALID_SIGNATURE_SHARE, 2, lambda: phone.receive_response(bad))
    text = str(err) + repr(err)
    for secret in (nonces[:32], nonces[32:], keys.phone.signing_share, keys.cosigner.signing_share):
        assert secret.hex() not in text
        assert repr(secret) not in text
    assert keys.phone.signing_share.hex() not in repr(keys.phone)


# --- Key package storage --------------------------------------------------------------------


def test_key_package_round_trip(keys: Keys) -> None:
    for kp in (keys.phone, keys.cosigner):
        data = kp.to_bytes()
        assert data[:4] == b"2PKP"
        assert data[4] == 1
        assert len(data) == 4 + 2 + len(Scheme.FROST_ED25519_SHA512.value) + 2 + 4 * 32
        assert KeyPackage.from_bytes(data) == kp
    restored = (
        KeyPackage.from_bytes(keys.phone.to_bytes()),
        KeyPackage.from_bytes(keys.cosigner.to_bytes()),
    )
    event = sign(PhoneSigner(restored[0]), CosignerSigner(restored[1]), b"after restore")
    assert openssl_verify(keys.phone.group_public_key, b"after restore", event.signature)


@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_corrupted_key_package_is_rejected(keys: Keys, data: st.DataObject) -> None:
    original = keys.phone.to_bytes()
    position = data.draw(st.integers(0, len(original) - 1))
    flip = data.draw(st.integers(1, 255))
    corrupted = bytearray(original)
    corrupted[position] ^= flip
    expect(Reason.INVALID_KEY_PACKAGE, None, lambda: KeyPackage.from_bytes(bytes(corrupted)))


@pytest.mark.parametrize("cut", [0, 3, 6, 20, -1])
def test_truncated_or_extended_key_package_is_rejected(keys: Keys, cut: int) -> None:
    data = keys.cosigner.to_bytes()
    wrong_type: Any = bytearray(data)
    for bad in (data[:cut], data + b"\x00", wrong_type):
        with pytest.raises(ProtocolError) as e:
            KeyPackage.from_bytes(bad)
        assert e.value.reason is Reason.INVALID_KEY_PACKAGE


def test_inconsistent_key_package_fields_are_rejected(keys: Keys) -> None:
    kp = keys.phone
    other = run_dkg().phone
    changes: dict[str, Any]
    for changes in (
        {"identifier": 3},
        {"identifier": 2},
        {"scheme": "SM2-2P-v1"},
        {"signing_share": other.signing_share},
        {"verifying_share": other.verifying_share},
        {"peer_verifying_share": other.peer_verifying_share},
        {"group_public_key": other.group_public_key},
        {"group_public_key": IDENTITY},
        {"signing_share": ORDER.to_bytes(32, "little")},
    ):
        with pytest.raises(ProtocolError) as e:
            dataclasses.replace(kp, **changes)
        assert e.value.reason is Reason.INVALID_KEY_PACKAGE
        assert e.value.culprit is None
