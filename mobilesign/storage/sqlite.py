"""The settings of every SQLite connection the services open."""

from __future__ import annotations

#: Every connection's settings: write-ahead log, a commit is on disk when it returns, foreign
#: keys enforced, and a wait (not an error) when another connection holds the write lock.
PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=FULL",
    "PRAGMA foreign_keys=ON",
    "PRAGMA busy_timeout=5000",
)
