"""Durable storage shared by the services: SQLite through aiosqlite, WAL, synchronous commits.

Each service keeps its own repository (a small class with the queries it needs) on top of
:func:`open_database`, or, where a transaction runs many statements on a hot path, of
:class:`~mobilesign.storage.database.Database` (one thread hop per transaction, not per
statement); the repositories use plain SQL so that a PostgreSQL implementation can
stand beside them when a deployment spans machines.
"""
