"""A worker killed mid-task, and a pool restarted mid-task: the task still finishes, once."""

from __future__ import annotations

from pathlib import Path

import pytest
from harness.pool import PoolProcess
from harness.worker import WorkerProcess
from harness.worker_fixtures import remove_task_containers

from hivemind_nodepool.proto import nodepool_pb2 as pb

from .helpers import (
    bundle,
    notebook,
    result_files,
    stdout_of,
    submit,
    task_containers,
    user,
    wait_for,
    wait_state,
)

pytestmark = [pytest.mark.docker, pytest.mark.slow]

SLOW = (
    "import time\nprint('started', flush=True)\ntime.sleep(4)\n"
    "import os\nos.makedirs('outputs', exist_ok=True)\nopen('outputs/done.txt', 'w').write('done')\n"
    "print('finished', flush=True)"
)


def _started(alice, task_id: str) -> bool:
    return "started" in stdout_of(list(alice.watch(task_id, follow=False)))


def test_sigkill_worker_mid_task_then_another_finishes_it_once(pool, docker_engine, tmp_path: Path) -> None:
    alice = user(pool)
    first = WorkerProcess(pool, executor="docker", name="first").start()
    second: WorkerProcess | None = None
    try:
        task = submit(alice, bundle(notebook(SLOW)), max_retries=2)
        wait_for(lambda: _started(alice, task.id), 60, "the first attempt to start")
        assert alice.get_task(task.id).worker_id == first.worker_id
        first.kill()  # a crash: no goodbye, its container keeps running for now
        second = WorkerProcess(pool, executor="docker", name="second").start()
        final = wait_state(alice, task.id, timeout=120)
        assert final.state == pb.SUCCEEDED, (final.error, second.log()[-2000:])
        assert final.attempt == 2 and final.worker_id == second.worker_id
        states = [t.state for t in final.timeline]
        assert states.count(pb.SUCCEEDED) == 1
        assert result_files(alice, task.id, tmp_path)["outputs/done.txt"] == b"done"

        # The crashed worker's container stopped by itself when the worker's lease lapsed, and
        # the engine removed it (test_lease.py holds the timing). The worker comes back with its
        # identity and reports nothing about the old attempt.
        wait_for(lambda: not task_containers(task.id), 30, "the stale container to be gone")
        first = WorkerProcess(pool, executor="docker", name="first", state_dir=first.state_dir).start()
        assert alice.get_task(task.id).state == pb.SUCCEEDED
        assert [t.state for t in alice.get_task(task.id).timeline].count(pb.SUCCEEDED) == 1
    finally:
        for worker in (first, second):
            if worker is not None:
                worker.kill()
                remove_task_containers(worker.worker_id)


@pytest.mark.parametrize("hard", [False, True], ids=["sigterm", "sigkill"])
def test_pool_restart_mid_task(tmp_path: Path, runtime_image: None, hard: bool) -> None:
    # A restart well within the worker's lease (30 s timeout: a 24 s lease) costs nothing; one
    # longer than the lease hands the task back (test_lease.py).
    with PoolProcess(tmp_path / "pool", heartbeat_timeout=30.0) as pool:
        worker = WorkerProcess(pool, executor="docker", name="docker-worker").start()
        _restart_mid_task(pool, worker, hard)


def _restart_mid_task(pool: PoolProcess, docker_worker: WorkerProcess, hard: bool) -> None:
    alice = user(pool)
    task = submit(alice, bundle(notebook(SLOW)))
    wait_for(lambda: _started(alice, task.id), 60, "the task to start")
    pool.restart(hard=hard)
    alice = user(pool)
    final = wait_state(alice, task.id, timeout=120)
    assert final.state == pb.SUCCEEDED, (final.error, docker_worker.log()[-3000:])
    assert final.attempt == 1, "the restart should not have cost an attempt"
    events = list(alice.watch(task.id, follow=False))
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    text = stdout_of(events)
    assert text.count("started") == 1 and text.count("finished") == 1
