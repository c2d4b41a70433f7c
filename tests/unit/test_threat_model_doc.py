"""``docs/threat-model.md`` names the tests that show each promise: every one it names exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_FILE = re.compile(r"`((?:[\w/]+/)?test_\w+\.py)(?:::(\w+))?`")
_BARE = re.compile(r"`::(\w+)`")


def _test_files() -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = {}
    for path in (ROOT / "tests").rglob("test_*.py"):
        found.setdefault(path.name, []).append(path)
    return found


def test_every_test_the_threat_model_names_exists() -> None:
    text = (ROOT / "docs" / "threat-model.md").read_text()
    files = _test_files()
    named = 0
    for line in text.splitlines():
        last: Path | None = None
        for match in _FILE.finditer(line):
            path, test = match.group(1), match.group(2)
            candidates = [ROOT / path] if "/" in path else files.get(path, [])
            assert candidates, path
            assert all(c.exists() for c in candidates), path
            last = candidates[0]
            if test:
                assert f"def {test}(" in last.read_text(), f"{path}::{test}"
                named += 1
        for match in _BARE.finditer(line):
            assert last is not None, line
            assert f"def {match.group(1)}(" in last.read_text(), f"{last.name}::{match.group(1)}"
            named += 1
    assert named >= 10
