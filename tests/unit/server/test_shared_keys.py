"""The keys the gateways on one database must share: the first start stores a check of each,
a later start with another key stops, naming the setting and never the key (both back ends)."""

from __future__ import annotations

import secrets
from collections.abc import Callable

import pytest

from mobilesign.hosting.config import StartupError
from mobilesign.storage.schema import Location
from server import shared_keys
from server.database import open_gateway_db

SETTING = "[gateway] record_key_file"


async def test_the_same_key_passes_and_another_stops_the_start(
    where: Callable[[str], Location],
) -> None:
    key, other = secrets.token_bytes(32), secrets.token_bytes(32)
    first = await open_gateway_db(where("gateway"))
    second = await open_gateway_db(where("gateway"))  # another gateway on the same store
    try:
        await shared_keys.check_shared(first, "record", key, SETTING)
        await shared_keys.check_shared(second, "record", key, SETTING)
        await shared_keys.check_shared(first, "record", key, SETTING)  # a restart
        with pytest.raises(StartupError) as refused:
            await shared_keys.check_shared(second, "record", other, SETTING)
        text = str(refused.value)
        assert SETTING in text
        assert "record" in text
        assert key.hex() not in text
        assert other.hex() not in text
        # Each name has its own check: the challenge key is not compared with the record key.
        await shared_keys.check_shared(second, "challenge", other, "[gateway] challenge_key_file")
        with pytest.raises(StartupError):
            await shared_keys.check_shared(first, "challenge", key, "[gateway] challenge_key_file")
    finally:
        await first.close()
        await second.close()


def test_the_stored_check_is_no_key() -> None:
    key = secrets.token_bytes(32)
    check = shared_keys.key_check("record", key)
    assert len(check) == 32
    assert check != key
    assert check != shared_keys.key_check("challenge", key)
    assert check == shared_keys.key_check("record", key)
