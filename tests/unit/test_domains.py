"""Domain-separation tags: distinct, prefix-free, spelled by convention, defined in one place
(``mobilesign/domains.py``), and as docs/protocol.md lists them."""

from __future__ import annotations

import ast
import itertools
import re
from pathlib import Path

import pytest

from mobilesign import domains

ROOT = Path(__file__).resolve().parents[2]
SOURCE_DIRS = ("mobilesign", "ra", "server", "cosigner", "hsm_proxy", "client")
EXCLUDED = (ROOT / "mobilesign" / "v1", ROOT / "mobilesign" / "domains.py")
#: Older than the ``mobilesign/v1 `` convention; changing it would strand every sealed secret.
OLD_SPELLING = {"HSM_SEAL_AAD": b"mobilesign-seal-v1\x00"}
#: Used as a whole associated-data string, with nothing after it (so no separator).
WHOLE = {"KEY_ATTESTATION_AAD"}

#: The values, byte for byte: any change breaks signatures, MACs or sealed data already made.
PINNED = {
    "ENROL": b"mobilesign/v1 enrol\x00",
    "SESSION": b"mobilesign/v1 session\x00",
    "PIN_PROOF": b"mobilesign/v1 pin-proof\x00",
    "PIN_VERIFIER_SALT": b"mobilesign/v1 pin-verifier\x00",
    "GATEWAY_SESSION": b"mobilesign/v1 gateway-session\x00",
    "ENROLMENT_TICKET": b"mobilesign/v1 enrolment-ticket\x00",
    "GRANT": b"mobilesign/v1 grant\x00",
    "PREPARED_RECORD": b"mobilesign/v1 prepared-record\x00",
    "SHARED_KEY_CHECK": b"mobilesign/v1 shared-key-check\x00",
    "CERTIFICATE_APPLICATION": b"mobilesign/v1 certificate-application\x00",
    "CERTIFICATE_ANSWER": b"mobilesign/v1 certificate-answer\x00",
    "ENROLLED_KEY": b"mobilesign/v1 enrolled-key\x00",
    "KEY_ATTESTATION_AAD": b"mobilesign/v1 key-attestation",
    "SEALED_KEY_PACKAGE_AAD": b"mobilesign/v1 sealed-key-package\x00",
    "SEALED_PIN_VERIFIER_AAD": b"mobilesign/v1 sealed-pin-verifier\x00",
    "HSM_SEAL_AAD": b"mobilesign-seal-v1\x00",
}


def test_all_is_every_constant_of_the_module() -> None:
    constants = {
        name: value
        for name, value in vars(domains).items()
        if name.isupper() and isinstance(value, bytes)
    }
    assert dict(domains.ALL) == constants


def test_values_are_pinned() -> None:
    assert dict(domains.ALL) == PINNED


def test_tags_are_distinct() -> None:
    assert len(set(domains.ALL.values())) == len(domains.ALL)


@pytest.mark.parametrize(("first", "second"), list(itertools.permutations(sorted(domains.ALL), 2)))
def test_no_tag_is_a_prefix_of_another(first: str, second: str) -> None:
    assert not domains.ALL[second].startswith(domains.ALL[first])


@pytest.mark.parametrize("name", sorted(domains.ALL))
def test_spelling(name: str) -> None:
    value = domains.ALL[name]
    assert value.isascii()
    if name in OLD_SPELLING:
        assert value == OLD_SPELLING[name]
    else:
        assert value.startswith(b"mobilesign/v1 ")
    # One zero byte, at the end, when something follows the tag; none inside.
    if name in WHOLE:
        assert b"\x00" not in value
    else:
        assert value.endswith(b"\x00")
        assert b"\x00" not in value[:-1]


def _documented() -> dict[bytes, str]:
    """The ``"..."`` | hex rows of the domain-separation table in docs/protocol.md."""
    text = (ROOT / "docs" / "protocol.md").read_text()
    rows = re.findall(r'^\| `"(mobilesign[^"`]*)\\0"` \| `([0-9a-f]+)` \|', text, re.MULTILINE)
    return {bytes.fromhex(hex_value): f"{string}\\0" for string, hex_value in rows}


def test_the_protocol_document_lists_the_values_used() -> None:
    documented = _documented()
    assert len(documented) >= 5
    for value, spelled in documented.items():
        assert value == spelled.removesuffix("\\0").encode() + b"\x00"
        assert value in domains.ALL.values(), spelled


# The source tree: tags are defined in domains.py only -----------------------------------------


def stray_tags(source: str) -> list[str]:
    """Bytes literals that look like a tag (``b"mobilesign..."``) and str literals that spell
    one (``"mobilesign/v1 ..."``, e.g. to be encoded later), as ``line: value``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Constant):
            continue
        value = node.value
        if (isinstance(value, bytes) and value.startswith(b"mobilesign")) or (
            isinstance(value, str) and value.startswith("mobilesign/v1 ")
        ):
            found.append(f"{node.lineno}: {value!r}")
    return found


def _sources() -> list[Path]:
    paths = []
    for directory in SOURCE_DIRS:
        for path in sorted((ROOT / directory).rglob("*.py")):
            if not any(path == e or e in path.parents for e in EXCLUDED):
                paths.append(path)
    return paths


def test_no_tag_is_spelled_outside_domains() -> None:
    sources = _sources()
    assert ROOT / "mobilesign" / "records.py" in sources
    assert ROOT / "hsm_proxy" / "keys.py" in sources
    assert ROOT / "mobilesign" / "domains.py" not in sources
    assert not any(ROOT / "mobilesign" / "v1" in p.parents for p in sources)
    stray = {
        str(path.relative_to(ROOT)): found
        for path in sources
        if (found := stray_tags(path.read_text(encoding="utf-8")))
    }
    assert stray == {}


@pytest.mark.parametrize(
    "source",
    [
        'X = b"mobilesign/v1 something\\x00"',
        'def f(k: bytes) -> bytes:\n    return b"mobilesign/v1 x\\x00" + k',
        'X = b"mobilesign" b"/v1 split"',
        'X = b"mobilesign-seal-v2\\x00"',
        'X = "mobilesign/v1 spelled as text\\0".encode()',
    ],
)
def test_the_scan_finds_a_stray_tag(source: str) -> None:
    assert stray_tags(source)


@pytest.mark.parametrize(
    "source",
    [
        'X = domains.SESSION + b"\\x00"',
        '"""Signs ``"mobilesign/v1 enrol" || 0x00 || ...``."""',
        'SERVICE = "mobilesign.v1.CosignerService"',
        'log = getLogger("mobilesign.rpc")',
        'FORMAT = "mobilesign-keystore-v1"',
    ],
)
def test_the_scan_lets_other_strings_be(source: str) -> None:
    assert stray_tags(source) == []
