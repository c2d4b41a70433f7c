"""FROST signing maths, RFC 9591 sections 4 and 5, for any ``Ciphersuite``.

Function names and argument order follow the RFC's pseudocode so each can be read
against it. Identifiers are small positive integers; they become scalars only where
the RFC serializes or multiplies them. The state machines use ``signing_context``
plus ``sign_share``/``share_is_valid`` so that binding factors and the group
commitment are computed once per signature instead of once per call.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import reduce
from itertools import pairwise

from mobilesign.twoparty._ciphersuite import (
    Ciphersuite,
    Element,
    RandomSource,
    Scalar,
    random_bytes,
)


@dataclass(frozen=True)
class Commitment:
    """One participant's round-one output: ``(identifier, hiding, binding)``."""

    identifier: int
    hiding: Element
    binding: Element


def nonce_generate(cs: Ciphersuite, secret: Scalar, random: RandomSource) -> Scalar:
    """Hedged nonce (section 4.1): fresh randomness bound to the secret share."""
    return cs.h3(random_bytes(random, 32) + cs.serialize_scalar(secret))


def commit(
    cs: Ciphersuite, sk_i: Scalar, random: RandomSource
) -> tuple[tuple[Scalar, Scalar], tuple[Element, Element]]:
    """Round one (section 5.1): ``((hiding_nonce, binding_nonce), (D, E))``."""
    hiding_nonce = nonce_generate(cs, sk_i, random)
    binding_nonce = nonce_generate(cs, sk_i, random)
    return (hiding_nonce, binding_nonce), (cs.base_mult(hiding_nonce), cs.base_mult(binding_nonce))


def _check_commitment_list(commitment_list: Sequence[Commitment]) -> None:
    ids = [c.identifier for c in commitment_list]
    if not ids or ids[0] < 1 or any(a >= b for a, b in pairwise(ids)):
        raise ValueError("commitment list must be non-empty and sorted by distinct identifiers")


def encode_group_commitment_list(cs: Ciphersuite, commitment_list: Sequence[Commitment]) -> bytes:
    """Section 4.3."""
    return b"".join(
        cs.serialize_scalar(cs.scalar_from_int(c.identifier))
        + cs.serialize_element(c.hiding)
        + cs.serialize_element(c.binding)
        for c in commitment_list
    )


def binding_factor_inputs(
    cs: Ciphersuite, group_public_key: Element, commitment_list: Sequence[Commitment], msg: bytes
) -> dict[int, bytes]:
    """The ``rho_input`` of each participant (section 4.4), before H1."""
    _check_commitment_list(commitment_list)
    prefix = (
        cs.serialize_element(group_public_key)
        + cs.h4(msg)
        + cs.h5(encode_group_commitment_list(cs, commitment_list))
    )
    return {
        c.identifier: prefix + cs.serialize_scalar(cs.scalar_from_int(c.identifier))
        for c in commitment_list
    }


def compute_binding_factors(
    cs: Ciphersuite, group_public_key: Element, commitment_list: Sequence[Commitment], msg: bytes
) -> dict[int, Scalar]:
    """Section 4.4: identifier -> binding factor."""
    inputs = binding_factor_inputs(cs, group_public_key, commitment_list, msg)
    return {identifier: cs.h1(rho_input) for identifier, rho_input in inputs.items()}


def _commitment_share(cs: Ciphersuite, c: Commitment, binding_factor: Scalar) -> Element:
    return cs.add(c.hiding, cs.mult(binding_factor, c.binding))


def _sum(cs: Ciphersuite, elements: Sequence[Element]) -> Element:
    # Starts from the first term, not the identity: each add costs two decompressions.
    return reduce(cs.add, elements)


def compute_group_commitment(
    cs: Ciphersuite, commitment_list: Sequence[Commitment], binding_factors: Mapping[int, Scalar]
) -> Element:
    """Section 4.5."""
    return _sum(
        cs, [_commitment_share(cs, c, binding_factors[c.identifier]) for c in commitment_list]
    )


def compute_challenge(
    cs: Ciphersuite, group_commitment: Element, group_public_key: Element, msg: bytes
) -> Scalar:
    """Section 4.6; fails with IDENTITY_ELEMENT if the group commitment is the identity."""
    return cs.h2(
        cs.serialize_element(group_commitment) + cs.serialize_element(group_public_key) + msg
    )


def derive_interpolating_value(cs: Ciphersuite, participants: Sequence[int], x_i: int) -> Scalar:
    """Lagrange coefficient at zero for ``x_i`` over ``participants`` (section 4.2)."""
    if x_i not in participants or len(set(participants)) != len(participants):
        raise ValueError("invalid parameters")
    numerator = cs.scalar_from_int(1)
    denominator = cs.scalar_from_int(1)
    for x_j in participants:
        if x_j == x_i:
            continue
        numerator = cs.scalar_mul(numerator, cs.scalar_from_int(x_j))
        denominator = cs.scalar_mul(denominator, cs.scalar_from_int(x_j - x_i))
    return cs.scalar_mul(numerator, cs.scalar_invert(denominator))


