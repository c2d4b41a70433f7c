"""FROST(Ed25519, SHA-512) maths against RFC 9591 appendix E.1 and the ZF frost vectors.

Both vector sets are 2-of-3 signing with participants 1 and 3, so these tests also
exercise the RFC functions with identifiers other than the product's 1 and 2. They
also pin down the group layer: what an element or scalar decoder must reject.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl import bindings as na

from mobilesign.testing.dealer import secret_share_shard, trusted_dealer_keygen
from mobilesign.twoparty import ProtocolError, Reason
from mobilesign.twoparty._ciphersuite import Element, Scalar
from mobilesign.twoparty._dkg import commitment_evaluate, vss_commit
from mobilesign.twoparty._ed25519 import ED25519_SHA512 as CS
from mobilesign.twoparty._ed25519 import ORDER
from mobilesign.twoparty._frost import (
    Commitment,
    aggregate,
    binding_factor_inputs,
    commit,
    compute_binding_factors,
    compute_challenge,
    compute_group_commitment,
    derive_interpolating_value,
    encode_group_commitment_list,
    nonce_generate,
    sign,
    verify_signature_share,
)
from mobilesign.twoparty._scheme import PARTICIPANTS
from tests import paths

VECTORS = paths.VECTORS
VECTOR_FILES = ["frost-ed25519-sha512-rfc9591.json", "frost-ed25519-sha512-zf.json"]

FIELD_P = 2**255 - 19
CURVE_D = -121665 * pow(121666, -1, FIELD_P) % FIELD_P
IDENTITY = b"\x01" + bytes(31)
# A point of order 8 (Bernstein et al., "Taming the many EdDSAs"), its y coordinate.
ORDER8 = bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05")


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VECTORS / name).read_text())
    return data


def h(hex_string: str) -> bytes:
    return bytes.fromhex(hex_string)


def scripted(*chunks: bytes) -> Callable[[int], bytes]:
    """A random source that returns exactly these byte strings, in order."""
    it: Iterator[bytes] = iter(chunks)

    def source(n: int) -> bytes:
        out = next(it)
        assert len(out) == n
        return out

    return source


def group_public_key(vector: dict[str, Any]) -> Element:
    inputs = vector["inputs"]
    return Element(h(inputs.get("group_public_key") or inputs["verifying_key_key"]))


@pytest.fixture(params=VECTOR_FILES)
def vector(request: pytest.FixtureRequest) -> dict[str, Any]:
    return load(request.param)


def commitment_list(vector: dict[str, Any]) -> list[Commitment]:
    return [
        Commitment(
            out["identifier"],
            Element(h(out["hiding_nonce_commitment"])),
            Element(h(out["binding_nonce_commitment"])),
        )
        for out in vector["round_one_outputs"]["outputs"]
    ]


# --- Vectors ---------------------------------------------------------------------------


def test_group_key_and_shares_from_coefficients(vector: dict[str, Any]) -> None:
    inputs = vector["inputs"]
    secret = Scalar(h(inputs["group_secret_key"]))
    coefficients = [Scalar(h(c)) for c in inputs["share_polynomial_coefficients"]]
    config = vector["config"]
    shares = secret_share_shard(
        CS, secret, coefficients, int(config["MAX_PARTICIPANTS"]), int(config["MIN_PARTICIPANTS"])
    )
    assert CS.base_mult(secret) == group_public_key(vector)
    expected = [(p["identifier"], h(p["participant_share"])) for p in inputs["participant_shares"]]
    assert shares == expected


def test_round_one_nonces_and_commitments(vector: dict[str, Any]) -> None:
    shares = {
        p["identifier"]: h(p["participant_share"]) for p in vector["inputs"]["participant_shares"]
    }
    for out in vector["round_one_outputs"]["outputs"]:
        sk = Scalar(shares[out["identifier"]])
        hiding_r, binding_r = h(out["hiding_nonce_randomness"]), h(out["binding_nonce_randomness"])
        assert nonce_generate(CS, sk, scripted(hiding_r)) == h(out["hiding_nonce"])
        assert nonce_generate(CS, sk, scripted(binding_r)) == h(out["binding_nonce"])
        (hiding, binding), (d, e) = commit(CS, sk, scripted(hiding_r, binding_r))
        assert (hiding, binding) == (h(out["hiding_nonce"]), h(out["binding_nonce"]))
        assert d == h(out["hiding_nonce_commitment"])
        assert e == h(out["binding_nonce_commitment"])


def test_binding_factors(vector: dict[str, Any]) -> None:
    msg = h(vector["inputs"]["message"])
    commitments = commitment_list(vector)
    inputs = binding_factor_inputs(CS, group_public_key(vector), commitments, msg)
    factors = compute_binding_factors(CS, group_public_key(vector), commitments, msg)
    for out in vector["round_one_outputs"]["outputs"]:
        assert inputs[out["identifier"]] == h(out["binding_factor_input"])
        assert factors[out["identifier"]] == h(out["binding_factor"])


def test_signature_shares_aggregate_and_verify(vector: dict[str, Any]) -> None:
    msg = h(vector["inputs"]["message"])
    gpk = group_public_key(vector)
    commitments = commitment_list(vector)
    shares = {
        p["identifier"]: h(p["participant_share"]) for p in vector["inputs"]["participant_shares"]
    }
    nonces = {
        out["identifier"]: (Scalar(h(out["hiding_nonce"])), Scalar(h(out["binding_nonce"])))
        for out in vector["round_one_outputs"]["outputs"]
    }
    sig_shares = []
    for out in vector["round_two_outputs"]["outputs"]:
        i = out["identifier"]
        z_i = sign(CS, i, Scalar(shares[i]), gpk, nonces[i], msg, commitments)
        assert z_i == h(out["sig_share"])
        pk_i = CS.base_mult(Scalar(shares[i]))
        assert verify_signature_share(CS, i, pk_i, z_i, commitments, gpk, msg)
        wrong = CS.scalar_add(z_i, CS.scalar_from_int(1))
        assert not verify_signature_share(CS, i, pk_i, wrong, commitments, gpk, msg)
        sig_shares.append(z_i)

    signature = aggregate(CS, commitments, msg, gpk, sig_shares)
    assert signature == h(vector["final_output"]["sig"])
    assert CS.verify_signature(gpk, msg, signature)
    Ed25519PublicKey.from_public_bytes(gpk).verify(signature, msg)  # OpenSSL agrees


def test_challenge_is_rfc8032_challenge(vector: dict[str, Any]) -> None:
    """H2 has no domain separator: c = SHA-512(R || A || M) mod L, as RFC 8032."""
    msg = h(vector["inputs"]["message"])
    gpk = group_public_key(vector)
    commitments = commitment_list(vector)
    factors = compute_binding_factors(CS, gpk, commitments, msg)
    r = compute_group_commitment(CS, commitments, factors)
    assert r == h(vector["final_output"]["sig"])[:32]
    expected = int.from_bytes(hashlib.sha512(r + gpk + msg).digest(), "little") % ORDER
    assert compute_challenge(CS, r, gpk, msg) == expected.to_bytes(32, "little")


def test_encode_group_commitment_list_layout(vector: dict[str, Any]) -> None:
    commitments = commitment_list(vector)
    encoded = encode_group_commitment_list(CS, commitments)
    assert len(encoded) == 96 * len(commitments)
    for k, c in enumerate(commitments):
        chunk = encoded[96 * k : 96 * (k + 1)]
        assert chunk == c.identifier.to_bytes(32, "little") + c.hiding + c.binding


def test_commitment_list_must_be_sorted_and_distinct(vector: dict[str, Any]) -> None:
    msg = h(vector["inputs"]["message"])
    commitments = commitment_list(vector)
    for bad in (commitments[::-1], [commitments[0], commitments[0]], []):
        with pytest.raises(ValueError, match="sorted"):
            compute_binding_factors(CS, group_public_key(vector), bad, msg)


def test_derive_interpolating_value() -> None:
    # Over {1, 3}: lambda_1 = 3 / (3 - 1), lambda_3 = 1 / (1 - 3).
    assert derive_interpolating_value(CS, [1, 3], 1) == (3 * pow(2, -1, ORDER) % ORDER).to_bytes(
        32, "little"
    )
    assert derive_interpolating_value(CS, [1, 3], 3) == (-pow(2, -1, ORDER) % ORDER).to_bytes(
        32, "little"
    )
    # The pair's: KeyPackage checks 2 * Y_1 - Y_2 == Y on these.
    assert PARTICIPANTS == (1, 2)
    assert derive_interpolating_value(CS, [1, 2], 1) == (2).to_bytes(32, "little")
    assert derive_interpolating_value(CS, [1, 2], 2) == (ORDER - 1).to_bytes(32, "little")
    with pytest.raises(ValueError, match="invalid parameters"):
        derive_interpolating_value(CS, [1, 3], 2)
    with pytest.raises(ValueError, match="invalid parameters"):
        derive_interpolating_value(CS, [1, 1, 3], 1)


@pytest.mark.parametrize("degree", [0, 1, 2])
def test_commitment_evaluate_is_the_committed_polynomial_at_x(degree: int) -> None:
    """Horner's rule with additions for x = 1 and 2 gives f(x) * G, as for other x."""
    coefficients = [CS.random_scalar(secrets.token_bytes) for _ in range(degree + 1)]
    commitment = vss_commit(CS, coefficients)
    for x in range(1, 6):
        value = sum(int.from_bytes(a, "little") * x**j for j, a in enumerate(coefficients))
        assert commitment_evaluate(CS, x, commitment) == CS.base_mult(CS.scalar_from_int(value))


