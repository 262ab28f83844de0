"""`hivemind-worker image build`: shows progress for its long steps and leaves no untagged
build-stage image behind."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from hivemind_worker.image import BOOTSTRAP_TAG, build_progress

pytestmark = [pytest.mark.docker]


def _dangling_build_stages() -> set[str]:
    """Untagged images that are a runtime build's first stage (found by what they ran, so one left
    by a build without the stage label counts too)."""
    found = subprocess.run(
        ["docker", "images", "-q", "--no-trunc", "--filter", "dangling=true"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    stages = set()
    for image in found:
        history = subprocess.run(
            ["docker", "history", "--no-trunc", "--format", "{{.CreatedBy}}", image],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        if "ipykernel install --prefix /opt/hivemind/venv" in history:
            stages.add(image)
    return stages


def _image_exists(tag: str) -> bool:
    found = subprocess.run(["docker", "image", "inspect", tag], capture_output=True, check=False)
    return found.returncode == 0


def test_progress_lines_are_picked_from_the_build_output() -> None:
    said: list[str] = []
    build_progress(
        "Step 4/12 : RUN set -eu; python3 -m venv /opt/hivemind/venv\n ---> Running in 1a2b\n"
        "Collecting papermill>=2.5\n  Downloading papermill-2.6.0-py3-none-any.whl (38 kB)\n"
        "Installing collected packages: six, papermill\nSuccessfully installed papermill-2.6.0\n",
        said.append,
    )
    assert said[0].startswith("  Step 4/12 : RUN")
    assert [line.strip() for line in said[1:]] == [
        "pip: Collecting papermill>=2.5",
        "pip: Installing collected packages: six, papermill",
        "pip: Successfully installed papermill-2.6.0",
    ]
    build_progress("\x1b[0m\n" + "x" * 10_000 + "\n", said.append)  # noise: nothing shown
    assert len(said) == 4


@pytest.mark.slow
def test_build_prints_progress_and_leaves_no_untagged_image(docker_engine: None) -> None:
    from conftest import require

    require(
        _image_exists(BOOTSTRAP_TAG),
        f"the base image {BOOTSTRAP_TAG} is missing: hivemind-worker image build --bootstrap",
    )
    tag = f"hivemind-runtime:build-test-{os.urandom(4).hex()}"
    before = _dangling_build_stages()
    try:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "hivemind_worker.cli",
                "image",
                "build",
                "--tag",
                tag,
                "--base-image",
                BOOTSTRAP_TAG,
            ],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        out = result.stdout
        assert "Step 1/" in out and "pip: Collecting papermill" in out
        assert "pip: Successfully installed" in out and f"built {tag}" in out
        assert _image_exists(tag)
        left = _dangling_build_stages() - before
        assert not left, f"the build left untagged build-stage images: {left}"
        check = subprocess.run(
            ["docker", "run", "--rm", "--network", "none", tag], capture_output=True, text=True, check=False
        )
        assert "hivemind runtime" in check.stdout, check.stderr
    finally:
        subprocess.run(["docker", "image", "rm", tag], capture_output=True, check=False)
