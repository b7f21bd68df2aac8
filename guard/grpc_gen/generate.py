"""Rebuild the gRPC stubs from `proto/`: `python -m guard.grpc_gen.generate [OUT_DIR]`.

The checked-in stubs under `guard/grpc_gen/whisperguard/` are exactly what this writes;
`tests/test_grpc_proto.py` regenerates into a temp dir and diffs. Needs `grpcio-tools`
(a test extra): the stubs pin the grpcio/protobuf runtime they were generated with.
"""
from __future__ import annotations

import sys
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PROTO_ROOT = PACKAGE_DIR.parent.parent / "proto"
PROTOS = ("whisperguard/v1/guard.proto",)
INIT_TEXT = '"""Generated from proto/ by guard.grpc_gen.generate; do not edit."""\n'


def generate(out_dir: Path = PACKAGE_DIR, proto_root: Path = PROTO_ROOT) -> list[Path]:
    """Run protoc (python, grpc and pyi outputs) into `out_dir`; return the files written."""
    from importlib.resources import files

    from grpc_tools import protoc

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    well_known = str(files("grpc_tools") / "_proto")
    args = [
        "grpc_tools.protoc",
        f"-I{proto_root}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--pyi_out={out_dir}",
        *(str(Path(proto_root) / p) for p in PROTOS),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    written = []
    for proto in PROTOS:
        parts = Path(proto).parent.parts
        for i in range(1, len(parts) + 1):
            init = out_dir.joinpath(*parts[:i], "__init__.py")
            init.write_text(INIT_TEXT)
            written.append(init)
        pkg, stem = out_dir.joinpath(*parts), Path(proto).stem
        written += [pkg / f"{stem}_pb2.py", pkg / f"{stem}_pb2.pyi", pkg / f"{stem}_pb2_grpc.py"]
    return sorted(set(written))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0]) if argv else PACKAGE_DIR
    for path in generate(out):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
