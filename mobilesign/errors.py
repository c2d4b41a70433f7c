"""The one error convention: every refusal carries a kind and a stable reason.

Each package raises its own subclass of :class:`Error` (``TicketError``, ``GatewayError``, ...).
The *kind* says what sort of refusal it is; :mod:`mobilesign.rpc.status` alone maps kinds to gRPC
status codes. The *reason* is a stable UPPER_SNAKE identifier callers may branch on (every one is
listed in :mod:`mobilesign.rpc.reasons`); the message is for people and never holds a secret.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping

_REASON = re.compile(r"[A-Z][A-Z0-9_]*")


class Kind(enum.Enum):
    """What sort of refusal an error is, independent of the transport."""

    INVALID = "invalid"
    UNAUTHENTICATED = "unauthenticated"
    DENIED = "denied"
    NOT_FOUND = "not found"
    CONFLICT = "conflict"
    PRECONDITION = "precondition"
    OUT_OF_RANGE = "out of range"
    EXHAUSTED = "exhausted"
    UNAVAILABLE = "unavailable"
    TIMEOUT = "timeout"
    ABORTED = "aborted"
    INTERNAL = "internal"


class Error(Exception):
    """A refusal with a :class:`Kind`, a stable ``reason``, a message for people and, where a
    caller needs a value to act on, ``metadata`` (``google.rpc.ErrorInfo.metadata`` on the wire;
    never a secret)."""

    def __init__(
        self, kind: Kind, reason: str, message: str, metadata: Mapping[str, str] | None = None
    ) -> None:
        if not _REASON.fullmatch(reason):
            raise ValueError(f"not a stable reason: {reason!r}")
        super().__init__(f"{reason}: {message}")
        self.kind = kind
        self.reason = reason
        self.message = message
        self.metadata = dict(metadata or {})
