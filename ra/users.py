"""The RA's user registry and the enrolment tickets issued to users.

Each method is one function on the database's thread, one statement in autocommit mode (its own
durable transaction). A statement's rows are fetched to the end: one still in progress would keep
its autocommit transaction open past the function, and a write after it would join it
uncommitted.
"""

from __future__ import annotations

from dataclasses import dataclass

from mobilesign import ids, tickets
from mobilesign.errors import Kind
from mobilesign.storage.connection import IntegrityError
from mobilesign.storage.database import Database
from ra.errors import RaError

_MAX_DISPLAY_NAME = 200


@dataclass(frozen=True)
class User:
    """A registered member of staff."""

    user_id: str
    display_name: str
    created_at: int


@dataclass(frozen=True)
class TicketState:
    """An issued ticket: its user, whether it allows a key besides the user's others, and the
    certificate issued against it (if any)."""

    user_id: str
    additional_key: bool
    activation_code: bytes
    certificate_serial: str | None


class UserStore:
    """Users and the tickets issued to them."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, user_id: str, display_name: str, now: int) -> User:
        """Register a user; ALREADY_EXISTS if the id is taken."""
        ids.USER_ID.check(user_id)
        if len(display_name) > _MAX_DISPLAY_NAME:
            raise RaError(Kind.INVALID, "MALFORMED_DISPLAY_NAME", "display name too long")
        try:
            await self._db.run(
                lambda c: c.execute(
                    "INSERT INTO users (user_id, display_name, created_at) VALUES (?, ?, ?)",
                    (user_id, display_name, now),
                )
            )
        except IntegrityError:
            raise RaError(Kind.CONFLICT, "USER_EXISTS", "the user id is taken") from None
        return User(user_id, display_name, now)

    async def get(self, user_id: str) -> User:
        """A registered user; NOT_FOUND otherwise."""
        ids.USER_ID.check(user_id)
        rows = await self._db.run(
            lambda c: c.execute(
                "SELECT user_id, display_name, created_at FROM users WHERE user_id = ?", (user_id,)
            ).fetchall()
        )
        if not rows:
            raise RaError(Kind.NOT_FOUND, "USER_NOT_FOUND", "no such user")
        row = rows[0]
        return User(row["user_id"], row["display_name"], row["created_at"])

    async def record_ticket(self, claims: tickets.Claims, activation_code: bytes) -> None:
        """Remember an issued ticket and its activation code (the cosigner enforces the
        ticket's single use for enrolment, the RA its single use for a certificate)."""
        await self._db.run(
            lambda c: c.execute(
                "INSERT INTO tickets (ticket_id, user_id, issued_at, expires_at, additional_key,"
                " activation_code) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    claims.ticket_id,
                    claims.user_id,
                    claims.issued_at,
                    claims.expires_at,
                    int(claims.additional_key),
                    activation_code,
                ),
            )
        )

    async def ticket_state(self, ticket_id: str) -> TicketState | None:
        """What the RA recorded of a ticket it issued, or None."""
        rows = await self._db.run(
            lambda c: c.execute(
                "SELECT user_id, additional_key, activation_code, certificate_serial FROM tickets"
                " WHERE ticket_id = ?",
                (ticket_id,),
            ).fetchall()
        )
        if not rows:
            return None
        row = rows[0]
        return TicketState(
            row["user_id"],
            bool(row["additional_key"]),
            bytes(row["activation_code"]),
            row["certificate_serial"],
        )

    async def certified_serials(self, user_id: str) -> list[str]:
        """Serials of the personal certificates issued against the user's tickets."""
        rows = await self._db.run(
            lambda c: c.execute(
                "SELECT certificate_serial FROM tickets WHERE user_id = ?"
                " AND certificate_serial IS NOT NULL ORDER BY issued_at",
                (user_id,),
            ).fetchall()
        )
        return [row["certificate_serial"] for row in rows]

    async def mark_ticket_certified(self, ticket_id: str, serial: str) -> bool:
        """Record the certificate issued against a ticket; False if one already was."""
        # Every row fetched in the function: a RETURNING statement still open keeps its
        # autocommit transaction open, and another write on the connection would join it
        # uncommitted.
        rows = await self._db.run(
            lambda c: c.execute(
                "UPDATE tickets SET certificate_serial = ? WHERE ticket_id = ?"
                " AND certificate_serial IS NULL RETURNING 1",
                (serial, ticket_id),
            ).fetchall()
        )
        return bool(rows)
