"""The cosigner: holds the cloud share of every user key and runs the two-party protocols with
phones over bidirectional streams. Runs as ``python -m cosigner``."""
