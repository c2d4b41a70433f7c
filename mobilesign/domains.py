"""Every domain-separation tag and associated-data prefix the services sign, MAC, hash or seal
under, in one place so that no two purposes can share one.

Each tag is ASCII ``mobilesign/v1 <purpose>`` and, when something follows it, ends in one zero
byte; none is a prefix of another, so bytes made for one purpose never read as another's
(``tests/unit/test_domains.py`` keeps it so). The one exception to the spelling is
:data:`HSM_SEAL_AAD`, older than the convention and kept byte for byte: changing it would make
every sealed secret unreadable. Values never change within ``v1``; docs/protocol.md lists the
ones phones use.

FROST's own context string (``FROST-ED25519-SHA512-v1``, RFC 9591) belongs to the ciphersuite
and stays in :mod:`mobilesign.twoparty`.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

# Phone and cosigner (mobilesign.deviceauth; docs/protocol.md section 2).
#: Device-key signature that binds a phone's device key to the joint key it just enrolled.
ENROL = b"mobilesign/v1 enrol\x00"
#: Device-key signature (and PIN proof) that opens a signing session with the cosigner.
SESSION = b"mobilesign/v1 session\x00"
#: HMAC input of a PIN proof, over the session transcript.
PIN_PROOF = b"mobilesign/v1 pin-proof\x00"
#: Hashed with the device key into the salt of the PBKDF2 PIN verifier.
PIN_VERIFIER_SALT = b"mobilesign/v1 pin-verifier\x00"
#: Device-key signature that opens a session with the gateway (not the cosigner).
GATEWAY_SESSION = b"mobilesign/v1 gateway-session\x00"

# RA, gateway, cosigner and HSM proxy (mobilesign.records, mobilesign.tickets, mobilesign.grants).
#: The RA's ticket-key signature over enrolment ticket claims.
ENROLMENT_TICKET = b"mobilesign/v1 enrolment-ticket\x00"
#: The RA's grant-key signature over a grant statement.
GRANT = b"mobilesign/v1 grant\x00"
#: HMAC input of the gateway's nonce in a service record it prepared (its own key, its own
#: check: the record comes back at execution instead of being stored in between).
PREPARED_RECORD = b"mobilesign/v1 prepared-record\x00"
#: HMAC input of the check each gateway on a shared database makes of a key they must share,
#: followed by the key's name (server.shared_keys).
SHARED_KEY_CHECK = b"mobilesign/v1 shared-key-check\x00"
#: HMAC input of the phone's proof of the activation code over its certificate application.
CERTIFICATE_APPLICATION = b"mobilesign/v1 certificate-application\x00"
#: HMAC input of the RA's proof of the activation code over its answer.
CERTIFICATE_ANSWER = b"mobilesign/v1 certificate-answer\x00"
#: Plaintext prefix of the cosigner's attestation that it holds a share of a user key.
ENROLLED_KEY = b"mobilesign/v1 enrolled-key\x00"
#: Associated data of that attestation when sealed (the whole AAD, nothing follows it).
KEY_ATTESTATION_AAD = b"mobilesign/v1 key-attestation"

# Cosigner's sealed secrets (cosigner.context), each followed by the key id.
#: Associated data of a sealed cloud key package.
SEALED_KEY_PACKAGE_AAD = b"mobilesign/v1 sealed-key-package\x00"
#: Associated data of a sealed PIN verifier.
SEALED_PIN_VERIFIER_AAD = b"mobilesign/v1 sealed-pin-verifier\x00"

# HSM proxy (hsm_proxy.keys), followed by the caller's name, a zero byte and the caller's AAD.
#: AES-GCM associated data of every HSM seal; older spelling, kept byte for byte.
HSM_SEAL_AAD = b"mobilesign-seal-v1\x00"

#: Every tag, by constant name.
ALL: Mapping[str, bytes] = MappingProxyType(
    {
        "ENROL": ENROL,
        "SESSION": SESSION,
        "PIN_PROOF": PIN_PROOF,
        "PIN_VERIFIER_SALT": PIN_VERIFIER_SALT,
        "GATEWAY_SESSION": GATEWAY_SESSION,
        "ENROLMENT_TICKET": ENROLMENT_TICKET,
        "GRANT": GRANT,
        "PREPARED_RECORD": PREPARED_RECORD,
        "SHARED_KEY_CHECK": SHARED_KEY_CHECK,
        "CERTIFICATE_APPLICATION": CERTIFICATE_APPLICATION,
        "CERTIFICATE_ANSWER": CERTIFICATE_ANSWER,
        "ENROLLED_KEY": ENROLLED_KEY,
        "KEY_ATTESTATION_AAD": KEY_ATTESTATION_AAD,
        "SEALED_KEY_PACKAGE_AAD": SEALED_KEY_PACKAGE_AAD,
        "SEALED_PIN_VERIFIER_AAD": SEALED_PIN_VERIFIER_AAD,
        "HSM_SEAL_AAD": HSM_SEAL_AAD,
    }
)
