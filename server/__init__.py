"""The signing gateway: user registry, enrolment tickets, and (later) authorisation, service
records and the audit log. Runs as ``python -m server``."""
