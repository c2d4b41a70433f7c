"""The list of stable reasons (``mobilesign.rpc.reasons``) is the list the code raises."""

from __future__ import annotations

from pathlib import Path

from mobilesign.errors import Error, Kind
from mobilesign.rpc.reasons import REASONS
from scripts.gen_errors_doc import raised_reasons


def test_every_raised_reason_is_listed_and_every_listed_one_raised() -> None:
    raised = raised_reasons()
    assert {"TICKET_FORGED", "WRONG_PIN", "MALFORMED_REQUEST", "INTERNAL"} <= raised
    assert sorted(raised - REASONS) == [], "raised but not listed in mobilesign.rpc.reasons"
    assert sorted(REASONS - raised) == [], "listed in mobilesign.rpc.reasons but never raised"


def test_the_scan_notices_a_new_reason(tmp_path: Path) -> None:
    (tmp_path / "server").mkdir()
    (tmp_path / "server" / "new.py").write_text(
        'raise GatewayError(Kind.DENIED, "BRAND_NEW_REASON", "no")\n'
    )
    assert "BRAND_NEW_REASON" in raised_reasons(tmp_path)
    assert "BRAND_NEW_REASON" not in REASONS


def test_reasons_are_stable_identifiers() -> None:
    for reason in REASONS:
        Error(Kind.INVALID, reason, "accepted as a reason")
