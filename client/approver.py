"""Answering approvals as they come: what a phone app runs while it is open. An application's
CSC ``credentials/authorize`` becomes an approval for the user; the app shows it (the
application's name, the purpose, the document's label) and the user approves or declines.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable

from client.errors import ClientError
from client.gateway_client import Approved, GatewaySession
from client.sdk import SigningSession
from client.verifier import TrustAnchors
from mobilesign.v1 import gateway_pb2

#: What the user says to an approval: True approves, False declines, None leaves it pending.
Decide = Callable[[gateway_pb2.Approval], bool | Awaitable[bool | None] | None]


class Approver:
    """Looks for the user's pending approvals every ``poll_seconds`` and answers each once, as
    ``decide`` says; the approvals given are kept in :attr:`given` and their records in
    :attr:`approved` (to fetch results and receipts with :meth:`GatewaySession.result_of`),
    refusals of an answer in :attr:`failed`."""

    def __init__(
        self,
        session: GatewaySession,
        signing: SigningSession,
        trust: TrustAnchors,
        decide: Decide,
        poll_seconds: float = 0.1,
    ) -> None:
        self._session = session
        self._signing = signing
        self._trust = trust
        self._decide = decide
        self._poll = poll_seconds
        self._seen: set[str] = set()
        self.given: list[gateway_pb2.Approval] = []
        self.approved: list[Approved] = []
        self.failed: list[ClientError] = []

    async def answer_pending(self) -> int:
        """Answer the approvals pending now; returns how many were answered."""
        answered = 0
        for approval in await self._session.approvals():
            if approval.approval_id in self._seen:
                continue
            verdict = self._decide(approval)
            yes = await verdict if inspect.isawaitable(verdict) else verdict
            if yes is None:
                continue
            self._seen.add(approval.approval_id)
            try:
                if yes:
                    self.approved.extend(
                        await self._session.approve(self._signing, approval, trust=self._trust)
                    )
                    self.given.append(approval)
                else:
                    await self._session.decline(approval.approval_id)
            except ClientError as exc:  # expired or withdrawn meanwhile: the next one
                self.failed.append(exc)
            answered += 1
        return answered

    async def run(self) -> None:
        """Answer approvals until cancelled."""
        while True:
            await self.answer_pending()
            await asyncio.sleep(self._poll)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Approver]:
        """:meth:`run` in the background while the block runs."""
        task = asyncio.create_task(self.run())
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
