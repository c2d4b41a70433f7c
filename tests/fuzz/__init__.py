"""Property-based fuzz of every RPC of every service against real processes.

``make test`` runs it small (the "ci" hypothesis profile); ``make fuzz`` (``python -m
tests.fuzz``) runs the "long" profile, at least 10^5 cases, and prints the cases and flagged
answers per RPC.
"""
