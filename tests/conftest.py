"""Shared test configuration: what a test may need, and how a missing need is reported.

Under CI (CI set), a test that needs Docker or a browser fails when they are missing: a skipped
test must never hide a missing piece. On a developer's machine it is skipped with the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

pytest_plugins = ["harness.fixtures", "harness.worker_fixtures"]

IN_CI = bool(os.environ.get("CI"))


def require(condition: bool, reason: str) -> None:
    """Fail under CI, skip elsewhere, when a test's real dependency is missing."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"{reason} (CI is set, so this fails instead of skipping)")
    pytest.skip(reason)


def docker_available() -> bool:
    if not shutil.which("docker"):
        return False
    return subprocess.run(["docker", "info"], capture_output=True, check=False).returncode == 0


@pytest.fixture(scope="session")
def docker_engine() -> None:
    """Depend on this fixture for a test that needs a running Docker engine."""
    require(docker_available(), "no Docker engine answers (run scripts/start-docker.sh as root)")


@pytest.fixture(scope="session")
def chromium_path() -> str:
    path = shutil.which("chromium") or "/usr/bin/chromium"
    require(os.path.exists(path), "Chromium is not installed (scripts/setup.sh installs it as root)")
    return path
