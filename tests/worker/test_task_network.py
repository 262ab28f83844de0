"""Tasks the pool allows network: they get the worker's task network where it exists, and fail with a
clear reason (never the host's network) where the engine has none, as with dockerd --bridge=none."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.pool import PoolProcess
from harness.worker import WorkerProcess
from harness.worker_fixtures import remove_task_containers

from hivemind_nodepool.proto import nodepool_pb2 as pb
from hivemind_nodepool.protocol.errors import InvalidInput
from hivemind_worker.settings import load_settings

from .helpers import bundle, notebook, stdout_of, submit, task_containers, user, wait_state

INTERFACES = "import os\nprint('interfaces', sorted(os.listdir('/sys/class/net')))"


@pytest.fixture
def open_pool(tmp_path: Path) -> Iterator[PoolProcess]:
    """A pool whose policy lets tasks that ask for network have it."""
    with PoolProcess(tmp_path / "open-pool", env={"HIVEMIND_POOL_ALLOW_NETWORK": "1"}) as process:
        yield process


def _has_network(name: str) -> bool:
    found = subprocess.run(
        ["docker", "network", "ls", "--format", "{{.Name}}"], capture_output=True, text=True, check=False
    ).stdout.split()
    return name in found


def _worker(pool: PoolProcess, name: str, *args: str) -> WorkerProcess:
    return WorkerProcess(pool, executor="docker", name=name, extra_args=list(args)).start()


@pytest.mark.docker
@pytest.mark.slow
def test_no_task_network_fails_clearly(open_pool: PoolProcess, docker_engine: None) -> None:
    # On an engine without a default bridge (as here) the default setting is the case under test;
    # elsewhere a network name that does not exist stands in for it.
    args = [] if not _has_network("bridge") else ["--task-network", f"missing-{os.urandom(4).hex()}"]
    worker = _worker(open_pool, "no-net-worker", *args)
    try:
        alice = user(open_pool)
        task = submit(alice, bundle(notebook(INTERFACES)), allow_network=True, max_retries=0)
        final = wait_state(alice, task.id, timeout=60)
        assert final.state == pb.FAILED
        assert "no network for tasks" in final.error, final.error
        assert "docker network create" in final.error and "--task-network" in final.error
        assert "interfaces" not in stdout_of(list(alice.watch(task.id, follow=False))), "the task ran"
        assert task_containers(task.id) == []
        # The same worker still runs tasks that do not ask for network.
        plain = submit(alice, bundle(notebook(INTERFACES)))
        done = wait_state(alice, plain.id, timeout=90)
        assert done.state == pb.SUCCEEDED, done.error
        assert "interfaces ['lo']" in stdout_of(list(alice.watch(plain.id, follow=False)))
    finally:
        worker.stop()
        remove_task_containers(worker.worker_id)


@pytest.mark.docker
@pytest.mark.slow
def test_allowed_network_uses_the_task_network(open_pool: PoolProcess, docker_engine: None) -> None:
    from conftest import require

    network = f"hivemind-test-{os.urandom(4).hex()}"
    made = subprocess.run(
        ["docker", "network", "create", "--label", "org.hivemind.test=1", network],
        capture_output=True,
        text=True,
        check=False,
    )
    require(made.returncode == 0, f"this engine cannot create a network: {made.stderr.strip()}")
    worker = _worker(open_pool, "net-worker", "--task-network", network)
    try:
        alice = user(open_pool)
        opened = submit(alice, bundle(notebook(INTERFACES)), allow_network=True)
        closed = submit(alice, bundle(notebook(INTERFACES)))
        for task, expected in ((opened, "interfaces ['eth0', 'lo']"), (closed, "interfaces ['lo']")):
            final = wait_state(alice, task.id, timeout=120)
            assert final.state == pb.SUCCEEDED, (final.error, final.traceback)
            assert expected in stdout_of(list(alice.watch(task.id, follow=False)))
    finally:
        worker.stop()
        remove_task_containers(worker.worker_id)
        subprocess.run(["docker", "network", "rm", network], capture_output=True, check=False)


def test_the_host_network_is_never_a_task_network() -> None:
    for bad in ("host", "none", "container:abc", ""):
        with pytest.raises(InvalidInput, match="never get the host's network"):
            load_settings(None, {"task_network": bad}, environ={})
    settings = load_settings(None, {"task_network": "hivemind-tasks"}, environ={})
    assert settings.task_network == "hivemind-tasks"