@dataclass(frozen=True)
class SigningContext:
    """Everything about one signature that is public and shared by all participants."""

    commitment_list: tuple[Commitment, ...]
    binding_factors: dict[int, Scalar]
    commitment_shares: dict[int, Element]
    group_commitment: Element
    challenge: Scalar


def signing_context(
    cs: Ciphersuite,
    group_public_key: Element,
    commitment_list: Sequence[Commitment],
    msg: bytes,
    own: tuple[int, tuple[Scalar, Scalar]] | None = None,
) -> SigningContext:
    """Binding factors, per-participant commitment shares, group commitment, challenge.

    ``own`` is (identifier, (hiding nonce, binding nonce)) of the participant computing it:
    its commitment share ``D + rho * E`` is then ``(d + rho * e) * G``, one fixed-base
    multiplication instead of a variable-base one and an addition (the same element)."""
    binding_factors = compute_binding_factors(cs, group_public_key, commitment_list, msg)

    def share(c: Commitment) -> Element:
        rho = binding_factors[c.identifier]
        if own is not None and c.identifier == own[0]:
            hiding_nonce, binding_nonce = own[1]
            return cs.base_mult(cs.scalar_add(hiding_nonce, cs.scalar_mul(binding_nonce, rho)))
        return _commitment_share(cs, c, rho)

    shares = {c.identifier: share(c) for c in commitment_list}
    group_commitment = _sum(cs, list(shares.values()))
    return SigningContext(
        commitment_list=tuple(commitment_list),
        binding_factors=binding_factors,
        commitment_shares=shares,
        group_commitment=group_commitment,
        challenge=compute_challenge(cs, group_commitment, group_public_key, msg),
    )


def sign_share(
    cs: Ciphersuite,
    ctx: SigningContext,
    identifier: int,
    sk_i: Scalar,
    lambda_i: Scalar,
    nonces: tuple[Scalar, Scalar],
) -> Scalar:
    """``hiding + binding * rho_i + lambda_i * sk_i * c`` (section 5.2)."""
    hiding_nonce, binding_nonce = nonces
    return cs.scalar_add(
        cs.scalar_add(hiding_nonce, cs.scalar_mul(binding_nonce, ctx.binding_factors[identifier])),
        cs.scalar_mul(cs.scalar_mul(lambda_i, sk_i), ctx.challenge),
    )


def share_is_valid(
    cs: Ciphersuite,
    ctx: SigningContext,
    identifier: int,
    pk_i: Element,
    lambda_i: Scalar,
    sig_share: Scalar,
) -> bool:
    """``sig_share * G == comm_share + (c * lambda_i) * PK_i`` (section 5.3)."""
    expected = cs.add(
        ctx.commitment_shares[identifier], cs.mult(cs.scalar_mul(ctx.challenge, lambda_i), pk_i)
    )
    return cs.base_mult(sig_share) == expected


def encode_signature(cs: Ciphersuite, group_commitment: Element, z: Scalar) -> bytes:
    """``SerializeElement(R) || SerializeScalar(z)`` (section 5.3 / appendix A)."""
    return cs.serialize_element(group_commitment) + cs.serialize_scalar(z)


def sign(
    cs: Ciphersuite,
    identifier: int,
    sk_i: Scalar,
    group_public_key: Element,
    nonce_i: tuple[Scalar, Scalar],
    msg: bytes,
    commitment_list: Sequence[Commitment],
) -> Scalar:
    """Round two, as in section 5.2."""
    ctx = signing_context(cs, group_public_key, commitment_list, msg)
    participants = [c.identifier for c in commitment_list]
    lambda_i = derive_interpolating_value(cs, participants, identifier)
    return sign_share(cs, ctx, identifier, sk_i, lambda_i, nonce_i)


def verify_signature_share(
    cs: Ciphersuite,
    identifier: int,
    pk_i: Element,
    sig_share_i: Scalar,
    commitment_list: Sequence[Commitment],
    group_public_key: Element,
    msg: bytes,
) -> bool:
    """Section 5.3; the participant's commitment is taken from ``commitment_list``."""
    ctx = signing_context(cs, group_public_key, commitment_list, msg)
    participants = [c.identifier for c in commitment_list]
    lambda_i = derive_interpolating_value(cs, participants, identifier)
    return share_is_valid(cs, ctx, identifier, pk_i, lambda_i, sig_share_i)


def aggregate(
    cs: Ciphersuite,
    commitment_list: Sequence[Commitment],
    msg: bytes,
    group_public_key: Element,
    sig_shares: Sequence[Scalar],
) -> bytes:
    """Section 5.3; returns the encoded signature ``R || z``."""
    ctx = signing_context(cs, group_public_key, commitment_list, msg)
    z = reduce(cs.scalar_add, sig_shares)
    return encode_signature(cs, ctx.group_commitment, z)
