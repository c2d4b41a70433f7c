"""Pedersen DKG maths with Schnorr proofs of knowledge (FROST paper, figure 1).

Polynomial and VSS helpers follow RFC 9591 appendix C (``polynomial_evaluate``,
``vss_commit``, ``vss_verify``, ``derive_group_info``). The proof-of-knowledge
challenge is computed as Zcash Foundation ``frost-core`` does (``keys/dkg.rs``,
``challenge``): ``HDKG(SerializeScalar(identifier) || SerializeElement(C_0) ||
SerializeElement(R))``, so a phone built on that library can enrol against us.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import reduce

from mobilesign.twoparty._ciphersuite import Ciphersuite, Element, RandomSource, Scalar


def polynomial_evaluate(cs: Ciphersuite, x: int, coeffs: Sequence[Scalar]) -> Scalar:
    """``f(x)`` by Horner's rule; ``coeffs[0]`` is the constant term."""
    x_s = cs.scalar_from_int(x)
    value = cs.scalar_from_int(0)
    for coeff in reversed(coeffs):
        value = cs.scalar_add(cs.scalar_mul(value, x_s), coeff)
    return value


def vss_commit(cs: Ciphersuite, coeffs: Sequence[Scalar]) -> list[Element]:
    """``[a_j * G for a_j in coeffs]``."""
    return [cs.base_mult(a) for a in coeffs]


def _times(cs: Ciphersuite, x: int, p: Element) -> Element:
    # x is a participant's identifier: for 1 and 2 (the pair's) an addition at most, which
    # costs a fifth of a multiplication.
    if x == 1:
        return p
    if x == 2:
        return cs.add(p, p)
    return cs.mult(cs.scalar_from_int(x), p)


def commitment_evaluate(cs: Ciphersuite, x: int, commitment: Sequence[Element]) -> Element:
    """``sum_j C_j * x^j``: the public image ``f(x) * G`` of a committed polynomial (Horner's
    rule; ``x`` a participant identifier, the elements validated or derived from such)."""
    acc = commitment[-1]
    for c in reversed(commitment[:-1]):
        acc = cs.add(_times(cs, x, acc), c)
    return acc


def vss_verify(cs: Ciphersuite, x: int, share: Scalar, commitment: Sequence[Element]) -> bool:
    """Whether ``share`` is the committed polynomial evaluated at ``x``."""
    return cs.base_mult(share) == commitment_evaluate(cs, x, commitment)


def derive_group_info(
    cs: Ciphersuite, participants: Sequence[int], commitment: Sequence[Element]
) -> tuple[Element, dict[int, Element]]:
    """Group public key and each participant's verifying share from a (summed) commitment."""
    return commitment[0], {i: commitment_evaluate(cs, i, commitment) for i in participants}


def sum_commitments(cs: Ciphersuite, commitments: Sequence[Sequence[Element]]) -> list[Element]:
    """Coefficient-wise sum: the commitment to the sum of the parties' polynomials."""
    return [reduce(cs.add, column) for column in zip(*commitments, strict=True)]


def pok_challenge(cs: Ciphersuite, identifier: int, verifying_key: Element, r: Element) -> Scalar:
    """The proof-of-knowledge challenge, byte for byte as frost-core builds it."""
    return cs.hdkg(
        cs.serialize_scalar(cs.scalar_from_int(identifier))
        + cs.serialize_element(verifying_key)
        + cs.serialize_element(r)
    )


def compute_proof_of_knowledge(
    cs: Ciphersuite, identifier: int, a0: Scalar, c0: Element, random: RandomSource
) -> tuple[Element, Scalar]:
    """Schnorr proof ``(R, mu)`` of knowledge of ``a0`` with ``C_0 = a0 * G``."""
    k = cs.random_scalar(random)
    r = cs.base_mult(k)
    c = pok_challenge(cs, identifier, c0, r)
    return r, cs.scalar_add(k, cs.scalar_mul(a0, c))


def verify_proof_of_knowledge(
    cs: Ciphersuite, identifier: int, c0: Element, r: Element, mu: Scalar
) -> bool:
    """``R == mu * G - c * C_0``."""
    c = pok_challenge(cs, identifier, c0, r)
    return r == cs.sub(cs.base_mult(mu), cs.mult(c, c0))
