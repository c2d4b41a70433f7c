"""The certification authority: its root certificate, issuance, revocation and CRLs.

Hosted by the gateway process by default, but it depends only on a :class:`pkix.Signer` for its
key (the HSM, through the HSM proxy) and on its own database, so it can move to a process of its
own behind an RPC without a redesign. Registration checks (who may get which certificate) belong
to the RA in the gateway; the CA signs what the RA approved, records it, and answers status.
"""

from ca.authority import CaSettings, CertificateAuthority, Issued, Status
from ca.store import CaStore

__all__ = ["CaSettings", "CaStore", "CertificateAuthority", "Issued", "Status"]
