"""The list of stable reasons (``mobilesign.rpc.reasons``) is the list the code raises."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from mobilesign.errors import Error, Kind
from mobilesign.rpc.reasons import REASONS
from mobilesign.twoparty import Reason

ROOT = Path(__file__).resolve().parents[3]
_REASON = re.compile(r"[A-Z][A-Z0-9]*(_[A-Z0-9]+)+|[A-Z]{4,}")
#: Calls whose upper-case string arguments are reasons: error constructors, identifier formats
#: (their default reason, or the caller's), and the status details written directly.
_REASON_CALLS = ("Error", "Failed", "IdFormat", "check", "status_metadata")


def raised_reasons(root: Path = ROOT) -> set[str]:
    """Every reason the shipped code passes to an error, an identifier check or a status."""
    found: set[str] = set()
    for top in ("mobilesign", "ra", "server", "cosigner", "hsm_proxy", "client"):
        for path in (root / top).rglob("*.py"):
            if "v1" in path.relative_to(root).parts[:2]:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if not isinstance(node, ast.Call):
                    continue
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if not name.endswith(_REASON_CALLS):
                    continue
                for arg in [*node.args, *(k.value for k in node.keywords)]:
                    if (
                        isinstance(arg, ast.Constant)
                        and isinstance(arg.value, str)
                        and _REASON.fullmatch(arg.value)
                    ):
                        found.add(arg.value)
    # The protocol core's reasons are an enum, raised by value.
    return found | {reason.value for reason in Reason}


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
