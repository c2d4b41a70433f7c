"""``python -m tests.fuzz`` (``make fuzz``): the long fuzz run, at least 10^5 cases.

Runs the fuzz tests with the "long" hypothesis profile and prints, at the end, how many cases
ran and how many were flagged per RPC (0 expected). Extra arguments go to pytest.
"""

from __future__ import annotations

import os
import sys
import time

import pytest


def main() -> int:
    """Run the long fuzz; the exit status is pytest's."""
    os.environ.setdefault("MOBILESIGN_FUZZ_PROFILE", "long")
    started = time.monotonic()
    status = pytest.main(["-q", "-p", "no:cacheprovider", "tests/fuzz", *sys.argv[1:]])
    print(f"fuzz: {time.monotonic() - started:.0f} s", flush=True)
    return int(status)


if __name__ == "__main__":
    sys.exit(main())
