"""The certification authority: its root certificate, issuance, revocation and CRLs.

It depends only on a :class:`mobilesign.pkix.Signer` for its key (the HSM, through the HSM proxy),
on a :class:`CertificateStore` for its records and on a clock passed in, so it runs unchanged in
any process. Registration checks (who may get which certificate) belong to the RA; the CA signs
what the RA approved, records it, and answers status.
"""

from mobilesign.ca.authority import CaError, CaSettings, CertificateAuthority, Clock, Issued, Status
from mobilesign.ca.repository import CertificateRecord, CertificateStore, SerialInUse

__all__ = [
    "CaError",
    "CaSettings",
    "CertificateAuthority",
    "CertificateRecord",
    "CertificateStore",
    "Clock",
    "Issued",
    "SerialInUse",
    "Status",
]
