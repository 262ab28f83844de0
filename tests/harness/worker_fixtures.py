"""pytest fixtures for a real worker joined to the `pool` fixture: `docker_worker`, `local_worker`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .pool import PoolProcess
from .worker import WorkerProcess, remove_task_containers

__all__ = ["docker_worker", "local_worker", "remove_task_containers", "runtime_image"]


@pytest.fixture
def runtime_image(docker_engine: None) -> None:
    """The Docker engine and the runtime image, for tests that start docker workers themselves."""
    from conftest import require

    from hivemind_worker.image import runtime_image_exists

    require(runtime_image_exists(), "the runtime image is missing: hivemind-worker image build --bootstrap")


@pytest.fixture
def docker_worker(pool: PoolProcess, runtime_image: None) -> Iterator[WorkerProcess]:
    """A docker-executor worker (needs the Docker engine and the runtime image)."""
    with WorkerProcess(pool, executor="docker", name="docker-worker") as worker:
        yield worker


@pytest.fixture
def local_worker(pool: PoolProcess) -> Iterator[WorkerProcess]:
    """A local-executor worker (no isolation; no Docker needed)."""
    with WorkerProcess(pool, executor="local", name="local-worker") as worker:
        yield worker
