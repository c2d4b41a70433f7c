"""Who is calling, and may they call this method.

The caller's identity is the Common Name of a client certificate that the TLS layer verified
against the internal CA; a call without one (the phone-facing edge) has no identity. A policy maps
each RPC to the identities allowed to call it; RPCs missing from the policy are refused.
"""

from __future__ import annotations

import contextvars
from collections.abc import Mapping
from dataclasses import dataclass

import grpc

from mobilesign.errors import Error


class AccessError(Error):
    """A caller that may not call the method it called (or presented no certificate)."""


#: Identity of the verified client certificate of the current call, or None.
caller: contextvars.ContextVar[str | None] = contextvars.ContextVar("caller", default=None)

#: Marker: the RPC is open to callers without a client certificate.
ANYONE = frozenset({"*"})


def peer_identity(context: grpc.aio.ServicerContext[object, object]) -> str | None:
    """The Common Name of the peer's verified client certificate, or None when there is none."""
    auth = context.auth_context()
    names = list(auth.get("x509_common_name") or [])
    if len(names) != 1:
        return None
    name = names[0]
    return name.decode("ascii", "replace") if isinstance(name, bytes) else str(name)


@dataclass(frozen=True)
class AccessPolicy:
    """Allowed caller identities per RPC method name (the short name, e.g. ``SignDigest``)."""

    rules: Mapping[str, frozenset[str]]

    def allows(self, method: str, identity: str | None) -> bool:
        """True when ``identity`` (None for no certificate) may call ``method``."""
        allowed = self.rules.get(method)
        if allowed is None:
            return False
        if allowed is ANYONE or "*" in allowed:
            return True
        return identity is not None and identity in allowed
