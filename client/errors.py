"""The one error type of the client SDK."""

from __future__ import annotations

import grpc

from mobilesign.rpc.status import reason_of


class ClientError(Exception):
    """A call or protocol step failed; ``reason`` is stable (the server's, or the SDK's own)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message

    @classmethod
    def from_rpc(cls, error: grpc.aio.AioRpcError) -> ClientError:
        """Wrap a failed call, keeping the server's reason when it sent one."""
        return cls(reason_of(error) or error.code().name, error.details() or "")
