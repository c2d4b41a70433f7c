"""A party's long-lived key material, and its storage encoding."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from mobilesign.twoparty._errors import ProtocolError, Reason
from mobilesign.twoparty._scheme import PARTICIPANTS, Scheme, ciphersuite, parse_scheme

_MAGIC = b"2PKP"
_VERSION = 1


@dataclass(frozen=True)
class KeyPackage:
    """One party's result of the DKG: everything it needs to sign.

    Constructing one validates it: canonical encodings, ``signing_share * G ==
    verifying_share``, and that both verifying shares interpolate to the group key.
    ``signing_share`` is secret (it is left out of ``repr``); store the output of
    :meth:`to_bytes` only in the phone keystore or sealed by the HSM.

    Fields, in the scheme's encodings: ``identifier`` (1 phone, 2 cosigner);
    ``signing_share`` (scalar ``s_i``); ``verifying_share`` (``s_i * G``);
    ``peer_verifying_share`` (the other party's); ``group_public_key`` (the joint
    Ed25519 public key, what the personal certificate certifies).
    """

    scheme: Scheme
    identifier: int
    signing_share: bytes = field(repr=False)
    verifying_share: bytes
    peer_verifying_share: bytes
    group_public_key: bytes

    def __post_init__(self) -> None:
        if type(self.identifier) is not int or self.identifier not in PARTICIPANTS:
            raise ProtocolError(Reason.INVALID_KEY_PACKAGE, detail="unknown identifier")
        try:
            object.__setattr__(self, "scheme", parse_scheme(self.scheme))
            cs = ciphersuite(self.scheme)
            share = cs.deserialize_scalar(self.signing_share)
            own = cs.deserialize_element(self.verifying_share)
            peer = cs.deserialize_element(self.peer_verifying_share)
            group = cs.deserialize_element(self.group_public_key)
        except ProtocolError as e:
            raise ProtocolError(Reason.INVALID_KEY_PACKAGE, detail=f"{e.reason}") from None
        if cs.base_mult(share) != own:
            raise ProtocolError(Reason.INVALID_KEY_PACKAGE, detail="share does not match")
        # lambda_1 * Y_1 + lambda_2 * Y_2 == Y, where the pair (1, 2) has lambda_1 = 2 and
        # lambda_2 = -1: 2 * Y_1 - Y_2 == Y, by additions (a multiplication costs five).
        first, second = (own, peer) if self.identifier == PARTICIPANTS[0] else (peer, own)
        if cs.sub(cs.add(first, first), second) != group:
            raise ProtocolError(Reason.INVALID_KEY_PACKAGE, detail="shares do not give the key")

    @property
    def peer_identifier(self) -> int:
        """The other party's identifier."""
        return next(i for i in PARTICIPANTS if i != self.identifier)

    def to_bytes(self) -> bytes:
        """Versioned fixed layout.

        ``"2PKP" | version (1) | len(scheme) (1) | scheme (ASCII) | identifier (2, big
        endian) | signing_share | verifying_share | peer_verifying_share |
        group_public_key``, each value in its ciphersuite encoding.
        """
        scheme = self.scheme.value.encode("ascii")
        return b"".join(
            (
                _MAGIC,
                struct.pack(">BB", _VERSION, len(scheme)),
                scheme,
                struct.pack(">H", self.identifier),
                self.signing_share,
                self.verifying_share,
                self.peer_verifying_share,
                self.group_public_key,
            )
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> KeyPackage:
        """Parse and validate :meth:`to_bytes` output; raises INVALID_KEY_PACKAGE."""

        def bad(detail: str) -> ProtocolError:
            return ProtocolError(Reason.INVALID_KEY_PACKAGE, detail=detail)

        if not isinstance(data, bytes) or len(data) < 6 or data[:4] != _MAGIC:
            raise bad("not a key package")
        version, scheme_len = data[4], data[5]
        if version != _VERSION:
            raise bad("unsupported version")
        pos = 6 + scheme_len
        try:
            scheme = parse_scheme(data[6:pos].decode("ascii"))
        except (UnicodeDecodeError, ProtocolError):
            raise bad("unsupported scheme") from None
        cs = ciphersuite(scheme)
        sizes = (2, cs.scalar_len, cs.element_len, cs.element_len, cs.element_len)
        if len(data) != pos + sum(sizes):
            raise bad("wrong length")
        fields = []
        for size in sizes:
            fields.append(data[pos : pos + size])
            pos += size
        (identifier,) = struct.unpack(">H", fields[0])
        return cls(scheme, identifier, *fields[1:])
