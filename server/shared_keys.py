"""Keys every gateway on one database must share, checked at start.

A phone may use any gateway for any step, so the gateways' record key (a prepared record's
MAC) and challenge key (a login challenge's MAC) must be the same everywhere. The first gateway
to start stores, per key, an HMAC of a fixed text under that key; each later start compares its
own: a gateway given another key file stops at start, naming the setting, instead of refusing
its phones' records and logins at random. The stored value says nothing about the key.
"""

from __future__ import annotations

import hashlib
import hmac

from mobilesign import domains
from mobilesign.hosting.config import StartupError
from mobilesign.storage.connection import Connection
from mobilesign.storage.database import Database


def key_check(name: str, key: bytes) -> bytes:
    """The value stored for ``key`` under ``name``."""
    return hmac.new(key, domains.SHARED_KEY_CHECK + name.encode(), hashlib.sha256).digest()


async def check_shared(db: Database, name: str, key: bytes, setting: str) -> None:
    """Store ``key``'s check under ``name`` if none is stored; raise :class:`StartupError`
    (naming ``setting``, never the key) if the stored one is another key's."""
    mine = key_check(name, key)

    def stored(c: Connection) -> bytes:
        c.execute(
            "INSERT INTO shared_keys (name, key_check) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
            (name, mine),
        )
        (row,) = c.execute("SELECT key_check FROM shared_keys WHERE name = ?", (name,)).fetchall()
        return bytes(row[0])

    if not hmac.compare_digest(await db.run(stored), mine):
        raise StartupError(
            f"the {name} key ({setting}) is not the one the other gateways on this database use: "
            "give every gateway the same key file (docs/deployment.md, keys the gateways share)"
        )
