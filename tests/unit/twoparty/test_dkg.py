"""Two-party Pedersen DKG state machines: agreement, frost-core compatibility, bad input."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import secrets
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl import bindings as na

from mobilesign.twoparty import (
    CosignerKeyGen,
    CosignerSigner,
    DkgConfirm,
    DkgRound1,
    DkgRound2,
    KeyPackage,
    PhoneKeyGen,
    PhoneSigner,
    ProtocolError,
    Reason,
    Scheme,
    _keygen,
)

ORDER = 2**252 + 27742317777372353535851937790883648493
CONTEXT = b"FROST-ED25519-SHA512-v1"
IDENTITY = b"\x01" + bytes(31)
ORDER8 = bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05")


def drbg(seed: bytes) -> Callable[[int], bytes]:
    """Deterministic random source for reproducible property tests."""
    counter = 0

    def source(n: int) -> bytes:
        nonlocal counter
        counter += 1
        return hashlib.shake_256(seed + counter.to_bytes(8, "big")).digest(n)

    return source


def point() -> bytes:
    k = (secrets.randbelow(ORDER - 1) + 1).to_bytes(32, "little")
    return bytes(na.crypto_scalarmult_ed25519_base_noclamp(k))


def add_one(scalar: bytes) -> bytes:
    return ((int.from_bytes(scalar, "little") + 1) % ORDER).to_bytes(32, "little")


def expect(reason: Reason, culprit: int | None, call: Callable[[], Any]) -> ProtocolError:
    with pytest.raises(ProtocolError) as e:
        call()
    assert e.value.reason is reason, str(e.value)
    assert e.value.culprit == culprit, str(e.value)
    return e.value


def run_dkg(
    phone: PhoneKeyGen | None = None, cosigner: CosignerKeyGen | None = None
) -> tuple[KeyPackage, KeyPackage]:
    phone = phone or PhoneKeyGen()
    cosigner = cosigner or CosignerKeyGen()
    c1 = cosigner.receive_round1(phone.start())
    c2 = cosigner.receive_round2(phone.receive_round1(c1))
    confirm, phone_kp = phone.receive_round2(c2)
    return phone_kp, cosigner.receive_confirm(confirm)


# --- Happy path --------------------------------------------------------------------------


def check_key_packages(phone_kp: KeyPackage, cosigner_kp: KeyPackage) -> None:
    assert phone_kp.identifier == 1
    assert cosigner_kp.identifier == 2
    assert phone_kp.scheme is cosigner_kp.scheme is Scheme.FROST_ED25519_SHA512
    assert phone_kp.group_public_key == cosigner_kp.group_public_key
    assert phone_kp.verifying_share == cosigner_kp.peer_verifying_share
    assert cosigner_kp.verifying_share == phone_kp.peer_verifying_share
    for kp in (phone_kp, cosigner_kp):
        assert na.crypto_scalarmult_ed25519_base_noclamp(kp.signing_share) == kp.verifying_share
    # The joint secret 2*s1 - s2 (Lagrange at 0 over {1, 2}) is the group key's logarithm.
    s1 = int.from_bytes(phone_kp.signing_share, "little")
    s2 = int.from_bytes(cosigner_kp.signing_share, "little")
    joint = ((2 * s1 - s2) % ORDER).to_bytes(32, "little")
    assert na.crypto_scalarmult_ed25519_base_noclamp(joint) == phone_kp.group_public_key


def sign_once(phone_kp: KeyPackage, cosigner_kp: KeyPackage, message: bytes) -> bytes:
    phone, cosigner = PhoneSigner(phone_kp), CosignerSigner(cosigner_kp)
    report = phone.receive_response(cosigner.receive_request(phone.request(message)))
    assert cosigner.receive_report(report).signature == report.signature
    return report.signature


def test_dkg_agrees_and_signs() -> None:
    phone_kp, cosigner_kp = run_dkg()
    check_key_packages(phone_kp, cosigner_kp)
    signature = sign_once(phone_kp, cosigner_kp, b"enrolment CSR")
    Ed25519PublicKey.from_public_bytes(phone_kp.group_public_key).verify(
        signature, b"enrolment CSR"
    )


@settings(max_examples=25, deadline=None)
@given(
    phone_seed=st.binary(min_size=16, max_size=16),
    cosigner_seed=st.binary(min_size=16, max_size=16),
)
def test_random_dkgs_agree(phone_seed: bytes, cosigner_seed: bytes) -> None:
    phone_kp, cosigner_kp = run_dkg(
        PhoneKeyGen(random=drbg(phone_seed)), CosignerKeyGen(random=drbg(cosigner_seed))
    )
    check_key_packages(phone_kp, cosigner_kp)


def test_proof_challenge_matches_frost_core_construction() -> None:
    """c = SHA-512(ctx || "dkg" || id (32-byte LE) || C_0 || R) mod L; mu*G = R + c*C_0.

    Recomputed here with hashlib and raw libsodium, independently of twoparty's code.
    """
    phone, cosigner = PhoneKeyGen(), CosignerKeyGen()
    r1_phone = phone.start()
    r1_cosigner = cosigner.receive_round1(r1_phone)
    for msg in (r1_phone, r1_cosigner):
        c0 = msg.commitment[0]
        preimage = CONTEXT + b"dkg" + msg.identifier.to_bytes(32, "little") + c0 + msg.proof_r
        c = int.from_bytes(hashlib.sha512(preimage).digest(), "little") % ORDER
        lhs = na.crypto_scalarmult_ed25519_base_noclamp(msg.proof_mu)
        rhs = na.crypto_core_ed25519_add(
            msg.proof_r, na.crypto_scalarmult_ed25519_noclamp(c.to_bytes(32, "little"), c0)
        )
        assert lhs == rhs


# --- Bad input ---------------------------------------------------------------------------


def started() -> tuple[PhoneKeyGen, CosignerKeyGen, DkgRound1]:
    phone, cosigner = PhoneKeyGen(), CosignerKeyGen()
    return phone, cosigner, phone.start()


def bad_elements() -> list[tuple[bytes, Reason]]:
    non_canonical = (2**255 - 19 + 2).to_bytes(32, "little")  # y = p + 2
    off_curve = (2).to_bytes(32, "little")  # y = 2 is not on edwards25519
    mixed = na.crypto_core_ed25519_add(point(), ORDER8)
    return [
        (IDENTITY, Reason.IDENTITY_ELEMENT),
        (non_canonical, Reason.INVALID_ELEMENT),
        (off_curve, Reason.INVALID_ELEMENT),
        (ORDER8, Reason.INVALID_ELEMENT),
        (mixed, Reason.INVALID_ELEMENT),
        (bytes(32), Reason.INVALID_ELEMENT),  # y = 0, order 4
        (point()[:31], Reason.MALFORMED_MESSAGE),
        (point() + b"\x00", Reason.MALFORMED_MESSAGE),
    ]


@pytest.mark.parametrize(("bad", "reason"), bad_elements())
@pytest.mark.parametrize("where", ["c0", "c1", "r"])
def test_round1_bad_elements(bad: bytes, reason: Reason, where: str) -> None:
    _, cosigner, r1 = started()
    if where == "r":
        tampered = dataclasses.replace(r1, proof_r=bad)
    else:
        commitment = list(r1.commitment)
        commitment[where == "c1"] = bad
        tampered = dataclasses.replace(r1, commitment=tuple(commitment))
    expect(reason, 1, lambda: cosigner.receive_round1(tampered))


@pytest.mark.parametrize(("bad", "reason"), bad_elements())
def test_phone_rejects_bad_cosigner_commitment(bad: bytes, reason: Reason) -> None:
    phone, cosigner, r1 = started()
    c1 = cosigner.receive_round1(r1)
    tampered = dataclasses.replace(c1, commitment=(bad, c1.commitment[1]))
    expect(reason, 2, lambda: phone.receive_round1(tampered))


@pytest.mark.parametrize("mu", [ORDER, 2**255 - 1])
def test_round1_non_canonical_mu(mu: int) -> None:
    _, cosigner, r1 = started()
    tampered = dataclasses.replace(r1, proof_mu=mu.to_bytes(32, "little"))
    expect(Reason.NON_CANONICAL_SCALAR, 1, lambda: cosigner.receive_round1(tampered))


@pytest.mark.parametrize("field", ["proof_mu", "proof_r", "c0"])
def test_bad_proof_of_knowledge(field: str) -> None:
    _, cosigner, r1 = started()
    if field == "proof_mu":
        tampered = dataclasses.replace(r1, proof_mu=add_one(r1.proof_mu))
    elif field == "proof_r":
        tampered = dataclasses.replace(r1, proof_r=point())
    else:  # a commitment whose logarithm the sender doesn't know
        tampered = dataclasses.replace(r1, commitment=(point(), r1.commitment[1]))
    expect(Reason.INVALID_PROOF, 1, lambda: cosigner.receive_round1(tampered))


def test_reflected_round1_fails_the_proof() -> None:
    """The cosigner echoing the phone's package as its own: the identifier is hashed in."""
    phone, _, r1 = started()
    expect(
        Reason.INVALID_PROOF,
        2,
        lambda: phone.receive_round1(dataclasses.replace(r1, identifier=2)),
    )


