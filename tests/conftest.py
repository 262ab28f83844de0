"""Shared test configuration: what a test may need, and how a missing need is reported.

Under CI (CI set), a test that needs Docker or a browser fails when they are missing: a skipped
test must never hide a missing piece. On a developer's machine it is skipped with the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid

import psutil
import pytest

pytest_plugins = ["harness.fixtures", "harness.worker_fixtures", "harness.env_worker"]

IN_CI = bool(os.environ.get("CI"))

# Every process the tests start inherits this variable (the harness drops only HIVEMIND_* ones), so a
# process that outlived its parent and was re-parented away from pytest is still recognised as ours.
RUN_MARK = "PYTEST_HIVEMIND_RUN"
RUN_ID = uuid.uuid4().hex
# Engines a test may start on demand; they serve every later run and are meant to stay.
LONG_LIVED = frozenset({"dockerd", "containerd", "containerd-shim", "containerd-shim-runc-v2"})
LEFT_GRACE = 5.0  # seconds a process may take to finish exiting after the last teardown


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


def pytest_configure(config: pytest.Config) -> None:
    os.environ[RUN_MARK] = RUN_ID


def _describe(proc: psutil.Process) -> str:
    try:
        command = " ".join(proc.cmdline()) or proc.name()
        return f"pid {proc.pid} (parent {proc.ppid()}): {command[:240]}"
    except psutil.Error:
        return f"pid {proc.pid}"


def processes_left() -> list[psutil.Process]:
    """Live processes started by this run: descendants of pytest, and any process carrying this
    run's mark. Zombies are dead already (only not reaped yet) and not counted."""
    me = psutil.Process()
    found = {proc.pid: proc for proc in me.children(recursive=True)}
    for proc in psutil.process_iter():
        if proc.pid == me.pid or proc.pid in found:
            continue
        try:
            if proc.environ().get(RUN_MARK) == RUN_ID:
                found[proc.pid] = proc
        except (psutil.Error, OSError):
            continue  # gone meanwhile, or not ours to read
    left = []
    for proc in found.values():
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and proc.name() not in LONG_LIVED:
                left.append(proc)
        except psutil.Error:
            continue
    return left


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run when a process it started is still alive once every fixture is torn down.
    trylast: pytest's own sessionfinish tears down what an interrupted run left set up first."""
    from harness import processes

    left = processes.wait_gone(processes_left(), LEFT_GRACE)
    if not left:
        return
    lines = [_describe(proc) for proc in left]
    for proc in left:
        try:
            proc.kill()
        except psutil.Error:
            continue
    processes.wait_gone(left, LEFT_GRACE)
    if session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    message = "these processes started by the tests were still running at the end (now killed)"
    if reporter is None:
        print(f"{message}:\n" + "\n".join(lines))
        return
    reporter.stats.setdefault("leaked processes", []).extend(lines)
    reporter.ensure_newline()
    reporter.write_sep("=", "processes left running", red=True, bold=True)
    reporter.write_line(f"{message}:", red=True)
    for line in lines:
        reporter.write_line(f"  {line}")
