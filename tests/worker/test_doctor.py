"""`hivemind-worker doctor` (and `run`) say what to fix for each thing that is wrong."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from hivemind_worker.doctor import nvidia_pci_devices


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("HIVEMIND_")}
    return subprocess.run(
        [sys.executable, "-m", "hivemind_worker.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**base, **(env or {})},
        check=False,
    )


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_no_docker_engine(tmp_path: Path) -> None:
    result = _cli(
        "doctor",
        "--executor",
        "docker",
        "--state-dir",
        str(tmp_path / "s"),
        env={"DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"},
    )
    assert result.returncode == 1
    line = next(x for x in result.stdout.splitlines() if x.startswith("[FAIL] docker"))
    assert "does not answer" in line and "Start it" in line and "--executor local" in line


def test_pool_unreachable(tmp_path: Path) -> None:
    result = _cli(
        "doctor",
        "--executor",
        "local",
        "--pool",
        f"127.0.0.1:{_closed_port()}",
        "--state-dir",
        str(tmp_path / "s"),
    )
    assert result.returncode == 1
    line = next(x for x in result.stdout.splitlines() if x.startswith("[FAIL] pool"))
    assert "does not answer" in line and "hivemind-nodepool serve" in line and "--ca" in line


def test_missing_image_says_how_to_build_it(tmp_path: Path, docker_engine: None) -> None:
    result = _cli(
        "doctor",
        "--executor",
        "docker",
        "--image",
        "hivemind-runtime:not-built",
        "--state-dir",
        str(tmp_path / "s"),
    )
    assert result.returncode == 1
    line = next(x for x in result.stdout.splitlines() if x.startswith("[FAIL] image"))
    assert "hivemind-worker image build" in line and "--bootstrap" in line


def test_wrong_join_token(pool, tmp_path: Path) -> None:
    result = _cli(
        "doctor",
        "--executor",
        "local",
        "--pool",
        pool.address,
        "--join-token",
        "wrong",
        "--state-dir",
        str(tmp_path / "s"),
    )
    assert "join-token create" in result.stdout  # doctor says where a refused token is fixed
    result = _cli(
        "run",
        "--executor",
        "local",
        "--pool",
        pool.address,
        "--join-token",
        "wrong-token",
        "--state-dir",
        str(tmp_path / "s"),
    )
    assert result.returncode == 1
    assert "refused the join token" in result.stderr
    assert "hivemind-nodepool join-token create" in result.stderr


def test_gpu_without_a_driver_is_told_from_no_gpu(tmp_path: Path) -> None:
    def device(name: str, vendor: str, klass: str) -> None:
        folder = tmp_path / "pci" / name
        folder.mkdir(parents=True)
        (folder / "vendor").write_text(vendor + "\n")
        (folder / "class").write_text(klass + "\n")

    device("0000:00:02.0", "0x8086", "0x030000")  # an Intel graphics card
    device("0000:00:1f.0", "0x10de", "0x060100")  # an NVIDIA bridge, not a GPU
    assert nvidia_pci_devices(tmp_path / "pci") == []
    device("0000:3b:00.0", "0x10de", "0x030200")  # an NVIDIA 3D controller
    assert nvidia_pci_devices(tmp_path / "pci") == ["0000:3b:00.0"]
    assert nvidia_pci_devices(tmp_path / "absent") == []
    # On this machine: either GPUs are listed, or the line says why not and what happens to GPU tasks.
    result = _cli("doctor", "--executor", "local", "--state-dir", str(tmp_path / "s"))
    line = next(x for x in result.stdout.splitlines() if " gpus " in x)
    assert "other workers" in line or "install the NVIDIA driver" in line or "GiB" in line, line