@pytest.mark.parametrize("identifier", [0, 2, 3, -1, True, "1", None])
def test_round1_wrong_identifier(identifier: Any) -> None:
    _, cosigner, r1 = started()
    tampered = dataclasses.replace(r1, identifier=identifier)
    expect(Reason.MALFORMED_MESSAGE, 1, lambda: cosigner.receive_round1(tampered))


@pytest.mark.parametrize("size", [0, 1, 3])
def test_round1_wrong_commitment_length(size: int) -> None:
    _, cosigner, r1 = started()
    commitment = [*r1.commitment, point()][:size]
    tampered = dataclasses.replace(r1, commitment=tuple(commitment))
    expect(Reason.MALFORMED_MESSAGE, 1, lambda: cosigner.receive_round1(tampered))


def test_round1_commitment_not_a_sequence() -> None:
    _, cosigner, r1 = started()
    joined: Any = b"".join(r1.commitment)
    tampered = dataclasses.replace(r1, commitment=joined)
    expect(Reason.MALFORMED_MESSAGE, 1, lambda: cosigner.receive_round1(tampered))


def test_inconsistent_share_from_phone() -> None:
    phone, cosigner, r1 = started()
    r2 = phone.receive_round1(cosigner.receive_round1(r1))
    tampered = DkgRound2(secret_share=add_one(r2.secret_share))
    expect(Reason.INVALID_SHARE, 1, lambda: cosigner.receive_round2(tampered))


