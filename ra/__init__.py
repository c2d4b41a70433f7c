"""The registration authority and CA: users, enrolment tickets, organisations and their keys,
certificates, grants and revocation. The only service that may use the CA, ticket and grant keys
at the HSM proxy. Runs as ``python -m ra``."""