@settings(max_examples=25, deadline=None)
@given(seed=st.binary(min_size=64, max_size=64), t=st.integers(2, 4), extra=st.integers(0, 2))
def test_dealer_shares_interpolate_to_secret(seed: bytes, t: int, extra: int) -> None:
    secret = CS.random_scalar(lambda n: hashlib.shake_256(b"s" + seed).digest(n))
    counter = iter(range(100))

    def rng(n: int) -> bytes:
        return hashlib.shake_256(seed + bytes([next(counter)])).digest(n)

    n = t + extra
    shares, gpk, vss = trusted_dealer_keygen(CS, secret, n, t, rng)
    assert gpk == CS.base_mult(secret) == vss[0]
    subset = shares[extra : extra + t]  # any t of the n shares
    ids = [i for i, _ in subset]
    total = CS.scalar_from_int(0)
    for i, s_i in subset:
        total = CS.scalar_add(total, CS.scalar_mul(derive_interpolating_value(CS, ids, i), s_i))
    assert total == secret


# --- Group layer: element and scalar decoding --------------------------------------------


def point_with_y(y: int, sign: int = 0) -> bytes:
    return (y | (sign << 255)).to_bytes(32, "little")


def y_on_curve(y: int) -> bool:
    u = (y * y - 1) % FIELD_P
    v = (CURVE_D * y * y + 1) % FIELD_P
    x2 = u * pow(v, -1, FIELD_P) % FIELD_P
    return x2 == 0 or pow(x2, (FIELD_P - 1) // 2, FIELD_P) == 1


def torsion_points() -> list[bytes]:
    """All 8 points of order dividing 8, by repeated addition of an order-8 point."""
    points = [ORDER8]
    while points[-1] != IDENTITY:
        points.append(na.crypto_core_ed25519_add(points[-1], ORDER8))
    assert len(points) == 8
    return points


def random_valid_point() -> bytes:
    return bytes(CS.base_mult(CS.random_scalar(secrets.token_bytes)))


def _multiplied(scalar: int) -> Callable[[object], Element]:
    """deserialize_multiplicand followed by the multiplication that validates what it left."""

    def decode(buf: object) -> Element:
        return CS.mult(CS.scalar_from_int(scalar), CS.deserialize_multiplicand(buf))

    return decode


#: Every way an element from a peer is decoded: alone, or by its multiplication (by a
#: non-zero scalar, and by zero, where libsodium would not look at the point).
DECODERS = pytest.mark.parametrize(
    "decode",
    [CS.deserialize_element, _multiplied(12345), _multiplied(0)],
    ids=["deserialize", "multiplicand-mult", "multiplicand-mult-zero"],
)


def test_valid_points_round_trip() -> None:
    for _ in range(20):
        p = random_valid_point()
        assert CS.deserialize_element(p) == p
        assert CS.serialize_element(Element(p)) == p


def test_identity_is_rejected() -> None:
    with pytest.raises(ProtocolError) as e:
        CS.deserialize_element(IDENTITY)
    assert e.value.reason is Reason.IDENTITY_ELEMENT
    with pytest.raises(ProtocolError) as e:
        CS.serialize_element(CS.identity)
    assert e.value.reason is Reason.IDENTITY_ELEMENT


@pytest.mark.parametrize("index", range(8))
@DECODERS
def test_small_order_points_are_rejected(index: int, decode: Callable[[object], Element]) -> None:
    point = torsion_points()[index]
    for encoding in (point, bytes(point[:31]) + bytes([point[31] ^ 0x80])):
        with pytest.raises(ProtocolError) as e:
            decode(encoding)
        expected = Reason.IDENTITY_ELEMENT if encoding == IDENTITY else Reason.INVALID_ELEMENT
        assert e.value.reason is expected


@pytest.mark.parametrize("index", range(1, 8))
@DECODERS
def test_mixed_order_points_are_rejected(index: int, decode: Callable[[object], Element]) -> None:
    """P + T with T a non-trivial torsion point: on the curve, outside the subgroup."""
    mixed = na.crypto_core_ed25519_add(random_valid_point(), torsion_points()[index - 1])
    with pytest.raises(ProtocolError) as e:
        decode(mixed)
    assert e.value.reason is Reason.INVALID_ELEMENT


@pytest.mark.parametrize("offset", range(19))
@pytest.mark.parametrize("sign", [0, 1])
@DECODERS
def test_non_canonical_encodings_are_rejected(
    offset: int, sign: int, decode: Callable[[object], Element]
) -> None:
    """y = p + offset (y >= p) is never canonical, even where y - p is a valid point."""
    with pytest.raises(ProtocolError) as e:
        decode(point_with_y(FIELD_P + offset, sign))
    assert e.value.reason is Reason.INVALID_ELEMENT


@DECODERS
def test_off_curve_encodings_are_rejected(decode: Callable[[object], Element]) -> None:
    off = [y for y in range(2, 60) if not y_on_curve(y)]
    assert len(off) > 10
    for y in off:
        for sign_bit in (0, 1):
            with pytest.raises(ProtocolError) as e:
                decode(point_with_y(y, sign_bit))
            assert e.value.reason is Reason.INVALID_ELEMENT


@DECODERS
def test_negative_zero_x_is_rejected(decode: Callable[[object], Element]) -> None:
    """x = 0 with the sign bit set (RFC 8032 5.1.3 step 4): encodings of y = 1 and y = -1."""
    for y in (1, FIELD_P - 1):
        with pytest.raises(ProtocolError) as e:
            decode(point_with_y(y, 1))
        assert e.value.reason is Reason.INVALID_ELEMENT


@pytest.mark.parametrize("bad", [b"", bytes(31), bytes(33), "a" * 32, None, bytearray(32), 5])
def test_wrong_length_or_type_is_malformed(bad: object) -> None:
    for decode in (CS.deserialize_element, CS.deserialize_multiplicand, CS.deserialize_scalar):
        with pytest.raises(ProtocolError) as e:
            decode(bad)
        assert e.value.reason is Reason.MALFORMED_MESSAGE


@pytest.mark.parametrize("value", [ORDER, ORDER + 1, 2 * ORDER - 1, 2**253, 2**255 - 1, 2**256 - 1])
def test_non_canonical_scalars_are_rejected(value: int) -> None:
    with pytest.raises(ProtocolError) as e:
        CS.deserialize_scalar(value.to_bytes(32, "little"))
    assert e.value.reason is Reason.NON_CANONICAL_SCALAR


@pytest.mark.parametrize("value", [0, 1, ORDER - 1, 2**252])
def test_canonical_scalars_are_accepted(value: int) -> None:
    encoding = value.to_bytes(32, "little")
    assert CS.deserialize_scalar(encoding) == encoding


def test_identity_results_are_handled() -> None:
    """libsodium's noclamp multiplications raise on identity results; we return it."""
    p = Element(random_valid_point())
    zero = Scalar(bytes(32))
    assert CS.base_mult(zero) == CS.identity
    assert CS.mult(zero, p) == CS.identity
    assert CS.mult(CS.scalar_from_int(5), CS.identity) == CS.identity
    assert CS.add(p, CS.identity) == p
    assert CS.sub(p, p) == CS.identity


@settings(max_examples=50, deadline=None)
@given(a=st.integers(0, ORDER - 1), b=st.integers(0, ORDER - 1))
def test_group_and_field_arithmetic_agree(a: int, b: int) -> None:
    sa, sb = CS.scalar_from_int(a), CS.scalar_from_int(b)
    assert CS.scalar_mul(sa, sb) == (a * b % ORDER).to_bytes(32, "little")
    assert CS.scalar_sub(sa, sb) == ((a - b) % ORDER).to_bytes(32, "little")
    assert CS.mult(sa, CS.base_mult(sb)) == CS.base_mult(CS.scalar_mul(sa, sb))
    assert CS.add(CS.base_mult(sa), CS.base_mult(sb)) == CS.base_mult(CS.scalar_add(sa, sb))
    if b:
        assert CS.scalar_mul(CS.scalar_invert(sb), sb) == CS.scalar_from_int(1)


def test_verify_signature_rejects_wrong_lengths_and_tampering(vector: dict[str, Any]) -> None:
    gpk = group_public_key(vector)
    msg = h(vector["inputs"]["message"])
    sig = h(vector["final_output"]["sig"])
    assert CS.verify_signature(gpk, msg, sig)
    assert not CS.verify_signature(gpk, msg, sig[:-1])
    assert not CS.verify_signature(gpk, msg + b"x", sig)
    s_plus_l = (int.from_bytes(sig[32:], "little") + ORDER).to_bytes(32, "little")
    assert not CS.verify_signature(gpk, msg, sig[:32] + s_plus_l)  # malleated S