def test_inconsistent_share_from_cosigner() -> None:
    phone, cosigner, r1 = started()
    c2 = cosigner.receive_round2(phone.receive_round1(cosigner.receive_round1(r1)))
    tampered = dataclasses.replace(c2, secret_share=add_one(c2.secret_share))
    expect(Reason.INVALID_SHARE, 2, lambda: phone.receive_round2(tampered))


@pytest.mark.parametrize(
    ("share", "reason"),
    [
        (ORDER.to_bytes(32, "little"), Reason.NON_CANONICAL_SCALAR),
        (bytes(31), Reason.MALFORMED_MESSAGE),
        ("00" * 32, Reason.MALFORMED_MESSAGE),
    ],
)
def test_malformed_share(share: object, reason: Reason) -> None:
    phone, cosigner, r1 = started()
    phone.receive_round1(cosigner.receive_round1(r1))
    msg = DkgRound2(secret_share=share)  # type: ignore[arg-type]
    expect(reason, 1, lambda: cosigner.receive_round2(msg))


def test_phone_must_not_send_group_key_in_round2() -> None:
    phone, cosigner, r1 = started()
    r2 = phone.receive_round1(cosigner.receive_round1(r1))
    tampered = dataclasses.replace(r2, group_public_key=point())
    expect(Reason.MALFORMED_MESSAGE, 1, lambda: cosigner.receive_round2(tampered))


def test_group_key_mismatch_at_phone() -> None:
    phone, cosigner, r1 = started()
    c2 = cosigner.receive_round2(phone.receive_round1(cosigner.receive_round1(r1)))
    tampered = dataclasses.replace(c2, group_public_key=point())
    expect(Reason.GROUP_KEY_MISMATCH, 2, lambda: phone.receive_round2(tampered))


@pytest.mark.parametrize(("bad", "reason"), bad_elements()[:3])
def test_cosigner_group_key_invalid(bad: bytes, reason: Reason) -> None:
    phone, cosigner, r1 = started()
    c2 = cosigner.receive_round2(phone.receive_round1(cosigner.receive_round1(r1)))
    expect(reason, 2, lambda: phone.receive_round2(dataclasses.replace(c2, group_public_key=bad)))


