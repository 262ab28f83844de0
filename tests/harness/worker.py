"""WorkerProcess: the real `hivemind-worker run` as a subprocess, joined to a PoolProcess."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from hivemind_nodepool.proto import nodepool_pb2 as pb

from . import processes
from .pool import PoolProcess

# Environment builds on machines whose Docker engine has no bridge network need the host's network;
# the worker picks that itself (image.default_build_network), so nothing is set here.


class WorkerProcess:
    """`.start()` waits until the pool lists the worker ONLINE; `.stop()` sends SIGTERM (drain),
    `.kill()` SIGKILL, `.close()` (or leaving a `with` block) stops it for good. Logs go to
    STATE_DIR/../<name>.log; `.worker_id` is set once it joined. Its pool's exit closes it too."""

    def __init__(
        self,
        pool: PoolProcess,
        executor: str = "docker",
        state_dir: Path | None = None,
        labels: dict[str, str] | None = None,
        extra_args: list[str] | None = None,
        name: str = "test-worker",
        env: dict[str, str] | None = None,
        join_token: str | None = None,
        join_token_via: str = "env",
    ) -> None:
        self.pool = pool
        self.executor = executor
        self.state_dir = Path(state_dir) if state_dir else pool.data_dir.parent / f"worker-{name}"
        self.labels = dict(labels or {})
        self.extra_args = list(extra_args or [])
        self.name = name
        self.env = env
        self.join_token = join_token
        # How the token reaches the worker: "env" (HIVEMIND_WORKER_JOIN_TOKEN), "file"
        # (--join-token-file), "stdin" (--join-token-file -) or "flag" (--join-token, visible in ps).
        self.join_token_via = join_token_via
        self._token = ""
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.state_dir.parent / f"{self.state_dir.name}.log"
        self.worker_id = ""
        self._closed = False
        pool.workers.append(self)  # the pool stops it, if nothing else did, before it stops

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def command(self) -> list[str]:
        token = self._token = self.join_token or self.pool.join_token()
        passing = {"flag": ["--join-token", token], "stdin": ["--join-token-file", "-"], "env": []}
        if self.join_token_via == "file":
            path = self.state_dir.parent / f"{self.state_dir.name}.join-token"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(token + "\n")
            passing["file"] = ["--join-token-file", str(path)]
        command = [
            sys.executable,
            "-m",
            "hivemind_worker.cli",
            "-v",
            "run",
            "--pool",
            self.pool.address,
            *passing[self.join_token_via],
            "--executor",
            self.executor,
            "--state-dir",
            str(self.state_dir),
            "--name",
            self.name,
            "--heartbeat-interval",
            "0.5",
            *self.extra_args,
        ]
        if self.labels:
            command += ["--labels", ",".join(f"{k}={v}" for k, v in self.labels.items())]
        return command

    def start(self, timeout: float = 60.0) -> WorkerProcess:
        self._closed = False
        self.state_dir.parent.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("HIVEMIND_")}
        command = self.command()
        if self.join_token_via == "env":
            env["HIVEMIND_WORKER_JOIN_TOKEN"] = self._token
        env.update(self.env or {})
        stdin = subprocess.PIPE if self.join_token_via == "stdin" else subprocess.DEVNULL
        with open(self.log_path, "ab") as log:
            self.proc = processes.start(command, log, env, stdin=stdin)
        if self.proc.stdin is not None:
            with self.proc.stdin:
                self.proc.stdin.write(self._token.encode() + b"\n")
        try:
            self.wait_online(timeout)
        except BaseException:
            self.kill()  # a start that failed leaves nothing running
            raise
        return self

    def _identity(self) -> str:
        import json

        try:
            return str(json.loads((self.state_dir / "identity.json").read_text())["worker_id"])
        except (OSError, ValueError, KeyError):
            return ""

    def wait_online(self, timeout: float = 60.0) -> pb.Worker:
        deadline = time.monotonic() + timeout
        with self.pool.admin() as admin:
            while time.monotonic() < deadline:
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError(f"the worker exited with {self.proc.returncode}:\n{self.log()}")
                self.worker_id = self.worker_id or self._identity()
                if self.worker_id:
                    for worker in admin.list_workers():
                        if worker.id == self.worker_id and worker.state == pb.WORKER_ONLINE:
                            return worker
                time.sleep(0.1)
        raise RuntimeError(f"the worker was not ONLINE within {timeout:.0f}s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-20_000:]
        except FileNotFoundError:
            return ""

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM (drain) and wait; returns the exit status."""
        return processes.stop(self.proc, timeout)

    def kill(self) -> None:
        """SIGKILL, as a crash would: its containers stay until it (or another run) reaps them."""
        processes.kill(self.proc)

    def close(self, timeout: float = 30.0) -> None:
        """The end of its test: stop it (drain), kill it if it will not stop, remove its containers."""
        if self._closed:
            return
        self._closed = True
        try:
            self.stop(timeout)
        except subprocess.TimeoutExpired:
            pass
        finally:
            self.kill()
            if self.executor == "docker":
                remove_task_containers(self.worker_id)
            unmount_task_disks(self.state_dir)

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def remove_task_containers(worker_id: str) -> None:
    """Remove containers a test's worker left behind (only that worker's, by label)."""
    if not worker_id:
        return
    found = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=org.hivemind.worker={worker_id}"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    if found:
        subprocess.run(["docker", "rm", "-f", *found], capture_output=True, check=False)


def unmount_task_disks(state_dir: Path) -> None:
    """Unmount task disks a killed worker left mounted under its state dir (the worker itself does
    this when it starts again; a test's worker may never start again)."""
    if os.geteuid() != 0:
        return
    prefix = str(state_dir.resolve()) + "/"
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return
    points = [f[4] for f in (line.split() for line in lines) if len(f) > 4 and f[4].startswith(prefix)]
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)
