"""pytest fixtures for a real worker joined to the `pool` fixture: `docker_worker`, `local_worker`."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from .pool import PoolProcess
from .worker import WorkerProcess


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


def _stop(worker: WorkerProcess) -> None:
    try:
        worker.stop(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    finally:
        worker.kill()
        remove_task_containers(worker.worker_id)


@pytest.fixture
def docker_worker(pool: PoolProcess, docker_engine: None) -> Iterator[WorkerProcess]:
    """A docker-executor worker (needs the Docker engine and the runtime image)."""
    from conftest import require

    from hivemind_worker.image import runtime_image_exists

    require(runtime_image_exists(), "the runtime image is missing: hivemind-worker image build --bootstrap")
    worker = WorkerProcess(pool, executor="docker", name="docker-worker").start()
    try:
        yield worker
    finally:
        _stop(worker)


@pytest.fixture
def local_worker(pool: PoolProcess) -> Iterator[WorkerProcess]:
    """A local-executor worker (no isolation; no Docker needed)."""
    worker = WorkerProcess(pool, executor="local", name="local-worker").start()
    try:
        yield worker
    finally:
        _stop(worker)
