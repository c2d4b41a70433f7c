"""The cosigner's one error type."""

from __future__ import annotations

from mobilesign.errors import Error


class CosignerError(Error):
    """A refusal by the cosigner, with a kind and a stable reason."""
