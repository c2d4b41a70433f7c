"""Two-party signature protocols shared by the phone SDK and the cosigner.

Sans-I/O: the classes here are pure state machines. Feed them the messages the
other party sent, send what they return; they never touch a socket, a clock or
storage. First (and so far only) scheme: FROST(Ed25519, SHA-512), RFC 9591, 2-of-2,
phone identifier 1 and cosigner identifier 2. Keys come from a two-party Pedersen
DKG (:class:`PhoneKeyGen`, :class:`CosignerKeyGen`); signatures from one round trip
(:class:`PhoneSigner`, :class:`CosignerSigner`) and verify as plain RFC 8032 Ed25519.

Every failure is a :class:`ProtocolError` carrying a stable :class:`Reason` and,
when another party's input caused it, that party's identifier.
"""

from mobilesign.twoparty._ciphersuite import RandomSource
from mobilesign.twoparty._errors import ProtocolError, Reason
from mobilesign.twoparty._keygen import CosignerKeyGen, PhoneKeyGen
from mobilesign.twoparty._keypackage import KeyPackage
from mobilesign.twoparty._messages import (
    Cosigned,
    DkgConfirm,
    DkgRound1,
    DkgRound2,
    SignatureReport,
    SignRequest,
    SignResponse,
)
from mobilesign.twoparty._scheme import COSIGNER_IDENTIFIER, PHONE_IDENTIFIER, Scheme
from mobilesign.twoparty._signing import CosignerSigner, PhoneSigner

__all__ = [
    "COSIGNER_IDENTIFIER",
    "PHONE_IDENTIFIER",
    "Cosigned",
    "CosignerKeyGen",
    "CosignerSigner",
    "DkgConfirm",
    "DkgRound1",
    "DkgRound2",
    "KeyPackage",
    "PhoneKeyGen",
    "PhoneSigner",
    "ProtocolError",
    "RandomSource",
    "Reason",
    "Scheme",
    "SignRequest",
    "SignResponse",
    "SignatureReport",
]
