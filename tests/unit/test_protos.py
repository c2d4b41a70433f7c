"""The committed generated code is what the .proto files generate, and the API lints clean."""

from __future__ import annotations

import filecmp
import subprocess
from pathlib import Path

import pytest

from scripts.gen_protos import ROOT, generate

BUF = ROOT / ".tools" / "node_modules" / ".bin" / "buf"


def test_regeneration_changes_nothing(tmp_path: Path) -> None:
    generate(tmp_path)
    committed = ROOT / "mobilesign" / "v1"
    fresh = tmp_path / "mobilesign" / "v1"
    names = sorted(p.name for p in fresh.iterdir() if p.suffix in (".py", ".pyi"))
    assert "hsm_pb2.py" in names
    assert "cosigner_pb2_grpc.py" in names
    assert names == sorted(p.name for p in committed.iterdir() if p.suffix in (".py", ".pyi"))
    _, mismatch, errors = filecmp.cmpfiles(committed, fresh, names, shallow=False)
    assert mismatch == []
    assert errors == []


def test_regeneration_leaves_the_library_package_alone(tmp_path: Path) -> None:
    library_init = tmp_path / "mobilesign" / "__init__.py"
    library_init.parent.mkdir()
    library_init.write_text('"""the library"""\n')
    generate(tmp_path)
    assert library_init.read_text() == '"""the library"""\n'
    assert (tmp_path / "mobilesign" / "v1" / "__init__.py").exists()


def test_generated_modules_import_under_their_package() -> None:
    from mobilesign.v1 import cosigner_pb2, gateway_pb2, hsm_pb2, ra_pb2

    assert hsm_pb2.DESCRIPTOR.package == "mobilesign.v1"
    assert cosigner_pb2.DESCRIPTOR.services_by_name["CosignerService"]
    assert gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"]
    assert set(ra_pb2.DESCRIPTOR.services_by_name) == {"AdminService", "RegistrationService"}


@pytest.mark.skipif(not BUF.exists(), reason="buf is installed by make setup")
def test_buf_lint_is_clean() -> None:
    result = subprocess.run(
        [str(BUF), "lint", str(ROOT / "protos")], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
