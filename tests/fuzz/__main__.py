"""``python -m tests.fuzz`` (``make fuzz``): the long fuzz run, at least 10^5 cases.

Runs the fuzz tests with the "long" hypothesis profile and prints, at the end, how many cases
ran and how many were flagged per RPC (0 expected). Extra arguments go to pytest.
"""

from __future__ import annotations

import os
import sys
import time

import pytest

from tests.fuzz.harness import TALLY

#: The least a whole long run must make (fewer means a profile or a strategy shrank).
MINIMUM_CASES = 100_000


def main() -> int:
    """Run the long fuzz; the exit status is pytest's, or 1 when a whole run made fewer than
    :data:`MINIMUM_CASES` cases."""
    os.environ.setdefault("MOBILESIGN_FUZZ_PROFILE", "long")
    started = time.monotonic()
    status = pytest.main(["-q", "-p", "no:cacheprovider", "tests/fuzz", *sys.argv[1:]])
    cases = sum(TALLY.ran.values())
    print(f"fuzz: {cases:,} cases in {time.monotonic() - started:.0f} s", flush=True)
    whole = (
        not sys.argv[1:]
        and os.environ["MOBILESIGN_FUZZ_PROFILE"] == "long"
        and not os.environ.get("MOBILESIGN_FUZZ_EXAMPLES")
    )
    if status == 0 and whole and cases < MINIMUM_CASES:
        print(f"fuzz: fewer than {MINIMUM_CASES:,} cases", flush=True)
        return 1
    return int(status)


if __name__ == "__main__":
    sys.exit(main())
