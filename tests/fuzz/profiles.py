"""Hypothesis settings for the fuzz: "ci" (the default, small enough for ``make test``) and
"long" (``make fuzz``), chosen with ``MOBILESIGN_FUZZ_PROFILE``.

The profiles are applied per test, never loaded globally, so the project's other property tests
keep their own settings.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

#: Examples per test (one test per unary RPC, one per stream) in each profile. The long one
#: makes 48 x 2,100 + 2,000 + 1,000 + 1,000 = 104,800 cases with today's 51 RPCs (a Sign
#: example, a whole session with the PIN check, costs about ten unary ones).
EXAMPLES = {
    "ci": {"unary": 10, "KeyGen": 20, "Sign": 15, "WatchChanges": 10},
    "long": {"unary": 2_100, "KeyGen": 2_000, "Sign": 1_000, "WatchChanges": 1_000},
}
_CHECKS = list(HealthCheck)

for _name in EXAMPLES:
    settings.register_profile(
        f"mobilesign-fuzz-{_name}",
        deadline=None,
        database=None,
        derandomize=_name == "ci",
        suppress_health_check=_CHECKS,
        print_blob=True,
    )


def profile() -> str:
    """The selected profile's name."""
    name = os.environ.get("MOBILESIGN_FUZZ_PROFILE", "ci")
    if name not in EXAMPLES:
        raise ValueError(f"MOBILESIGN_FUZZ_PROFILE must be one of {sorted(EXAMPLES)}")
    return name


def for_kind(kind: str) -> settings:
    """Settings for a test of ``kind`` (``unary`` or a stream's name: ``KeyGen``, ``Sign``,
    ``WatchChanges``) in the selected profile."""
    name = profile()
    # MOBILESIGN_FUZZ_EXAMPLES overrides the count of every test (for a run of another size).
    examples = int(os.environ.get("MOBILESIGN_FUZZ_EXAMPLES", "0")) or EXAMPLES[name][kind]
    return settings(settings.get_profile(f"mobilesign-fuzz-{name}"), max_examples=examples)
