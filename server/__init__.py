"""The signing gateway: phone sessions, service records, the audit log and receipts. It asks the
RA about certificates and grants, and the HSM proxy to witness the log and use organisation keys.
Runs as ``python -m server``."""