def test_group_key_mismatch_at_confirm() -> None:
    phone, cosigner, r1 = started()
    c2 = cosigner.receive_round2(phone.receive_round1(cosigner.receive_round1(r1)))
    phone.receive_round2(c2)
    expect(Reason.GROUP_KEY_MISMATCH, 1, lambda: cosigner.receive_confirm(DkgConfirm(point())))
    # The cosigner released nothing and is finished.
    assert cosigner._key_package is None
    expect(Reason.UNEXPECTED_MESSAGE, 1, lambda: cosigner.receive_confirm(DkgConfirm(point())))


def _provisional(cosigner: CosignerKeyGen) -> KeyPackage | None:
    # Read through a call: mypy would otherwise keep a property narrowed across the steps.
    return cosigner.provisional_key_package


def test_the_provisional_key_package_exists_only_while_awaiting_the_confirmation() -> None:
    """What the cosigner may seal ahead is the package the confirmation releases, and only
    between round two and the confirmation."""
    phone, cosigner, r1 = started()
    assert _provisional(cosigner) is None
    c1 = cosigner.receive_round1(r1)
    assert _provisional(cosigner) is None
    c2 = cosigner.receive_round2(phone.receive_round1(c1))
    provisional = _provisional(cosigner)
    assert provisional is not None
    assert provisional.group_public_key == c2.group_public_key
    confirm, _ = phone.receive_round2(c2)
    assert cosigner.receive_confirm(confirm) == provisional
    assert _provisional(cosigner) is None
    # Refused or abandoned after round two: none either.
    for end in ("mismatch", "abort"):
        phone, cosigner, r1 = started()
        cosigner.receive_round2(phone.receive_round1(cosigner.receive_round1(r1)))
        if end == "mismatch":
            confirm_wrongly = functools.partial(cosigner.receive_confirm, DkgConfirm(point()))
            expect(Reason.GROUP_KEY_MISMATCH, 1, confirm_wrongly)
        else:
            cosigner.abort()
        assert _provisional(cosigner) is None


def test_wrong_step_order() -> None:
    c1 = CosignerKeyGen().receive_round1(PhoneKeyGen().start())
    share = DkgRound2(bytes(32))
    expect(Reason.UNEXPECTED_MESSAGE, 2, lambda: PhoneKeyGen().receive_round1(c1))  # not started
    expect(Reason.UNEXPECTED_MESSAGE, 2, lambda: PhoneKeyGen().receive_round2(share))
    expect(Reason.UNEXPECTED_MESSAGE, 1, lambda: CosignerKeyGen().receive_round2(share))
    expect(
        Reason.UNEXPECTED_MESSAGE, 1, lambda: CosignerKeyGen().receive_confirm(DkgConfirm(point()))
    )
    phone = PhoneKeyGen()
    phone.start()
    expect(Reason.UNEXPECTED_MESSAGE, None, phone.start)
    expect(Reason.UNEXPECTED_MESSAGE, 2, lambda: phone.receive_round1(c1))  # failed by misuse


def test_wrong_message_types() -> None:
    wrong: Any = DkgConfirm(b"")
    _, cosigner, _ = started()
    expect(Reason.MALFORMED_MESSAGE, 1, lambda: cosigner.receive_round1(wrong))
    phone, cosigner, r1 = started()
    c1 = cosigner.receive_round1(r1)
    expect(Reason.MALFORMED_MESSAGE, 1, lambda: cosigner.receive_round2(wrong))
    phone.receive_round1(c1)
    expect(Reason.MALFORMED_MESSAGE, 2, lambda: phone.receive_round2(wrong))


def test_replayed_messages() -> None:
    _, cosigner, r1 = started()
    cosigner.receive_round1(r1)
    expect(Reason.UNEXPECTED_MESSAGE, 1, lambda: cosigner.receive_round1(r1))

    phone, cosigner, r1 = started()
    c1 = cosigner.receive_round1(r1)
    r2 = phone.receive_round1(c1)
    expect(Reason.UNEXPECTED_MESSAGE, 2, lambda: phone.receive_round1(c1))

    phone, cosigner, r1 = started()
    r2 = phone.receive_round1(cosigner.receive_round1(r1))
    c2 = cosigner.receive_round2(r2)
    expect(Reason.UNEXPECTED_MESSAGE, 1, lambda: cosigner.receive_round2(r2))

    phone, cosigner, r1 = started()
    c2 = cosigner.receive_round2(phone.receive_round1(cosigner.receive_round1(r1)))
    confirm, _ = phone.receive_round2(c2)
    expect(Reason.UNEXPECTED_MESSAGE, 2, lambda: phone.receive_round2(c2))
    cosigner.receive_confirm(confirm)
    expect(Reason.UNEXPECTED_MESSAGE, 1, lambda: cosigner.receive_confirm(confirm))


