"""The gateway's user registry and issued enrolment tickets, in SQLite."""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import aiosqlite
import grpc

from grpc_host.errors import ServiceError
from storage.sqlite import open_database

_USER_ID = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
_MAX_DISPLAY_NAME = 200

_MIGRATIONS = (
    """
    CREATE TABLE users (
        user_id TEXT PRIMARY KEY,
        display_name TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE tickets (
        ticket_id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL REFERENCES users(user_id),
        issued_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL
    )
    """,
)


@dataclass(frozen=True)
class User:
    """A registered member of staff."""

    user_id: str
    display_name: str
    created_at: int


def check_user_id(user_id: str) -> None:
    """Refuse user ids outside 1 to 64 characters of ``[A-Za-z0-9._@-]``."""
    if not _USER_ID.match(user_id):
        raise ServiceError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "MALFORMED_USER_ID",
            "a user id is 1 to 64 characters of [A-Za-z0-9._@-]",
        )


class UserStore:
    """Users and the tickets issued to them."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    @classmethod
    async def open(cls, path: Path) -> UserStore:
        """Open (creating) the registry database at ``path``."""
        return cls(await open_database(path, _MIGRATIONS))

    async def close(self) -> None:
        """Close the database."""
        await self._db.close()

    async def create(self, user_id: str, display_name: str, now: int) -> User:
        """Register a user; ALREADY_EXISTS if the id is taken."""
        check_user_id(user_id)
        if len(display_name) > _MAX_DISPLAY_NAME:
            raise ServiceError(
                grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_DISPLAY_NAME", "display name too long"
            )
        try:
            await self._db.execute(
                "INSERT INTO users (user_id, display_name, created_at) VALUES (?, ?, ?)",
                (user_id, display_name, now),
            )
        except sqlite3.IntegrityError:
            raise ServiceError(
                grpc.StatusCode.ALREADY_EXISTS, "USER_EXISTS", "the user id is taken"
            ) from None
        return User(user_id, display_name, now)

    async def get(self, user_id: str) -> User:
        """A registered user; NOT_FOUND otherwise."""
        check_user_id(user_id)
        async with self._db.execute(
            "SELECT user_id, display_name, created_at FROM users WHERE user_id = ?", (user_id,)
        ) as cursor:
            row = await cursor.fetchone()
        if row is None:
            raise ServiceError(grpc.StatusCode.NOT_FOUND, "USER_NOT_FOUND", "no such user")
        return User(row["user_id"], row["display_name"], row["created_at"])

    async def record_ticket(
        self, ticket_id: str, user_id: str, issued_at: int, expires_at: int
    ) -> None:
        """Remember an issued ticket (for audit; the cosigner enforces single use)."""
        await self._db.execute(
            "INSERT INTO tickets (ticket_id, user_id, issued_at, expires_at) VALUES (?, ?, ?, ?)",
            (ticket_id, user_id, issued_at, expires_at),
        )
