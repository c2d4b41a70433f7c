"""Every identifier format the services accept, with its check.

Each format is an :class:`IdFormat`: a name, a pattern matched with ``fullmatch`` (so a trailing
newline is refused, unlike ``re.match`` with ``$``), and the stable reason and message of a
refusal. Hexadecimal identifiers are lowercase only, so each value has exactly one spelling.
Character classes are spelled out, so nothing outside ASCII matches.

Use :meth:`IdFormat.matches` where a malformed identifier is not an error in itself (it is simply
not found), and :meth:`IdFormat.check` to refuse it with :class:`IdError` (``INVALID``). A caller
whose API has always answered with another reason or message passes its own; the defaults here
are the ones most call sites use.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from mobilesign.errors import Error, Kind


class IdError(Error):
    """A malformed identifier (INVALID, with the format's or the caller's reason)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(Kind.INVALID, reason, message)


@dataclass(frozen=True)
class IdFormat:
    """One identifier format: the pattern a value must match entirely, and how to refuse it."""

    name: str
    pattern: re.Pattern[str]
    reason: str
    message: str

    def matches(self, value: str) -> bool:
        """True when the whole of ``value`` has this format."""
        return self.pattern.fullmatch(value) is not None

    def check(self, value: str, *, reason: str | None = None, message: str | None = None) -> str:
        """Return ``value`` if it has this format; otherwise raise :class:`IdError` with
        ``reason`` and ``message`` (the format's own when not given)."""
        if not self.matches(value):
            raise IdError(reason or self.reason, message or self.message)
        return value


def _hex(digits: int) -> re.Pattern[str]:
    return re.compile(f"[0-9a-f]{{{digits}}}")


#: A registered member of staff, chosen by an administrator (also the certificate's CN).
USER_ID = IdFormat(
    "user id",
    re.compile(r"[A-Za-z0-9._@-]{1,64}"),
    "MALFORMED_USER_ID",
    "a user id is 1 to 64 characters of [A-Za-z0-9._@-]",
)
#: A registered organisation, chosen by an administrator.
ORGANISATION_ID = IdFormat(
    "organisation id",
    re.compile(r"[A-Za-z0-9._-]{1,64}"),
    "MALFORMED_ORGANISATION_ID",
    "an organisation id is 1 to 64 characters of [A-Za-z0-9._-]",
)
#: The label of a key pair in the HSM (unique per purpose), chosen by whoever generates it.
KEY_LABEL = IdFormat(
    "key label",
    re.compile(r"[A-Za-z0-9._-]{1,64}"),
    "MALFORMED_LABEL",
    "a label is 1 to 64 characters of [A-Za-z0-9._-]",
)
#: A certificate serial number: lowercase hex of at most 20 octets (RFC 5280), no ``0x``.
CERTIFICATE_SERIAL = IdFormat(
    "certificate serial",
    re.compile(r"[0-9a-f]{1,40}"),
    "MALFORMED_SERIAL",
    "a serial is lowercase hex, at most 40 digits",
)
#: A service record: 16 random bytes, in hex.
RECORD_ID = IdFormat("record id", _hex(32), "MALFORMED_RECORD_ID", "a record id is 32 hex digits")
#: A grant of operations on an organisation key: 16 random bytes, in hex.
GRANT_ID = IdFormat("grant id", _hex(32), "MALFORMED_GRANT_ID", "a grant id is 32 hex digits")
#: An enrolment ticket: 16 random bytes, in hex.
TICKET_ID = IdFormat("ticket id", _hex(32), "MALFORMED_TICKET_ID", "a ticket id is 32 hex digits")
#: An organisation key: its HSM ``CKA_ID``, 16 random bytes, in hex.
ORGANISATION_KEY_ID = IdFormat(
    "organisation key id", _hex(32), "MALFORMED_KEY_ID", "a key id is 32 hex digits"
)
#: A user's personal key: the joint (FROST group) Ed25519 public key, 32 bytes, in hex.
USER_KEY_ID = IdFormat("user key id", _hex(64), "MALFORMED_KEY_ID", "a key id is 64 hex digits")

#: A request for signatures awaiting a user's approval (CSC): 16 random bytes, in hex.
APPROVAL_ID = IdFormat(
    "approval id", _hex(32), "MALFORMED_APPROVAL_ID", "an approval id is 32 hex digits"
)
#: An application registered for the CSC endpoint (its OAuth 2.0 client_id): 16 random bytes.
CLIENT_ID = IdFormat("client id", _hex(32), "MALFORMED_CLIENT_ID", "a client id is 32 hex digits")

#: Every format, by name.
ALL: Mapping[str, IdFormat] = MappingProxyType(
    {
        f.name: f
        for f in (
            USER_ID,
            ORGANISATION_ID,
            KEY_LABEL,
            CERTIFICATE_SERIAL,
            RECORD_ID,
            GRANT_ID,
            TICKET_ID,
            ORGANISATION_KEY_ID,
            USER_KEY_ID,
            APPROVAL_ID,
            CLIENT_ID,
        )
    }
)
