"""Runs a whole mobilesign deployment on one machine: each service its own process on loopback,
mutual TLS between them. Used by ``make run``, ``make demo`` and the integration tests."""

from mobilesign.testing.deployment import SERVICES, Deployment

__all__ = ["SERVICES", "Deployment"]
