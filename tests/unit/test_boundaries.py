"""The layout's rules, read from the imports: which package may import which.

- the pure core (``CORE``) imports no gRPC, no SQL driver, no service, nothing of the rims, and
  reads no clock (time is passed in);
- ``mobilesign.rpc`` (both ends of a call) imports nothing of the server side;
- no production module imports ``mobilesign.testing`` (the launcher, the trusted dealer);
- a service imports no other service; the phone (``client``) imports no server-side package;
- a wheel built from the repository installs exactly ``mobilesign`` and the service folders.

``violations`` is the checker; the tests below run it on the tree and on made-up modules that
break each rule, so the checker itself is shown to fail when it should.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("ra", "server", "cosigner", "hsm_proxy", "client")
CORE = (
    "mobilesign",
    "mobilesign.auditlog",
    "mobilesign.ca",
    "mobilesign.deviceauth",
    "mobilesign.domains",
    "mobilesign.errors",
    "mobilesign.ids",
    "mobilesign.pkix",
    "mobilesign.records",
    "mobilesign.tickets",
    "mobilesign.twoparty",
)
#: Top-level modules that talk to a database or the network layer.
_IO = ("grpc", "grpc_health", "grpc_reflection", "grpc_status", "sqlite3", "aiosqlite")
_IO_PREFIXES = ("asyncpg", "psycopg")
_RIMS = ("mobilesign.rpc", "mobilesign.hosting", "mobilesign.storage", "mobilesign.testing")
_CLOCK_CALLS = {"now", "utcnow", "today", "time", "time_ns", "monotonic", "perf_counter"}


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _is_core(module: str) -> bool:
    # ``mobilesign`` itself is core only as the package module, not as a prefix of the rims.
    if module == "mobilesign":
        return True
    return any(_within(module, c) for c in CORE if c != "mobilesign")


def _imports(tree: ast.AST) -> Iterator[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            # ``from mobilesign import rpc`` imports the subpackage
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def _clock_reads(tree: ast.AST) -> Iterator[str]:
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in _CLOCK_CALLS
            and isinstance(node.func.value, ast.Name | ast.Attribute)
        ):
            owner = ast.unparse(node.func.value)
            if owner.split(".")[-1] in {"time", "datetime", "date"}:
                yield f"{owner}.{node.func.attr}()"


def _forbidden(module: str, imported: str) -> str | None:
    top = imported.split(".")[0]
    service = top if top in SERVICES else None
    own_service = module.split(".")[0] if module.split(".")[0] in SERVICES else None
    if _is_core(module):
        if top in _IO or top.startswith(_IO_PREFIXES):
            return "the pure core does no I/O"
        if service:
            return "the pure core imports no service"
        if any(_within(imported, rim) for rim in _RIMS):
            return "the pure core imports none of the rims"
        if _within(imported, "mobilesign.v1") and imported.endswith("_grpc"):
            return "the pure core imports no gRPC stubs"
    if _within(module, "mobilesign.rpc") and _within(imported, "mobilesign.hosting"):
        return "mobilesign.rpc is for both ends: it imports nothing of the server side"
    if not _within(module, "mobilesign.testing") and _within(imported, "mobilesign.testing"):
        return "mobilesign.testing is for tests, the demo and benchmarks only"
    if _within(module, "mobilesign") and service:
        return "the library imports no service"
    if own_service and service and service != own_service:
        return "a service imports no other service"
    if own_service == "client" and any(
        _within(imported, p) for p in ("mobilesign.hosting", "mobilesign.storage")
    ):
        return "the phone imports nothing of the server side"
    return None


def violations(sources: Mapping[str, str]) -> list[str]:
    """Every broken rule in ``sources`` (module name -> source text), one line each."""
    found = []
    for module, source in sorted(sources.items()):
        tree = ast.parse(source)
        for imported in _imports(tree):
            why = _forbidden(module, imported)
            if why:
                found.append(f"{module} imports {imported}: {why}")
        if _is_core(module):
            found.extend(
                f"{module} calls {call}: the pure core reads no clock (pass the time in)"
                for call in _clock_reads(tree)
            )
    return found


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def tree_sources() -> dict[str, str]:
    """The library and the services as shipped (generated stubs excluded)."""
    sources = {}
    for top in ("mobilesign", *SERVICES):
        for path in sorted((ROOT / top).rglob("*.py")):
            if _within(_module_name(path), "mobilesign.v1"):
                continue
            sources[_module_name(path)] = path.read_text()
    return sources


def test_the_tree_keeps_its_boundaries() -> None:
    sources = tree_sources()
    assert "mobilesign.twoparty._signing" in sources
    assert "server.__main__" in sources
    assert violations(sources) == []


@pytest.mark.parametrize(
    ("module", "source", "rule"),
    [
        ("mobilesign.records", "import grpc", "does no I/O"),
        ("mobilesign.twoparty._frost", "from aiosqlite import connect", "does no I/O"),
        ("mobilesign.ca.authority", "import asyncpg", "does no I/O"),
        ("mobilesign.tickets", "from server import admin", "imports no service"),
        ("mobilesign.pkix", "from mobilesign.hosting import config", "none of the rims"),
        ("mobilesign.deviceauth", "from mobilesign.rpc import status", "none of the rims"),
        ("mobilesign.ids", "from mobilesign.v1 import hsm_pb2_grpc", "no gRPC stubs"),
        ("mobilesign.ca", "import datetime\ndatetime.datetime.now()", "reads no clock"),
        ("mobilesign.records", "import time\ntime.time()", "reads no clock"),
        ("mobilesign.rpc.channels", "from mobilesign.hosting import devpki", "both ends"),
        ("hsm_proxy.keys", "from mobilesign.testing.dealer import x", "tests, the demo"),
        ("mobilesign.hosting.serve", "import cosigner.repository", "library imports no service"),
        ("server.admin", "from cosigner.repository import KeyStore", "no other service"),
        ("client.sdk", "from mobilesign.hosting import logs", "nothing of the server side"),
        ("client.sdk", "from mobilesign import storage", "nothing of the server side"),
    ],
)
def test_each_rule_catches_its_breach(module: str, source: str, rule: str) -> None:
    clean = tree_sources()
    broken = {**clean, module: clean.get(module, "") + "\n" + source}
    found = sorted(set(violations(broken)) - set(violations(clean)))
    assert found, f"{source!r} in {module} went unnoticed"
    assert all(rule in line for line in found), found


def test_allowed_imports_pass() -> None:
    allowed = {
        "mobilesign.tickets": "from mobilesign.v1 import gateway_pb2\nimport mobilesign.errors",
        "mobilesign.rpc.wire": "from mobilesign import twoparty\nimport grpc",
        "mobilesign.hosting.serve": "from mobilesign.rpc import channels",
        "server.admin": "from mobilesign.hosting import access\nfrom server import users",
        "client.sdk": "from mobilesign.rpc import channels\nimport grpc",
        "mobilesign.testing.deployment": "from mobilesign.hosting import devpki",
        "mobilesign.ca.authority": "import datetime\ndatetime.timedelta(days=1)",
    }
    assert violations(allowed) == []


def test_wheel_installs_one_library_name_and_the_services(tmp_path: Path) -> None:
    # Built from a copy of what pyproject ships, so that no build/ left in the checkout (where
    # setuptools keeps stale copies of deleted modules) can make the wheel look right.
    source = tmp_path / "source"
    source.mkdir()
    shutil.copy(ROOT / "pyproject.toml", source)
    for package in ("mobilesign", *SERVICES):
        shutil.copytree(
            ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"),
            *("-w", str(tmp_path), str(source)),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("mobilesign-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"mobilesign", *SERVICES}
    assert "mobilesign/py.typed" in names
    assert "mobilesign/v1/hsm_pb2.py" in names
    assert not any(n.startswith("mobilesign/v1/") and n.endswith(".proto") for n in names)
