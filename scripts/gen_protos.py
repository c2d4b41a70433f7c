"""Regenerate the Python modules for ``protos/mobilesign/v1/*.proto``.

Module paths follow the file's path under ``-I protos``, so ``protos/mobilesign/v1/hsm.proto``
becomes ``mobilesign/v1/hsm_pb2.py``, imported as ``mobilesign.v1.hsm_pb2``. The generated code
is committed; ``tests/unit/test_protos.py`` checks that regeneration changes nothing.
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"


def generate(out: Path) -> None:
    """Write the generated modules (and their type stubs) under ``out``."""
    bindir = Path(sys.executable).parent
    include = resources.files("grpc_tools") / "_proto"
    files = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.glob("mobilesign/v1/*.proto"))
    package = out / "mobilesign" / "v1"
    package.mkdir(parents=True, exist_ok=True)
    # Only the generated package's own marker: mobilesign/__init__.py is the library's, not ours.
    (package / "__init__.py").write_text(
        '"""Generated gRPC and protobuf modules of the mobilesign API."""\n'
    )
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--plugin=protoc-gen-mypy={bindir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bindir / 'protoc-gen-mypy_grpc'}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def main() -> None:
    """Command line: ``python -m scripts.gen_protos [--out DIR]``."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT)
    generate(parser.parse_args().out)


if __name__ == "__main__":
    main()
