"""Best-effort handling of secret scalars held between protocol steps.

Python cannot promise erasure: libsodium returns immutable ``bytes`` and temporaries
live until the garbage collector reuses them. What we can do, and do, is keep every
secret that outlives one call in a ``bytearray``, overwrite it with zeros the moment
it is no longer needed (on success, on error, on abort) and drop the reference.
"""

from __future__ import annotations

from mobilesign.twoparty._ciphersuite import Scalar


def hold(value: bytes) -> bytearray:
    """A wipeable copy of a secret."""
    return bytearray(value)


def use(held: bytearray) -> Scalar:
    """The secret as a scalar for one computation (a short-lived copy)."""
    return Scalar(bytes(held))


def wipe(*held: bytearray) -> None:
    """Overwrite secrets in place with zeros."""
    for buf in held:
        buf[:] = bytes(len(buf))
