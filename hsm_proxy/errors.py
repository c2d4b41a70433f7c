"""The HSM proxy's one error type."""

from __future__ import annotations

from mobilesign.errors import Error


class HsmProxyError(Error):
    """A refusal by the HSM proxy, with a kind and a stable reason."""
