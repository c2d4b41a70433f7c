"""Shared hosting for mobilesign's gRPC services.

Configuration, the development PKI, mutual TLS credentials, caller identity and authorisation,
structured logging with request ids, error details, and the server lifecycle (health, reflection,
graceful shutdown). Each service (`hsm_proxy`, `cosigner`, `server`) builds on this.
"""