def test_failed_machine_stays_failed() -> None:
    _, cosigner, r1 = started()
    bad = dataclasses.replace(r1, identifier=3)
    expect(Reason.MALFORMED_MESSAGE, 1, lambda: cosigner.receive_round1(bad))
    expect(Reason.UNEXPECTED_MESSAGE, 1, lambda: cosigner.receive_round1(r1))


def test_scheme_is_parsed() -> None:
    unknown: Any = "FROST-ED448-SHAKE256-v1"
    expect(Reason.UNSUPPORTED_SCHEME, None, lambda: PhoneKeyGen(scheme=unknown))
    expect(Reason.UNSUPPORTED_SCHEME, None, lambda: CosignerKeyGen(scheme=b"x"))  # type: ignore[arg-type]
    known: Any = "FROST-ED25519-SHA512-v1"
    assert PhoneKeyGen(scheme=known).scheme is Scheme.FROST_ED25519_SHA512


# --- Secrets -----------------------------------------------------------------------------


@pytest.fixture
def held(monkeypatch: pytest.MonkeyPatch) -> list[bytearray]:
    """Every buffer the DKG machines create to hold a secret."""
    buffers: list[bytearray] = []

    def hold(value: bytes) -> bytearray:
        buffers.append(bytearray(value))
        return buffers[-1]

    monkeypatch.setattr(_keygen, "hold", hold)
    return buffers


def all_zero(buffers: list[bytearray]) -> bool:
    return all(not any(b) for b in buffers)


def test_secrets_wiped_after_success(held: list[bytearray]) -> None:
    phone, cosigner = PhoneKeyGen(), CosignerKeyGen()
    r1 = phone.start()
    assert len(held) == 2
    assert not all_zero(held)
    c1 = cosigner.receive_round1(r1)
    assert len(held) == 6  # + cosigner's coefficients and its two evaluations
    r2 = phone.receive_round1(c1)
    assert phone._coefficients == []
    assert all_zero(held[:2])
    c2 = cosigner.receive_round2(r2)
    confirm, _ = phone.receive_round2(c2)
    cosigner.receive_confirm(confirm)
    assert len(held) == 8
    assert all_zero(held)


@pytest.mark.parametrize("how", ["error", "abort"])
@pytest.mark.parametrize("step", [1, 2])
def test_secrets_wiped_on_failure(held: list[bytearray], how: str, step: int) -> None:
    phone, cosigner = PhoneKeyGen(), CosignerKeyGen()
    c1 = cosigner.receive_round1(phone.start())
    if step == 1:
        if how == "abort":
            phone.abort()
        else:
            bad = dataclasses.replace(c1, proof_mu=add_one(c1.proof_mu))
            expect(Reason.INVALID_PROOF, 2, lambda: phone.receive_round1(bad))
        cosigner.abort()
        expect(Reason.UNEXPECTED_MESSAGE, 2, lambda: phone.receive_round1(c1))
    else:
        r2 = phone.receive_round1(c1)
        if how == "abort":
            cosigner.abort()
        else:
            bad2 = DkgRound2(secret_share=add_one(r2.secret_share))
            expect(Reason.INVALID_SHARE, 1, lambda: cosigner.receive_round2(bad2))
        phone.abort()
        expect(Reason.UNEXPECTED_MESSAGE, 1, lambda: cosigner.receive_round2(r2))
    assert held
    assert all_zero(held)


def test_secrets_never_in_text() -> None:
    phone, cosigner = PhoneKeyGen(), CosignerKeyGen()
    r2 = phone.receive_round1(cosigner.receive_round1(phone.start()))
    assert r2.secret_share.hex() not in repr(r2)
    assert repr(r2.secret_share) not in repr(r2)
    bad = DkgRound2(secret_share=add_one(r2.secret_share))
    err = expect(Reason.INVALID_SHARE, 1, lambda: cosigner.receive_round2(bad))
    for secret in (bad.secret_share, r2.secret_share):
        assert secret.hex() not in str(err)
        assert repr(secret) not in str(err)
    phone_kp, _ = run_dkg()
    assert "signing_share" not in repr(phone_kp)
    assert phone_kp.signing_share.hex() not in repr(phone_kp)
