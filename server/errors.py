"""The gateway's one error type."""

from __future__ import annotations

from mobilesign.errors import Error


class GatewayError(Error):
    """A refusal by the gateway, with a kind and a stable reason."""
