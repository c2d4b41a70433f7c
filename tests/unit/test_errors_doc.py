"""``docs/errors.md`` is what ``scripts.gen_errors_doc`` writes from the code now, and lists every
stable reason with its status code, where it is raised and whether to retry."""

from __future__ import annotations

import re
from pathlib import Path

from mobilesign.errors import Kind
from mobilesign.rpc.reasons import REASONS
from scripts.gen_errors_doc import DOC, render, scan

_ROW = re.compile(r"^\| `([A-Z0-9_]+)` \| ([^|]*) \| ([^|]*) \| ([^|]*) \|", re.MULTILINE)


def _rows(text: str) -> dict[str, tuple[str, str, str]]:
    return {m.group(1): (m.group(2), m.group(3), m.group(4)) for m in _ROW.finditer(text)}


def test_the_doc_is_what_the_generator_writes_now() -> None:
    assert DOC.read_text() == render(), (
        "docs/errors.md is stale: run .venv/bin/python -m scripts.gen_errors_doc"
    )


def test_every_reason_has_a_row_with_a_code_and_a_source() -> None:
    rows = _rows(DOC.read_text())
    assert sorted(rows) == sorted(REASONS)
    for reason, (codes, raised_by, _) in rows.items():
        assert codes != "—", reason
        assert raised_by != "—", reason


def test_rows_say_code_source_and_retry_as_the_code_does() -> None:
    rows = _rows(render())
    assert rows["WRONG_PIN"] == ("`PERMISSION_DENIED`", "cosigner", "no")
    assert rows["HSM_QUEUE_FULL"] == ("`RESOURCE_EXHAUSTED`", "HSM proxy", "after 1 s")
    assert rows["QUOTA_EXCEEDED"] == ("`RESOURCE_EXHAUSTED`", "gateway, HSM proxy", "no")
    # A kind given at the call (both branches), fixed by the error class, or its default.
    assert rows["CALLER_NOT_AUTHORISED"][0] == "`PERMISSION_DENIED`, `UNAUTHENTICATED`"
    assert rows["ROOT_MISMATCH"][0] == "`INVALID_ARGUMENT`"
    assert rows["UNTRUSTED_CA"][:2] == ("`INVALID_ARGUMENT`", "SDK")
    assert rows["STREAM_ENDED"][0] == "`ABORTED`, `UNAVAILABLE`"
    assert "attempts_left" in render().split("`KEY_LOCKED`", 1)[1].split("\n", 1)[0]


def test_the_scan_reads_kind_message_and_metadata_from_a_call(tmp_path: Path) -> None:
    (tmp_path / "ra").mkdir()
    (tmp_path / "ra" / "new.py").write_text(
        "class FixedError(Error):\n"
        "    def __init__(self, reason: str, message: str) -> None:\n"
        "        super().__init__(Kind.CONFLICT, reason, message)\n"
        "class LaterError(FixedError):\n"
        "    pass\n"
        'raise RaError(Kind.EXHAUSTED, "BRAND_NEW", f"at most {n} a day", {"limit": "3"})\n'
        'raise LaterError("OTHER_NEW", "taken")\n'
    )
    sites = {site.reason: site for site in scan(tmp_path) if site.reason.endswith("_NEW")}
    assert sites["BRAND_NEW"].kinds == {Kind.EXHAUSTED}
    assert (sites["BRAND_NEW"].package, sites["BRAND_NEW"].message) == ("ra", "at most … a day")
    assert sites["BRAND_NEW"].metadata == ("limit",)
    assert sites["OTHER_NEW"].kinds == {Kind.CONFLICT}
    assert sites["OTHER_NEW"].message == "taken"
