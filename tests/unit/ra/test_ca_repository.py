"""The CA's records on a temporary SQLite file: the latest certificate of a key when a key is
certified again within the second its earlier certificate was revoked."""

from __future__ import annotations

from collections.abc import Callable

from mobilesign.ca import CertificateRecord
from mobilesign.storage.schema import Location
from ra.ca_repository import CaStore

NOW = 1_780_000_000


def _record(serial: str) -> CertificateRecord:
    return CertificateRecord(
        serial=serial,
        kind="organisation",
        subject_key_id="k" * 32,
        holder="org",
        der=b"der-" + serial.encode(),
        not_after=NOW + 86_400,
        issued_at=NOW,
        revoked_at=None,
        revocation_reason=None,
    )


async def _latest(store: CaStore) -> str:
    latest = await store.latest_for_key("k" * 32)
    return latest.serial if latest else ""


async def test_the_latest_of_a_key_is_the_one_issued_after_the_revocation(
    where: Callable[[str], Location],
) -> None:
    store = await CaStore.open(where("ca"))
    try:
        # Serials are random: here the later one sorts first.
        await store.add(_record("ff"))
        assert await store.revoke("ff", NOW, "superseded")
        await store.add(_record("01"))
        assert await _latest(store) == "01"
        assert await store.revoke("01", NOW + 1, "superseded")
        await store.add(_record("80"))
        assert await _latest(store) == "80"
        assert await store.any_revoked_for_key("k" * 32)
    finally:
        await store.close()
