"""The join token stays out of `ps`: a worker takes it from a file, standard input or the environment,
and nothing of it shows in its command line. The old `--join-token` flag still works, with a
warning in --help and in the log."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from harness.pool import PoolProcess
from harness.worker import WorkerProcess

WARNING = "--join-token on the command line is visible to every local user"


def _cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HIVEMIND_")}
    return subprocess.run(
        [sys.executable, "-m", "hivemind_worker.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def _seen_by_others(pid: int) -> str:
    """What every local account reads about the process: /proc/PID/cmdline and `ps`."""
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    ps = subprocess.run(["ps", "-ww", "-o", "args=", "-p", str(pid)], capture_output=True, text=True).stdout
    return cmdline + "\n" + ps


@pytest.mark.parametrize("via", ["file", "stdin", "env"])
def test_the_token_never_shows_in_ps(pool: PoolProcess, via: str) -> None:
    token = pool.join_token()
    with WorkerProcess(
        pool, executor="local", name=f"quiet-{via}", join_token=token, join_token_via=via
    ) as w:
        seen = _seen_by_others(w.pid)
        assert "run" in seen and "--pool" in seen, seen  # it is the worker we look at
        assert token not in seen and token.split("_", 1)[1] not in seen, seen
        assert WARNING not in w.log()


def test_the_old_flag_still_works_and_warns(pool: PoolProcess) -> None:
    with WorkerProcess(pool, executor="local", name="loud", join_token_via="flag") as worker:
        assert "--join-token" in _seen_by_others(worker.pid)
        assert WARNING in worker.log() and "--join-token-file" in worker.log()
    help_text = " ".join(_cli("run", "--help").stdout.split())
    assert "AVOID THE FLAG: every local user sees it in ps" in help_text
    assert "HIVEMIND_WORKER_JOIN_TOKEN" in help_text and "--join-token-file" in help_text


def test_bad_token_files_are_clear_errors(tmp_path: Path) -> None:
    base = ["run", "--pool", "127.0.0.1:1", "--executor", "local", "--state-dir", str(tmp_path / "s")]
    empty = tmp_path / "empty"
    empty.write_text("\n")
    result = _cli(*base, "--join-token-file", str(empty))
    assert result.returncode == 1 and "no join token in" in result.stderr
    result = _cli(*base, "--join-token-file", str(tmp_path / "missing"))
    assert result.returncode == 1 and "cannot read the join token file" in result.stderr
    result = _cli(*base, "--join-token-file", "-", "--join-token", "hmj_x")
    assert result.returncode == 1 and "came twice" in result.stderr
    result = _cli(*base, "--join-token-file", "-", stdin="")
    assert result.returncode == 1 and "no join token in standard input" in result.stderr
