"""The one error type of the client SDK."""

from __future__ import annotations

import grpc

from mobilesign.errors import Error, Kind
from mobilesign.rpc.status import kind_of, message_of, reason_of, retry_delay_of


class ClientError(Error):
    """A call or protocol step failed; ``reason`` is stable (the server's, or the SDK's own).

    The SDK's own refusals (something received does not verify, or does not match what was
    asked) are INVALID unless they say otherwise; a failed call keeps the kind of its status.
    ``retry_delay`` is the seconds the server asked to wait before trying the call again
    (``google.rpc.RetryInfo``), or None when trying again would fail the same way.
    """

    def __init__(
        self,
        reason: str,
        message: str,
        kind: Kind = Kind.INVALID,
        retry_delay: float | None = None,
    ) -> None:
        super().__init__(kind, reason, message)
        self.retry_delay = retry_delay

    @classmethod
    def from_rpc(cls, error: grpc.aio.AioRpcError) -> ClientError:
        """Wrap a failed call, keeping the server's reason and retry delay when it sent them."""
        return cls(
            reason_of(error) or error.code().name,
            message_of(error),
            kind_of(error.code()),
            retry_delay_of(error),
        )
