"""The published RFC 6962 / RFC 9162 proof cases (transparency-dev/merkle testdata).

Every case verifies or is rejected exactly as its ``wantErr`` says, and for the valid cases whose
tree is built from the RFC 6962 reference leaves, the generator reproduces the published proofs
and roots byte for byte.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from mobilesign.auditlog import (
    MerkleTree,
    ProofError,
    leaf_hash,
    merkle_tree_hash,
    verify_consistency,
    verify_inclusion,
)
from tests import paths

VECTORS = paths.VECTORS / "rfc6962-merkle"

# The leaves the transparency-dev testdata trees are built from (RFC 6962 reference tree).
REFERENCE_ENTRIES = [
    bytes.fromhex(h)
    for h in [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ]
]
REFERENCE_TREE = MerkleTree.from_leaves([leaf_hash(e) for e in REFERENCE_ENTRIES])


def _cases(kind: str) -> list[Any]:
    files = sorted((VECTORS / kind).rglob("*.json"))
    assert files, f"no {kind} vectors under {VECTORS}"
    return [pytest.param(f, id=str(f.relative_to(VECTORS))) for f in files]


def _b64(value: str) -> bytes:
    return base64.b64decode(value)


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    data["proof"] = [_b64(p) for p in data["proof"] or []]
    return data


def test_vector_counts() -> None:
    assert len(_cases("inclusion")) > 60
    assert len(_cases("consistency")) > 90


@pytest.mark.parametrize("path", _cases("inclusion"))
def test_inclusion_vector(path: Path) -> None:
    case = _load(path)
    args = {
        "leaf_hash": _b64(case["leafHash"]),
        "index": case["leafIdx"],
        "size": case["treeSize"],
        "proof": case["proof"],
        "root": _b64(case["root"]),
    }
    if case["wantErr"]:
        with pytest.raises(ProofError):
            verify_inclusion(**args)
    else:
        verify_inclusion(**args)


@pytest.mark.parametrize("path", _cases("consistency"))
def test_consistency_vector(path: Path) -> None:
    case = _load(path)
    args = {
        "old_size": case["size1"],
        "new_size": case["size2"],
        "proof": case["proof"],
        "old_root": _b64(case["root1"]),
        "new_root": _b64(case["root2"]),
    }
    if case["wantErr"]:
        with pytest.raises(ProofError):
            verify_consistency(**args)
    else:
        verify_consistency(**args)


@pytest.mark.parametrize(
    "path", [p for p in _cases("inclusion") if p.values[0].name == "happy-path.json"]
)
def test_generator_reproduces_inclusion_vector(path: Path) -> None:
    case = _load(path)
    size, index = case["treeSize"], case["leafIdx"]
    assert leaf_hash(REFERENCE_ENTRIES[index]) == _b64(case["leafHash"])
    assert merkle_tree_hash(REFERENCE_ENTRIES[:size]) == _b64(case["root"])
    assert REFERENCE_TREE.inclusion_proof(index, size) == case["proof"]


@pytest.mark.parametrize(
    "path", [p for p in _cases("consistency") if p.values[0].name == "happy-path.json"]
)
def test_generator_reproduces_consistency_vector(path: Path) -> None:
    case = _load(path)
    old, new = case["size1"], case["size2"]
    assert REFERENCE_TREE.root(old) == _b64(case["root1"])
    assert REFERENCE_TREE.root(new) == _b64(case["root2"])
    assert REFERENCE_TREE.consistency_proof(old, new) == case["proof"]
