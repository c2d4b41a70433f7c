"""The RA's one error type."""

from __future__ import annotations

from mobilesign.errors import Error


class RaError(Error):
    """A refusal by the RA, with a kind and a stable reason."""
