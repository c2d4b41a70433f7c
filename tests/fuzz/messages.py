"""Hypothesis strategies for request messages, built from the generated descriptors.

Requests are encoded here, field by field, in the protobuf wire format rather than through the
generated classes: that way a strategy can also send what no conforming client would (integers
beyond a field's width, strings that are not UTF-8, unknown enum values, wrong wire types,
unknown fields), next to plausible values and the real identifiers of the deployment (``Seeds``)
that take a request past its first checks.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from hypothesis import strategies as st

from tests.integration.two_party import (
    IDENTITY,
    MIXED_ORDER,
    NON_CANONICAL,
    OFF_CURVE,
    TORSION_2,
    TORSION_8,
)

_U64 = 2**64 - 1

#: Integers at the edges of every width (and of SQLite's int64) and just past them.
EDGE_INTEGERS: tuple[int, ...] = (
    0,
    1,
    -1,
    2,
    59,
    60,
    2**31 - 1,
    2**31,
    -(2**31),
    2**32 - 1,
    2**32,
    2**53,
    2**62,
    2**63 - 1,
    2**63,
    -(2**63),
    2**64 - 1,
)

#: 32-byte encodings that are not acceptable group elements (and one that is the identity).
BAD_POINTS: tuple[bytes, ...] = (
    IDENTITY,
    NON_CANONICAL,
    OFF_CURVE,
    TORSION_2,
    TORSION_8,
    MIXED_ORDER,
    bytes(32),
    bytes.fromhex("01" + "00" * 30 + "80"),
)

#: Strings that are valid UTF-8 but troublesome (controls, NUL, separators, look-alikes).
ODD_TEXT: tuple[str, ...] = (
    "",
    " ",
    "\x00",
    "a\nb",
    "../../etc/passwd",
    "'; DROP TABLE users; --",
    "\u202e",
    "\ufeffadmin",
    "\uff41\uff44\uff4d\uff49\uff4e",  # full-width "admin"
    "%s%n",
    "00" * 16,
    "00" * 32,
)


def varint(value: int) -> bytes:
    """A base-128 varint of ``value`` taken modulo 2**64 (negative numbers as int64 do)."""
    value &= _U64
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def tag(number: int, wire_type: int) -> bytes:
    """A field key."""
    return varint((number << 3) | wire_type)


def length_delimited(number: int, payload: bytes) -> bytes:
    """A length-delimited field (strings, bytes, messages, packed repeated scalars)."""
    return tag(number, 2) + varint(len(payload)) + payload


def _zigzag(value: int) -> int:
    value = max(-(2**63), min(2**63 - 1, value))
    return ((value << 1) ^ (value >> 63)) & _U64


@dataclass
class Seeds:
    """Real values of the fuzz deployment, offered for fields of these names so that requests
    also get past the first lookup (a known key id, the phone's grant, a real ticket)."""

    by_name: dict[str, list[object]] = field(default_factory=dict)

    def add(self, name: str, *values: object) -> None:
        self.by_name.setdefault(name, []).extend(values)

    def get(self, name: str) -> Sequence[object]:
        return self.by_name.get(name, ())


@dataclass(frozen=True)
class Sizes:
    """Oversize payloads for one service: just over its application limit, and far over."""

    limit: int

    def oversize(self) -> st.SearchStrategy[bytes]:
        return st.sampled_from((self.limit + 1, 2 * self.limit + 64)).map(lambda n: b"\xa5" * n)


def _integers(kind: int) -> st.SearchStrategy[int]:
    widths = {
        FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
        FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
        FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
        FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
        FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
        FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    }
    low, high = widths.get(kind, (-(2**63), 2**64 - 1))
    return st.one_of(
        st.sampled_from(EDGE_INTEGERS),
        st.integers(low, high),
        st.integers(-5, 100_000),
        # Beyond the field's width: a varint the parser truncates (or, for int32, sign-extends).
        st.integers(-(2**63), 2**64 - 1),
    )


def _text() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.sampled_from(ODD_TEXT).map(str.encode),
        st.text(max_size=80).map(str.encode),
        st.from_regex(r"[a-z0-9-]{1,64}", fullmatch=True).map(str.encode),
        st.integers(65, 5_000).map(lambda n: b"x" * n),
        # Not UTF-8: lone continuation bytes, overlong forms, surrogates, truncated sequences.
        st.sampled_from((b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82", b"a\x80b")),
        st.binary(max_size=40),
    )


def _bytes(sizes: Sizes) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.just(b""),
        st.binary(max_size=80),
        st.binary(min_size=32, max_size=32),
        st.sampled_from(BAD_POINTS),
        st.integers(1, 4096).map(lambda n: b"\x00" * n),
        # Oversize (over the application limit or the transport's) now and then: slow to send.
        st.integers(0, 15).flatmap(lambda n: sizes.oversize() if n == 0 else st.binary(max_size=8)),
    )


def _seeded(name: str, seeds: Seeds) -> st.SearchStrategy[bytes] | None:
    values = seeds.get(name)
    if not values:
        return None

    def encode(value: object) -> bytes:
        if isinstance(value, bytes):
            return value
        return str(value).encode()

    return st.sampled_from(list(values)).map(encode)


def field_value(
    descriptor: FieldDescriptor, seeds: Seeds, sizes: Sizes, depth: int
) -> st.SearchStrategy[bytes]:
    """One occurrence of ``descriptor`` (key and value), sometimes with a wrong wire type."""
    number = descriptor.number
    kind = descriptor.type
    right: st.SearchStrategy[bytes]
    if kind in (FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SINT64):
        right = _integers(kind).map(lambda n: tag(number, 0) + varint(_zigzag(n)))
    elif kind == FieldDescriptor.TYPE_BOOL:
        right = st.sampled_from((0, 1, 2, 2**64 - 1)).map(lambda n: tag(number, 0) + varint(n))
    elif kind == FieldDescriptor.TYPE_ENUM:
        assert descriptor.enum_type is not None
        known = [value.number for value in descriptor.enum_type.values]
        right = st.one_of(
            st.sampled_from(known),
            st.sampled_from((max(known) + 1, 99, -1, 2**31 - 1, -(2**31), 2**32, 2**63)),
        ).map(lambda n: tag(number, 0) + varint(n))
    elif kind in (
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT32,
        FieldDescriptor.TYPE_UINT64,
    ):
        seeded_ints = seeds.get(descriptor.name)
        plain = _integers(kind)
        if seeded_ints:
            plain = st.one_of(plain, st.sampled_from([int(str(v)) for v in seeded_ints]))
        right = plain.map(lambda n: tag(number, 0) + varint(n))
    elif kind in (
        FieldDescriptor.TYPE_FIXED32,
        FieldDescriptor.TYPE_SFIXED32,
        FieldDescriptor.TYPE_FLOAT,
    ):
        right = st.binary(min_size=4, max_size=4).map(lambda b: tag(number, 5) + b)
    elif kind in (
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED64,
        FieldDescriptor.TYPE_DOUBLE,
    ):
        right = st.integers(0, _U64).map(lambda n: tag(number, 1) + struct.pack("<Q", n))
    else:
        if kind == FieldDescriptor.TYPE_STRING:
            payload = _text()
        elif kind == FieldDescriptor.TYPE_BYTES:
            payload = _bytes(sizes)
        else:
            assert descriptor.message_type is not None
            payload = message_bytes(descriptor.message_type, seeds, sizes, depth + 1)
        seeded = _seeded(descriptor.name, seeds)
        if seeded is not None:
            payload = st.one_of(seeded, seeded, payload)
        right = payload.map(lambda p: length_delimited(number, p))
    wrong = st.one_of(
        st.integers(0, _U64).map(lambda n: tag(number, 0) + varint(n)),
        st.binary(max_size=16).map(lambda b: length_delimited(number, b)),
        st.just(tag(number, 5) + b"\x00\x00\x00\x00"),
    )
    return st.one_of(right, right, right, right, right, right, wrong)


def message_bytes(
    descriptor: Descriptor, seeds: Seeds, sizes: Sizes, depth: int = 0
) -> st.SearchStrategy[bytes]:
    """A serialized ``descriptor`` message: each field absent, seeded, plausible or mutated,
    repeated fields several times, sometimes an unknown field or trailing garbage.

    Strategies are built once per message type (and seeds and limit): building and validating
    them anew for every example would cost more than the call itself."""
    key = (descriptor.full_name, depth, id(seeds), sizes.limit)
    cached = _CACHE.get(key)
    if cached is None:
        cached = _CACHE[key] = _message_bytes(descriptor, seeds, sizes, depth)
    return cached


_CACHE: dict[tuple[str, int, int, int], st.SearchStrategy[bytes]] = {}


def _message_bytes(
    descriptor: Descriptor, seeds: Seeds, sizes: Sizes, depth: int
) -> st.SearchStrategy[bytes]:
    if depth > 3 or not descriptor.fields:
        return st.just(b"")
    parts: list[st.SearchStrategy[bytes]] = []
    for fd in descriptor.fields:
        value = field_value(fd, seeds, sizes, depth)
        if fd.is_repeated:
            parts.append(st.lists(value, max_size=5).map(b"".join))
        else:
            # Present once (usually), absent, or twice (the last one wins).
            parts.append(
                st.one_of(value, value, value, st.just(b""), st.tuples(value, value).map(b"".join))
            )
    extras = st.one_of(
        st.just(b""),
        st.just(b""),
        st.just(b""),
        st.integers(1000, 536_870_911).map(lambda n: tag(n, 0) + varint(7)),
        st.binary(min_size=1, max_size=8),
    )
    return st.tuples(st.permutations(parts).flatmap(lambda ps: st.tuples(*ps)), extras).map(
        lambda t: b"".join(t[0]) + t[1]
    )


def raw_bytes(sizes: Sizes) -> st.SearchStrategy[bytes]:
    """Bytes that are rarely a valid message: random, a truncated varint, an endless group."""
    cached = _RAW.get(sizes.limit)
    if cached is None:
        cached = _RAW[sizes.limit] = _raw_bytes(sizes)
    return cached


_RAW: dict[int, st.SearchStrategy[bytes]] = {}


def _raw_bytes(sizes: Sizes) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=200),
        st.sampled_from((b"\x08", b"\x0a\xff\xff\xff\xff\x0f", b"\x0b" * 40, b"\xff" * 11)),
        st.integers(0, 7).flatmap(lambda n: sizes.oversize() if n == 0 else st.binary(max_size=8)),
    )
