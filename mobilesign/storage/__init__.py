"""Durable storage shared by the services: a commit that returned is durable.

Each service keeps its own repositories (small classes with the queries they need) on top of
:class:`~mobilesign.storage.database.Database`: every transaction is one plain function of a
:class:`~mobilesign.storage.connection.Connection`, run on the database's own thread (one
hop per transaction, not per statement), in the SQL that SQLite (WAL, synchronous commits) and
PostgreSQL read alike.
"""
