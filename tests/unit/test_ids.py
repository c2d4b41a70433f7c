"""Identifier formats: what each accepts and refuses, and how a refusal reads."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mobilesign import ids
from mobilesign.errors import Error, Kind

# Refused by every format: empty, surrounding or inner whitespace, a trailing newline (which
# ``re.match`` with ``$`` would let through), NUL, and look-alikes outside ASCII.
_NEVER = [
    "",
    " ",
    "\n",
    "a\n",
    "0\n",
    " a",
    "a ",
    "a b",
    "a\tb",
    "a\x00",
    "\u0430",  # Cyrillic a
    "\uff41",  # fullwidth a
    "\u0660",  # Arabic-Indic zero (a digit to ``\d``)
    "\uff10",  # fullwidth zero
    "é",
]

_NAME_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-"


def _hex_cases(digits: int) -> tuple[list[str], list[str]]:
    """Accepted and refused values for a format of exactly ``digits`` lowercase hex digits."""
    accepted = ["0" * digits, "f" * digits, ("0123456789abcdef" * 4)[:digits]]
    refused = [
        "0" * (digits - 1),
        "0" * (digits + 1),
        "0" * (digits * 2),
        "A" * digits,
        "a" * (digits - 1) + "B",
        "F" * digits,
        "g" + "0" * (digits - 1),
        "0" * digits + "\n",
        "0" * digits + " ",
        " " + "0" * (digits - 1),
        "0" * (digits - 2) + "  ",  # bytes.fromhex would skip the spaces
        "0x" + "0" * (digits - 2),
        "-" + "0" * (digits - 1),
        "\u0660" * digits,
        "\uff10" * digits,
        *_NEVER,
    ]
    return accepted, refused


_HEX32 = _hex_cases(32)
_HEX64 = _hex_cases(64)

CASES: dict[str, tuple[ids.IdFormat, list[str], list[str]]] = {
    "user id": (
        ids.USER_ID,
        ["a", "Z", "0", "alice", "alice.smith@example.org", "a-b_c.d@e", "x" * 64, "@", "."],
        ["x" * 65, "a/b", "a:b", "a+b", "a,b", "alice\r", "ALICE\n", "ali\u00e7e", *_NEVER],
    ),
    "organisation id": (
        ids.ORGANISATION_ID,
        ["a", "ACME", "acme-corp_1.0", "x" * 64, "-", "_", "."],
        ["x" * 65, "a@b", "a/b", "a:b", "acme corp", "acme\r", *_NEVER],
    ),
    "key label": (
        ids.KEY_LABEL,
        ["a", "org-1.sign_key", "CA", "x" * 64, "..", "-"],
        # ':' separates purpose from label in CKA_LABEL
        ["x" * 65, "ca:root", "a@b", "a/b", *_NEVER],
    ),
    "certificate serial": (
        ids.CERTIFICATE_SERIAL,
        ["0", "1", "00", "ff", "0123456789abcdef", "f" * 40],
        ["f" * 41, "FF", "0X1", "0x1", "-1", "+1", "1f\n", " 1f", "1 f", "g", *_NEVER],
    ),
    "record id": (ids.RECORD_ID, *_HEX32),
    "grant id": (ids.GRANT_ID, *_HEX32),
    "ticket id": (ids.TICKET_ID, *_HEX32),
    "organisation key id": (ids.ORGANISATION_KEY_ID, *_HEX32),
    "user key id": (ids.USER_KEY_ID, *_HEX64),
    "approval id": (ids.APPROVAL_ID, *_HEX32),
    "client id": (ids.CLIENT_ID, *_HEX32),
}

#: The reasons and messages the services have always answered with (tests of the RPCs
#: depend on the reasons; clients may show the messages).
DEFAULTS = {
    "user id": ("MALFORMED_USER_ID", "a user id is 1 to 64 characters of [A-Za-z0-9._@-]"),
    "organisation id": (
        "MALFORMED_ORGANISATION_ID",
        "an organisation id is 1 to 64 characters of [A-Za-z0-9._-]",
    ),
    "key label": ("MALFORMED_LABEL", "a label is 1 to 64 characters of [A-Za-z0-9._-]"),
    "certificate serial": ("MALFORMED_SERIAL", "a serial is lowercase hex, at most 40 digits"),
    "record id": ("MALFORMED_RECORD_ID", "a record id is 32 hex digits"),
    "grant id": ("MALFORMED_GRANT_ID", "a grant id is 32 hex digits"),
    "ticket id": ("MALFORMED_TICKET_ID", "a ticket id is 32 hex digits"),
    "organisation key id": ("MALFORMED_KEY_ID", "a key id is 32 hex digits"),
    "user key id": ("MALFORMED_KEY_ID", "a key id is 64 hex digits"),
    "approval id": ("MALFORMED_APPROVAL_ID", "an approval id is 32 hex digits"),
    "client id": ("MALFORMED_CLIENT_ID", "a client id is 32 hex digits"),
}


def test_every_format_is_tested() -> None:
    assert set(CASES) == set(ids.ALL) == set(DEFAULTS)
    for name, (fmt, _, _) in CASES.items():
        assert ids.ALL[name] is fmt
        assert fmt.name == name


@pytest.mark.parametrize(
    ("fmt", "value"),
    [
        pytest.param(fmt, value, id=f"{name}-{value!r}")
        for name, (fmt, accepted, _) in CASES.items()
        for value in accepted
    ],
)
def test_accepted(fmt: ids.IdFormat, value: str) -> None:
    assert fmt.matches(value)
    assert fmt.check(value) == value


@pytest.mark.parametrize(
    ("fmt", "value"),
    [
        pytest.param(fmt, value, id=f"{name}-{value!r}")
        for name, (fmt, _, refused) in CASES.items()
        for value in refused
    ],
)
def test_refused(fmt: ids.IdFormat, value: str) -> None:
    assert not fmt.matches(value)
    with pytest.raises(ids.IdError) as caught:
        fmt.check(value)
    reason, message = DEFAULTS[fmt.name]
    assert (caught.value.kind, caught.value.reason, caught.value.message) == (
        Kind.INVALID,
        reason,
        message,
    )


@pytest.mark.parametrize(
    ("fmt", "shortest", "longest"),
    [
        (ids.USER_ID, 1, 64),
        (ids.ORGANISATION_ID, 1, 64),
        (ids.KEY_LABEL, 1, 64),
        (ids.CERTIFICATE_SERIAL, 1, 40),
        (ids.RECORD_ID, 32, 32),
        (ids.GRANT_ID, 32, 32),
        (ids.TICKET_ID, 32, 32),
        (ids.ORGANISATION_KEY_ID, 32, 32),
        (ids.USER_KEY_ID, 64, 64),
    ],
    ids=lambda v: v.name if isinstance(v, ids.IdFormat) else str(v),
)
def test_boundary_lengths(fmt: ids.IdFormat, shortest: int, longest: int) -> None:
    for length in range(longest + 2):
        assert fmt.matches("a" * length) is (shortest <= length <= longest), length


def test_the_caller_may_name_its_own_reason_and_message() -> None:
    with pytest.raises(ids.IdError) as caught:
        ids.RECORD_ID.check("nope", reason="NO_SUCH_RECORD", message="not one of ours")
    assert (caught.value.reason, caught.value.message) == ("NO_SUCH_RECORD", "not one of ours")
    with pytest.raises(ids.IdError) as caught:
        ids.USER_KEY_ID.check("nope", message="a user key id is 64 hex digits")
    assert caught.value.reason == "MALFORMED_KEY_ID"


def test_an_id_error_is_an_invalid_error() -> None:
    error = ids.IdError("MALFORMED_USER_ID", "bad")
    assert isinstance(error, Error)
    assert error.kind is Kind.INVALID
    with pytest.raises(ValueError, match="not a stable reason"):
        ids.IdError("not stable", "bad")


def test_hex_formats_have_one_spelling_per_value() -> None:
    # The same key or record is never written two ways: what matches is the canonical hex.
    assert bytes.fromhex("AB" * 16).hex() == "ab" * 16
    assert not ids.ORGANISATION_KEY_ID.matches("AB" * 16)


@given(st.binary(min_size=16, max_size=16))
def test_random_sixteen_bytes_in_hex_are_32_hex_ids(raw: bytes) -> None:
    value = raw.hex()
    for fmt in (ids.RECORD_ID, ids.GRANT_ID, ids.TICKET_ID, ids.ORGANISATION_KEY_ID):
        assert fmt.matches(value)
    assert not ids.USER_KEY_ID.matches(value)


@given(st.binary(min_size=32, max_size=32))
def test_a_joint_public_key_in_hex_is_a_user_key_id(raw: bytes) -> None:
    assert ids.USER_KEY_ID.matches(raw.hex())
    assert not ids.RECORD_ID.matches(raw.hex())


@given(st.integers(min_value=0, max_value=2**160 - 1))
def test_serials_as_the_ca_formats_them(serial: int) -> None:
    assert ids.CERTIFICATE_SERIAL.matches(format(serial, "x"))


@given(st.text(alphabet=_NAME_ALPHABET, min_size=1, max_size=64))
def test_names_of_the_allowed_characters(value: str) -> None:
    assert ids.ORGANISATION_ID.matches(value)
    assert ids.KEY_LABEL.matches(value)
    assert ids.USER_ID.matches(value)
    assert ids.USER_ID.matches(value[:63] + "@")


@given(st.text(min_size=1, max_size=70))
def test_names_match_only_their_alphabet(value: str) -> None:
    expected = len(value) <= 64 and all(c in _NAME_ALPHABET for c in value)
    assert ids.ORGANISATION_ID.matches(value) is expected
    assert ids.KEY_LABEL.matches(value) is expected
    assert ids.USER_ID.matches(value) is (
        len(value) <= 64 and all(c in _NAME_ALPHABET + "@" for c in value)
    )
