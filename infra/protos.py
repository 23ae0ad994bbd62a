"""Generates the Python code for every .proto under protos/, next to its source, with
grpcio-tools (which bundles protoc and the well-known types)."""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

PROTOS = Path(__file__).resolve().parent.parent / "protos"


def main() -> int:
    import grpc_tools

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    sources = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    for directory in {p.parent for p in PROTOS.rglob("*.proto")}:
        for package_dir in [directory, *directory.parents]:
            if package_dir == PROTOS.parent:
                break
            if package_dir != PROTOS:
                (package_dir / "__init__.py").touch()
    code = protoc.main(
        [
            "protoc",
            f"-I{PROTOS}",
            f"-I{well_known}",
            f"--python_out={PROTOS}",
            f"--pyi_out={PROTOS}",
            f"--grpc_python_out={PROTOS}",
            *sources,
        ]
    )
    if code == 0:
        print(f"generated Python for {len(sources)} proto files in {PROTOS}")
    return code


if __name__ == "__main__":
    sys.exit(main())
