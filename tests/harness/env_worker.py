"""A Docker worker for environment tests: its own package cache, a wheelhouse of tiny wheels the
test makes itself, --offline (no package index), and an index URL with credentials nothing may show."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.pool import PoolProcess
from harness.wheels import demo_wheelhouse
from harness.worker import WorkerProcess
from harness.worker_fixtures import remove_task_containers

SECRET = "s3cret-index-token"


class EnvWorker:
    """A Docker worker with its own package cache, the test wheelhouse, --offline, and an index URL
    with credentials that nothing may show."""

    def __init__(
        self, pool: PoolProcess, tmp: Path, *extra: str, offline: bool = True, index_url: str = ""
    ) -> None:
        self.wheelhouse = demo_wheelhouse(tmp / "wheelhouse")
        self.cache = tmp / "uv-cache"
        self.args = [
            "--find-links",
            str(self.wheelhouse),
            "--uv-cache",
            str(self.cache),
            "--index-url",
            index_url or f"http://bob:{SECRET}@127.0.0.1:9/simple",
            *(["--offline"] if offline else []),
            *extra,
        ]
        self.process = WorkerProcess(pool, executor="docker", name="env-worker", extra_args=self.args)

    def env_cli(self, *args: str) -> str:
        command = [sys.executable, "-m", "hivemind_worker.cli", "env", *args]
        command += ["--state-dir", str(self.process.state_dir), "--executor", "docker"]
        done = subprocess.run(command, capture_output=True, text=True, check=False, env=os.environ.copy())
        assert done.returncode == 0, done.stderr
        return done.stdout

    def environments(self) -> list[dict[str, object]]:
        rows: list[dict[str, object]] = json.loads(self.env_cli("list", "--json"))
        return rows

    def archives(self) -> set[str]:
        """What uv unpacked into the shared cache: one entry per wheel it ever fetched."""
        folder = self.cache / "archive-v0"
        return set(os.listdir(folder)) if folder.is_dir() else set()


@pytest.fixture
def env_worker(pool: PoolProcess, runtime_image: None, tmp_path: Path) -> Iterator[EnvWorker]:
    worker = EnvWorker(pool, tmp_path)
    worker.process.start()
    try:
        yield worker
    finally:
        worker.process.stop()
        remove_task_containers(worker.process.worker_id)
        worker.env_cli("prune")
