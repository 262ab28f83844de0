"""The checked-in stubs must be exactly what the .proto generates."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_stubs_match_the_proto() -> None:
    result = subprocess.run(
        [sys.executable, "scripts/gen_proto.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_no_top_level_hivemind_package_is_shipped() -> None:
    # `hivemind` is another project on PyPI: our stubs must import relatively.
    generated = ROOT / "server" / "hivemind_nodepool" / "proto" / "nodepool_pb2_grpc.py"
    assert "from hivemind." not in generated.read_text()
    assert not (ROOT / "hivemind").exists()
