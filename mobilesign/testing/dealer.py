"""Trusted-dealer key generation, RFC 9591 appendix C.

TEST ONLY. No production path uses this module: mobilesign keys come from the
two-party DKG, so that no single machine ever holds a whole signing key. It exists so
the test suite can rebuild the RFC 9591 test-vector shares from their coefficients.
"""

from __future__ import annotations

from collections.abc import Sequence

from mobilesign.twoparty._ciphersuite import Ciphersuite, Element, RandomSource, Scalar
from mobilesign.twoparty._dkg import polynomial_evaluate, vss_commit


def secret_share_shard(
    cs: Ciphersuite,
    s: Scalar,
    coefficients: Sequence[Scalar],
    max_participants: int,
    min_participants: int,
) -> list[tuple[int, Scalar]]:
    """Shares ``(i, f(i))`` for ``i`` in ``1..max_participants`` of ``f`` with ``f(0) = s``."""
    if min_participants > max_participants or min_participants < 2:
        raise ValueError("invalid parameters")
    if len(coefficients) != min_participants - 1:
        raise ValueError("invalid parameters")
    coeffs = [s, *coefficients]
    return [(x, polynomial_evaluate(cs, x, coeffs)) for x in range(1, max_participants + 1)]


def trusted_dealer_keygen(
    cs: Ciphersuite,
    secret_key: Scalar,
    max_participants: int,
    min_participants: int,
    random: RandomSource,
) -> tuple[list[tuple[int, Scalar]], Element, list[Element]]:
    """``(participant_private_keys, group_public_key, vss_commitment)``."""
    coefficients = [cs.random_scalar(random) for _ in range(min_participants - 1)]
    shares = secret_share_shard(cs, secret_key, coefficients, max_participants, min_participants)
    vss_commitment = vss_commit(cs, [secret_key, *coefficients])
    return shares, vss_commitment[0], vss_commitment
