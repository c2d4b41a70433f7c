"""mobilesign: escrowed organisation keys used from phones, each use co-signed with a two-party
user key and recorded in a witnessed Merkle-tree log.

The library every service shares. Its pure core (no gRPC, no SQL, no clock reads: time is passed
in) is :mod:`mobilesign.twoparty`, :mod:`mobilesign.auditlog`, :mod:`mobilesign.pkix`,
:mod:`mobilesign.ca`, :mod:`mobilesign.records`, :mod:`mobilesign.tickets`,
:mod:`mobilesign.deviceauth`, :mod:`mobilesign.ids`, :mod:`mobilesign.domains` and
:mod:`mobilesign.errors`. Around it: :mod:`mobilesign.rpc` (what both ends of a call need),
:mod:`mobilesign.hosting` (the server side), :mod:`mobilesign.storage` (SQLite), and
:mod:`mobilesign.testing` (only for tests, the demo and benchmarks). :mod:`mobilesign.v1` holds
the generated API stubs. ``docs/architecture.md`` says which may import which.
"""
