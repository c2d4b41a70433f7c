"""A write the RA acknowledged is committed when it returns, even beside a statement with a
RETURNING clause on the same connection (such a statement, while open, keeps its autocommit
transaction open, and any other write joins it uncommitted)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from mobilesign import tickets
from mobilesign.storage.schema import Location
from ra.database import open_ra_db
from ra.users import UserStore
from tests.conftest import peek

NOW = 1_780_000_000


def _visible(where: Location, user_id: str) -> bool:
    with peek(where) as other:
        return (
            other.execute("SELECT 1 FROM users WHERE user_id = ?", (user_id,)).fetchone()
            is not None
        )


async def test_a_write_beside_a_returning_statement_is_committed_when_it_returns(
    where: Callable[[str], Location],
) -> None:
    path = where("ra")
    db = await open_ra_db(path)
    try:
        users = UserStore(db)
        await users.create("alice", "Alice", NOW)
        claims = tickets.Claims("t" * 32, "alice", NOW, NOW + 600, False)
        await users.record_ticket(claims, b"code")

        async def create_bob() -> bool:
            await users.create("bob", "Bob", NOW)
            return _visible(path, "bob")  # at the moment the write was acknowledged

        certified, bob_committed = await asyncio.gather(
            users.mark_ticket_certified(claims.ticket_id, "01"), create_bob()
        )
        assert certified
        assert bob_committed
    finally:
        await db.close()
