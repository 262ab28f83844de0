"""PoolProcess: the real `hivemind-nodepool serve` as a subprocess on a free port in a temp data dir."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from hivemind_nodepool.client import PoolClient
from hivemind_nodepool.protocol.errors import HiveMindError

from . import processes

if TYPE_CHECKING:
    from .worker import WorkerProcess

ADMIN_NAME = "admin"
ADMIN_PASSWORD = "admin-password-1"


class PoolProcess:
    """Start with `.start()`; `.address` is HOST:PORT once started. Logs go to DATA_DIR/../pool.log."""

    def __init__(
        self,
        data_dir: Path,
        heartbeat_interval: float = 1.0,
        heartbeat_timeout: float = 3.0,
        extra_args: list[str] | None = None,
        env: dict[str, str] | None = None,
        listen: str = "127.0.0.1:0",
        ca_file: Path | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        self.extra_args = list(extra_args or [])
        self.env = env
        self.listen = listen
        self.ca_file = ca_file  # set when the pool serves TLS
        self.address = ""
        self.metrics: str | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}.log"
        self._admin_ready = False
        self.workers: list[WorkerProcess] = []  # made for this pool; stopped before it on exit

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "hivemind_nodepool.cli.admin",
            "serve",
            "--listen",
            self.listen,
            "--data-dir",
            str(self.data_dir),
            "--heartbeat-interval",
            str(self.heartbeat_interval),
            "--heartbeat-timeout",
            str(self.heartbeat_timeout),
            "--disk-reserve",  # hundreds of test pools: 1 MiB each, not the default (extra_args win)
            "1M",
            *self.extra_args,
        ]

    def start(self, timeout: float = 30.0) -> PoolProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        pool_file = self.data_dir / "pool.json"
        pool_file.unlink(missing_ok=True)
        env = {**os.environ, **(self.env or {})}
        with open(self.log_path, "ab") as log:
            self.proc = processes.start(self.command(), log, env)
        try:
            self._wait_ready(pool_file, timeout)
        except BaseException:
            self.kill()  # a start that failed leaves nothing running
            raise
        if self.listen.endswith(":0"):  # restart on the same port
            self.listen = self.address
        return self

    def _wait_ready(self, pool_file: Path, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the pool exited with {self.proc.returncode}:\n{self.log()}")
            try:
                info = json.loads(pool_file.read_text())
                if info.get("pid") == self.proc.pid:
                    self.address = info["address"]
                    self.metrics = info.get("metrics")
                    break
            except (FileNotFoundError, ValueError):
                pass
            time.sleep(0.05)
        else:
            raise RuntimeError(f"the pool did not write pool.json within {timeout} s:\n{self.log()}")
        # A successful RPC: the login of a user that does not exist answers UNAUTHENTICATED, or
        # RESOURCE_EXHAUSTED once the sign-in limit counts this probe's earlier failures.
        with PoolClient(self.address, ca_file=self.ca_file, timeout=5) as client:
            client.wait_ready(timeout=max(1.0, deadline - time.monotonic()))
            try:
                client.login("nobody-at-all", "not-a-password")
            except HiveMindError as exc:
                if exc.code.name not in ("UNAUTHENTICATED", "RESOURCE_EXHAUSTED"):
                    raise

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-20_000:]
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM and wait; returns the exit status (None when it was not running)."""
        return processes.stop(self.proc, timeout)

    def kill(self) -> None:
        processes.kill(self.proc)

    def __enter__(self) -> PoolProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        """Stop its workers, then it (SIGTERM), and make sure all are gone even when stopping failed."""
        try:
            for worker in reversed(self.workers):
                worker.close()
        finally:
            try:
                self.stop()
            finally:
                self.kill()

    def restart(self, hard: bool = False) -> PoolProcess:
        """Stop (SIGKILL when hard) and start again on the same port and data dir."""
        if hard:
            self.kill()
        else:
            self.stop()
        return self.start()

    def admin_cli(
        self, *args: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run `hivemind-nodepool ARGS --data-dir DATA_DIR`."""
        return subprocess.run(
            [sys.executable, "-m", "hivemind_nodepool.cli.admin", *args, "--data-dir", str(self.data_dir)],
            input=stdin,
            capture_output=True,
            text=True,
            check=check,
            timeout=60,
        )

    def add_user(self, name: str, password: str, admin: bool = False) -> None:
        args = ["user", "add", name, "--password-stdin"] + (["--admin"] if admin else [])
        result = self.admin_cli(*args, stdin=password + "\n", check=False)
        if result.returncode != 0:
            raise RuntimeError(f"user add failed: {result.stderr}")

    def client(self, token: str | None = None) -> PoolClient:
        return PoolClient(self.address, token=token, ca_file=self.ca_file)

    def login(self, name: str, password: str) -> PoolClient:
        client = self.client()
        client.login(name, password)
        return client

    def admin(self) -> PoolClient:
        if not self._admin_ready:
            try:
                self.add_user(ADMIN_NAME, ADMIN_PASSWORD, admin=True)
            except RuntimeError as exc:
                if "already exists" not in str(exc):
                    raise
            self._admin_ready = True
        return self.login(ADMIN_NAME, ADMIN_PASSWORD)

    def join_token(self) -> str:
        result = self.admin_cli("join-token", "create")
        return result.stdout.strip()
