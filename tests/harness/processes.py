"""Starting and stopping the subprocesses the harness runs (pools, workers, `hivemind up`).

Each starts in its own session, so it and everything it starts without a session of its own share
one process group: stopping it also stops what it left behind, and a Ctrl-C on the test run
reaches only pytest, whose teardown then stops them in order. Every process started here is
recorded, so the per-test fixture in `fixtures.py` can stop what a test left running.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from typing import IO, Any

import psutil

log = logging.getLogger(__name__)

# Every process `start` gave out and `stop_all_started` has not yet seen ended. Strong references:
# a test that drops its handle on a running process must not make it unfindable.
STARTED: list[subprocess.Popen[bytes]] = []


def start(
    command: Sequence[str],
    log_file: IO[bytes] | int | None = None,
    env: dict[str, str] | None = None,
    **kwargs: Any,
) -> subprocess.Popen[bytes]:
    """Popen in a new session (its own process group), recorded; with `log_file`, stdout and
    stderr go there. Other keyword arguments are Popen's."""
    if log_file is not None:
        kwargs.update(stdout=log_file, stderr=subprocess.STDOUT)
    proc = subprocess.Popen(list(command), env=env, start_new_session=True, **kwargs)
    STARTED.append(proc)
    return proc


def group_members(pgid: int) -> list[psutil.Process]:
    """The live processes of a process group (zombies are dead already and not counted)."""
    members = []
    for proc in psutil.process_iter(["status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(proc.pid) == pgid:
                members.append(proc)
        except (ProcessLookupError, psutil.Error):
            continue
    return members


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _kill_all(procs: list[psutil.Process]) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(procs, timeout=5)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL what is left of the process's group. Its pid names the group: no other process takes
    that number while a member lives, nor soon after (pids are handed out in order until they wrap)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def stop(proc: subprocess.Popen[bytes] | None, timeout: float) -> int | None:
    """SIGTERM to the process itself (a worker drains, a pool shuts down) and wait; returns the
    exit status (None when it never ran). What it leaves in its group is killed. Past the timeout
    it is killed with everything it started and TimeoutExpired raised: a process that ignores
    SIGTERM is a failure worth seeing."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            kill(proc)
            raise
    _kill_group(proc)
    return proc.returncode


def kill(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGKILL, as a crash would, and reap it; its group and its descendants go with it (a process
    that crashes takes nothing with it, but a test must not leave them running)."""
    if proc is None:
        return
    if proc.poll() is None:
        below = _descendants(proc.pid)
        proc.kill()
        proc.wait()
        _kill_all(below)
    _kill_group(proc)


def stop_all_started(keep: Sequence[subprocess.Popen[bytes]], timeout: float = 30.0) -> list[str]:
    """Stop (then kill) every recorded process not in `keep` that still runs; returns a line for
    each one that had to be stopped here."""
    stopped = []
    kept = {id(proc) for proc in keep}
    for proc in list(STARTED):
        if id(proc) in kept:
            continue
        if proc.poll() is None:
            stopped.append(f"pid {proc.pid}: {' '.join(str(a) for a in proc.args)}"[:300])
            try:
                stop(proc, timeout)
            except subprocess.TimeoutExpired:
                log.warning("pid %d ignored SIGTERM for %.0fs and was killed", proc.pid, timeout)
        else:
            _kill_group(proc)
        STARTED.remove(proc)
    return stopped


def wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait up to `timeout` for the processes to end; returns those still alive."""
    deadline = time.monotonic() + timeout
    alive = procs
    while alive and time.monotonic() < deadline:
        _gone, alive = psutil.wait_procs(alive, timeout=min(0.2, max(0.0, deadline - time.monotonic())))
    return alive
