"""The one error type of the client SDK."""

from __future__ import annotations

import grpc

from mobilesign.errors import Error, Kind
from mobilesign.rpc.status import kind_of, reason_of


class ClientError(Error):
    """A call or protocol step failed; ``reason`` is stable (the server's, or the SDK's own).

    The SDK's own refusals (something received does not verify, or does not match what was
    asked) are INVALID unless they say otherwise; a failed call keeps the kind of its status.
    """

    def __init__(self, reason: str, message: str, kind: Kind = Kind.INVALID) -> None:
        super().__init__(kind, reason, message)

    @classmethod
    def from_rpc(cls, error: grpc.aio.AioRpcError) -> ClientError:
        """Wrap a failed call, keeping the server's reason when it sent one."""
        return cls(
            reason_of(error) or error.code().name, error.details() or "", kind_of(error.code())
        )
