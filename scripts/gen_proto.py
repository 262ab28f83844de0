#!/usr/bin/env python3
"""Regenerate the checked-in gRPC stubs from proto/, or check that they are current.

    python scripts/gen_proto.py          # rewrite server/hivemind_nodepool/proto/
    python scripts/gen_proto.py --check  # exit 1 when the checked-in stubs differ

protoc writes absolute imports (`from hivemind.nodepool.v1 import nodepool_pb2`); we make them
relative so the stubs live inside `hivemind_nodepool` and no top-level `hivemind` package exists.
"""

from __future__ import annotations

import argparse
import filecmp
import re
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PROTO_FILES = sorted(PROTO_ROOT.glob("hivemind/nodepool/v1/*.proto"))
TARGET = ROOT / "server" / "hivemind_nodepool" / "proto"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")
ABSOLUTE_IMPORT = re.compile(r"^from hivemind\.nodepool\.v1 import (\w+)", re.MULTILINE)


def generate(out_dir: Path) -> list[Path]:
    """Run protoc into out_dir and return the generated files, imports made relative."""
    from grpc_tools import protoc  # a development dependency only

    raw = out_dir / "raw"
    raw.mkdir()
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={raw}",
        f"--mypy_out={raw}",
        f"--grpc_python_out={raw}",
        f"--mypy_grpc_out={raw}",
        *[str(p) for p in PROTO_FILES],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    produced = []
    for path in sorted((raw / "hivemind" / "nodepool" / "v1").iterdir()):
        if not path.name.endswith(GENERATED_SUFFIXES):
            continue
        text = ABSOLUTE_IMPORT.sub(r"from . import \1", path.read_text())
        final = out_dir / path.name
        final.write_text(text)
        produced.append(final)
    return produced


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        produced = generate(Path(tmp))
        if options.check:
            stale = [
                p.name
                for p in produced
                if not (TARGET / p.name).exists() or not filecmp.cmp(p, TARGET / p.name, shallow=False)
            ]
            if stale:
                print("stale generated stubs: " + ", ".join(stale), file=sys.stderr)
                print("run: python scripts/gen_proto.py", file=sys.stderr)
                return 1
            print("generated stubs are current")
            return 0
        TARGET.mkdir(parents=True, exist_ok=True)
        for path in produced:
            shutil.copyfile(path, TARGET / path.name)
        init = TARGET / "__init__.py"
        if not init.exists():
            init.write_text('"""Generated gRPC stubs for hivemind.nodepool.v1 (scripts/gen_proto.py)."""\n')
        print(f"wrote {len(produced)} files to {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
