"""Stopping the subprocesses the harness starts (pools and workers) the same way."""

from __future__ import annotations

import signal
import subprocess


def stop(proc: subprocess.Popen[bytes] | None, timeout: float) -> int | None:
    """SIGTERM and wait; returns the exit status (None when it never ran). Past the timeout it is
    killed and TimeoutExpired raised: a process that ignores SIGTERM is a failure worth seeing."""
    if proc is None or proc.poll() is not None:
        return proc.returncode if proc else None
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        kill(proc)
        raise


def kill(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGKILL, as a crash would, and reap it."""
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait()
