"""The RA's answers the gateway keeps, so that a use does not ask the RA six times.

Kept: a key's status while it names a certificate, an organisation key, a grant, and the CA
certificate. They are used only while the RA's change feed (``WatchChanges``) is live: its
stream is open and the RA was heard from within :data:`LEASE_SECONDS` (it sends a heartbeat
every second). The RA publishes every change to a key's certificates or to a grant, and answers
an administrator's revocation only after each gateway has dropped what it kept (or had its watch
ended for not doing so within a second). A watch that ends drops everything; until the next one
opens, every question goes to the RA. The HSM proxy refuses revoked certificates and grants
itself, whatever the gateway kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import grpc
from cachetools import LRUCache

from mobilesign.v1 import gateway_pb2, ra_pb2, ra_pb2_grpc
from server.ra_client import KeyStatus, Registry

LEASE_SECONDS = 3.0
RECONNECT_SECONDS = 0.25
#: Answers kept per kind (least recently used dropped first).
MAX_ENTRIES = 65_536

_log = logging.getLogger("mobilesign.gateway.ra_cache")

_V = TypeVar("_V")


class CachedRegistry(Registry):
    """:class:`Registry` answering from what it kept while the RA's change feed is live."""

    def __init__(self, channel: grpc.aio.Channel, *, lease_seconds: float = LEASE_SECONDS) -> None:
        super().__init__(channel)
        self._watch_stub = ra_pb2_grpc.RegistrationServiceStub(channel)
        self._lease = lease_seconds
        self._heard_at: float | None = None  # monotonic time of the live feed's last message
        # Bumped by every change and every end of a watch: an answer asked for before a bump
        # is not kept, since the change may have crossed it in flight.
        self._generation = 0
        self._statuses: LRUCache[str, KeyStatus] = LRUCache(MAX_ENTRIES)
        self._organisation_keys: LRUCache[str, gateway_pb2.OrganisationKey] = LRUCache(MAX_ENTRIES)
        self._grants: LRUCache[str, gateway_pb2.Grant] = LRUCache(MAX_ENTRIES)
        self._ca: bytes | None = None

    @property
    def live(self) -> bool:
        """Whether kept answers may be used now."""
        return self._heard_at is not None and time.monotonic() - self._heard_at < self._lease

    @property
    def kept(self) -> int:
        """How many answers are kept."""
        return len(self._statuses) + len(self._organisation_keys) + len(self._grants)

    async def _answer(
        self,
        kept: LRUCache[str, _V],
        key: str,
        ask: Callable[[], Awaitable[_V | None]],
        worth_keeping: Callable[[_V], bool] = lambda _: True,
    ) -> _V | None:
        if self.live:
            value = kept.get(key)
            if value is not None:
                return value
        generation = self._generation
        value = await ask()
        fresh = self.live and generation == self._generation
        if value is not None and fresh and worth_keeping(value):
            kept[key] = value
        return value

    async def key_status(self, key_id: str) -> KeyStatus:
        """As :meth:`Registry.key_status`; kept once the key has a certificate."""
        status = await self._answer(
            self._statuses,
            key_id,
            lambda: super(CachedRegistry, self).key_status(key_id),
            lambda status: bool(status.serial),
        )
        assert status is not None
        return status

    async def organisation_key(self, key_id: str) -> gateway_pb2.OrganisationKey:
        """As :meth:`Registry.organisation_key`."""
        key = await self._answer(
            self._organisation_keys,
            key_id,
            lambda: super(CachedRegistry, self).organisation_key(key_id),
        )
        assert key is not None
        return key

    async def grant(self, grant_id: str) -> gateway_pb2.Grant | None:
        """As :meth:`Registry.grant`; an unknown grant is asked for again each time."""
        return await self._answer(
            self._grants, grant_id, lambda: super(CachedRegistry, self).grant(grant_id)
        )

    async def ca_certificate(self) -> bytes:
        """As :meth:`Registry.ca_certificate`; the CA certificate never changes."""
        if self._ca is None:
            self._ca = await super().ca_certificate()
        return self._ca

    # The watch ---------------------------------------------------------------------------
    def _forget(self, key_ids: list[str], grant_ids: list[str]) -> None:
        self._generation += 1
        for key_id in key_ids:
            self._statuses.pop(key_id, None)
            self._organisation_keys.pop(key_id, None)
        for grant_id in grant_ids:
            self._grants.pop(grant_id, None)

    def _end_watch(self) -> None:
        self._heard_at = None
        self._generation += 1
        self._statuses.clear()
        self._organisation_keys.clear()
        self._grants.clear()

    async def watch(self) -> None:
        """Follow the RA's change feed until cancelled, opening it again whenever it ends."""
        while True:
            try:
                await self._watch_once()
            except grpc.aio.AioRpcError as exc:
                if self._heard_at is not None:  # said once per watch, not once per retry
                    _log.info("RA change feed ended", extra={"fields": {"code": exc.code().name}})
            except Exception:
                _log.exception("RA change feed failed")
            finally:
                self._end_watch()
            await asyncio.sleep(RECONNECT_SECONDS)

    async def _watch_once(self) -> None:
        acks: asyncio.Queue[int] = asyncio.Queue()
        acks.put_nowait(0)

        async def requests() -> AsyncIterator[ra_pb2.WatchChangesRequest]:
            while True:
                yield ra_pb2.WatchChangesRequest(acknowledged=await acks.get())

        call = self._watch_stub.WatchChanges(requests())
        try:
            async for change in call:
                if change.key_ids or change.grant_ids:
                    self._forget(list(change.key_ids), list(change.grant_ids))
                    acks.put_nowait(change.sequence)
                if self._heard_at is None:
                    _log.info("RA change feed open")
                self._heard_at = time.monotonic()
        finally:
            with contextlib.suppress(Exception):
                call.cancel()
