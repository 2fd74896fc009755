"""Generate the Python stubs (and .pyi types) for protos/ into mediagen/.

The stubs are committed so that `pip install` needs no code generator; run
`make protos` after editing a .proto. `--check` regenerates into a temporary
folder and exits 1 when the committed stubs differ (tests run it).
"""

from __future__ import annotations

import filecmp
import os
import pathlib
import shutil
import sys
import tempfile

import grpc_tools
from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
OUT_PACKAGE = "mediagen"


def _googleapis_include() -> str:
    # googleapis-common-protos ships google/rpc/*.proto beside its modules.
    import google.rpc.status_pb2 as status_pb2

    return str(pathlib.Path(status_pb2.__file__).parent.parent.parent)


def generate(out_dir: pathlib.Path) -> None:
    sources = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    bin_dir = pathlib.Path(sys.executable).parent
    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTOS}",
        f"-I{_googleapis_include()}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
        "--mypy_opt=quiet",
        "--mypy_grpc_opt=quiet",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *sources,
    ]
    cwd = os.getcwd()
    os.chdir(PROTOS)
    try:
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
    finally:
        os.chdir(cwd)
    for package_dir in (out_dir / OUT_PACKAGE).rglob("*"):
        if package_dir.is_dir():
            (package_dir / "__init__.py").touch()
    (out_dir / OUT_PACKAGE / "__init__.py").touch()


def _differences(a: pathlib.Path, b: pathlib.Path) -> list[str]:
    cmp = filecmp.dircmp(a, b, ignore=["__pycache__"])
    diffs = [str(a / n) for n in cmp.left_only + cmp.right_only + cmp.diff_files]
    for sub in cmp.common_dirs:
        diffs += _differences(a / sub, b / sub)
    return diffs


def main() -> int:
    check = "--check" in sys.argv[1:]
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp)
        generate(out)
        target = ROOT / OUT_PACKAGE / "v1"
        if check:
            if not target.exists():
                print("stubs missing: run `make protos`")
                return 1
            diffs = _differences(out / OUT_PACKAGE / "v1", target)
            if diffs:
                print("stubs are stale, run `make protos`:", *diffs, sep="\n  ")
                return 1
            return 0
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(out / OUT_PACKAGE / "v1", target)
        (ROOT / OUT_PACKAGE / "__init__.py").touch()
    return 0


if __name__ == "__main__":
    sys.exit(main())
