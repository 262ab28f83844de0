"""Attempts are bound to their worker's lease: a worker that is frozen (SIGSTOP) or killed (SIGKILL)
while a task runs stops answering, its lease lapses, and the task's sandbox stops by itself before
the pool may rerun the task elsewhere. So two attempts never run at once, and a dead worker leaves
no container behind.

The pool here declares a worker lost after 8 s of silence, and leases end 4 s before that. The
proof of "never at once" is the Docker engine's own record: the first attempt's container died
before the second one's started.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from harness.pool import PoolProcess
from harness.worker import WorkerProcess

from hivemind_nodepool.proto import nodepool_pb2 as pb

from .helpers import bundle, notebook, stdout_of, submit, task_containers, user, wait_for, wait_state

TIMEOUT, MARGIN = 8.0, 4.0
POOL_ARGS = ["--lease-margin", f"{MARGIN:g}s"]

# Runs about 15 s; the output file shows it ran to its end.
STEADY = (
    "import os, time\nprint('started', flush=True)\nfor i in range(15):\n    time.sleep(1)\n"
    "os.makedirs('outputs', exist_ok=True)\nopen('outputs/done.txt', 'w').write('done')\n"
    "print('finished', flush=True)"
)


@pytest.fixture
def lease_pool(tmp_path: Path) -> Iterator[PoolProcess]:
    with PoolProcess(tmp_path / "pool", heartbeat_timeout=TIMEOUT, extra_args=POOL_ARGS) as pool:
        yield pool


class ContainerLife:
    """The engine's start and die events of task containers, as they happen (its timestamps)."""

    def __init__(self) -> None:
        import docker

        self.client = docker.from_env()
        self.events: list[tuple[str, str, float]] = []  # (action, container name, seconds)
        self._stream = self.client.events(
            decode=True,
            filters={"type": "container", "label": "org.hivemind.role=task", "event": ["start", "die"]},
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for event in self._stream:
                name = event.get("Actor", {}).get("Attributes", {}).get("name", "")
                self.events.append((event.get("Action", ""), name, event["timeNano"] / 1e9))
        except Exception:
            return

    def at(self, action: str, name: str) -> float | None:
        found = [when for what, who, when in self.events if what == action and who == name]
        return found[0] if found else None

    def close(self) -> None:
        self._stream.close()
        self.client.close()


@pytest.fixture
def lives(runtime_image: None) -> Iterator[ContainerLife]:
    watcher = ContainerLife()
    try:
        yield watcher
    finally:
        watcher.close()


def _started(alice: Any, task_id: str) -> bool:
    return "started" in stdout_of(list(alice.watch(task_id, follow=False)))


def _requeued_at(task: pb.Task, attempt: int) -> float:
    """When the pool took attempt `attempt` off its worker (its first QUEUED event after it)."""
    for event in task.timeline:
        if event.state == pb.QUEUED and event.attempt == attempt:
            return event.at
    raise AssertionError(f"attempt {attempt} was never requeued: {task.timeline}")


@pytest.mark.docker
@pytest.mark.slow
def test_a_frozen_workers_task_stops_before_it_runs_elsewhere(
    lease_pool: PoolProcess, lives: ContainerLife
) -> None:
    pool = lease_pool
    alice = user(pool)
    first = WorkerProcess(pool, executor="docker", name="frozen").start()
    task = submit(alice, bundle(notebook(STEADY)), max_retries=2)
    wait_for(lambda: _started(alice, task.id), 90, "the first attempt to start")
    assert alice.get_task(task.id).worker_id == first.worker_id
    second = WorkerProcess(pool, executor="docker", name="healthy").start()
    old, new = f"hivemind-{task.id}-1", f"hivemind-{task.id}-2"
    os.kill(first.pid, signal.SIGSTOP)  # the whole worker hangs, its container does not
    frozen = time.time()
    try:
        wait_for(lambda: lives.at("die", old), TIMEOUT + 30, "the frozen worker's container to stop")
        running = wait_for(
            lambda: (t := alice.get_task(task.id)).attempt == 2 and t.state == pb.RUNNING and t,
            120,
            "the second attempt to run",
        )
        assert running.worker_id == second.worker_id
        wait_for(lambda: lives.at("start", new), 30, "the second attempt's container")
        died, started = lives.at("die", old), lives.at("start", new)
        assert died is not None and started is not None
        print(
            f"frozen at 0; attempt 1's container died at {died - frozen:.1f}s; the pool requeued "
            f"at {_requeued_at(alice.get_task(task.id), 1) - frozen:.1f}s; attempt 2 started at "
            f"{started - frozen:.1f}s ({started - died:+.1f}s after attempt 1 ended)"
        )
        assert died < started, "two attempts of the task ran at once"
        assert psutil.Process(first.pid).status() == psutil.STATUS_STOPPED  # it stopped by itself
        assert died < _requeued_at(alice.get_task(task.id), 1), "the pool moved the task before it stopped"
    finally:
        os.kill(first.pid, signal.SIGCONT)
    thawed = first.state_dir / "attempts" / old
    wait_for(lambda: not thawed.exists(), 60, "the stale attempt's folder to go")
    wait_for(
        lambda: (
            f"the pool refused the outcome of {old}" in first.log()
            or f"events of {task.id} attempt 1 refused" in first.log()
        ),
        60,
        "the stale attempt's report to be refused",
    )
    final = wait_state(alice, task.id, timeout=120)
    assert final.state == pb.SUCCEEDED and final.attempt == 2, (final.error, second.log()[-2000:])
    assert [t.state for t in final.timeline].count(pb.SUCCEEDED) == 1
    wait_for(lambda: not task_containers(task.id), 30, "no container of the task left")


@pytest.mark.docker
@pytest.mark.slow
def test_a_killed_workers_container_stops_and_leaves_nothing(
    lease_pool: PoolProcess, lives: ContainerLife
) -> None:
    pool = lease_pool
    alice = user(pool)
    worker = WorkerProcess(pool, executor="docker", name="killed").start()
    task = submit(alice, bundle(notebook(STEADY)), max_retries=2)
    wait_for(lambda: _started(alice, task.id), 90, "the attempt to start")
    name = f"hivemind-{task.id}-1"
    worker.kill()  # kill -9, and it never comes back
    killed = time.time()
    wait_for(lambda: lives.at("die", name), TIMEOUT + 30, "the orphaned container to stop")
    requeued = wait_state(alice, task.id, {pb.QUEUED}, timeout=60)
    died = lives.at("die", name)
    assert died is not None
    print(
        f"killed at 0; its container died at {died - killed:.1f}s (lease {TIMEOUT - MARGIN:g}s); "
        f"the pool requeued the task at {_requeued_at(requeued, 1) - killed:.1f}s"
    )
    assert died < _requeued_at(requeued, 1), "the pool moved the task before its container stopped"
    # Auto-removed: nothing of it is left on the host, running or exited.
    wait_for(lambda: not task_containers(task.id), 30, "the container to be removed")
    alice.cancel_task(task.id)


def test_a_frozen_local_workers_process_tree_stops(lease_pool: PoolProcess, tmp_path: Path) -> None:
    pool = lease_pool
    alice = user(pool)
    worker = WorkerProcess(pool, executor="local", name="frozen-local").start()
    pids_file = tmp_path / "pids.json"
    spawner = (
        "import json, os, subprocess, time\nchild = subprocess.Popen(['sleep', '300'])\n"
        "open(PIDS, 'w').write(json.dumps({'kernel': os.getpid(), 'child': child.pid}))\n"
        "print('started', flush=True)\ntime.sleep(300)"
    )
    task = submit(
        alice,
        bundle(notebook(spawner, parameters="PIDS = ''")),
        parameters={"PIDS": str(pids_file)},
        max_retries=2,
    )
    wait_for(lambda: _started(alice, task.id), 90, "the task to start")
    pids = json.loads(pids_file.read_text())
    runners = [p for p in psutil.Process(worker.pid).children() if any("runner.py" in a for a in p.cmdline())]
    assert len(runners) == 1, runners
    tree = [runners[0], psutil.Process(pids["kernel"]), psutil.Process(pids["child"])]
    os.kill(worker.pid, signal.SIGSTOP)
    frozen = time.monotonic()
    try:

        def gone(proc: psutil.Process) -> bool:
            try:
                return proc.status() == psutil.STATUS_ZOMBIE  # dead; its frozen parent cannot reap it
            except psutil.NoSuchProcess:
                return True

        wait_for(lambda: all(gone(p) for p in tree), TIMEOUT + 30, "the task's processes to stop")
        print(f"the runner, kernel and child stopped {time.monotonic() - frozen:.1f}s after the freeze")
        # The worker was frozen all along: the tree stopped itself.
        assert psutil.Process(worker.pid).status() == psutil.STATUS_STOPPED
    finally:
        os.kill(worker.pid, signal.SIGCONT)
    # Thawed, the worker hands the task back (or the pool has moved it already): it runs again.
    wait_for(lambda: alice.get_task(task.id).attempt >= 2, 60, "the task to run again")
    alice.cancel_task(task.id)


def test_a_pool_outage_longer_than_the_lease_hands_the_task_back_without_a_retry(
    lease_pool: PoolProcess,
) -> None:
    # A worker cannot tell a pool that is down from one it is cut off from, which may be rerunning
    # its tasks: past the lease its tasks stop either way. They go back without spending a retry.
    pool = lease_pool
    alice = user(pool)
    worker = WorkerProcess(pool, executor="local", name="outage").start()
    task = submit(alice, bundle(notebook(STEADY)), max_retries=0)
    wait_for(lambda: _started(alice, task.id), 90, "the task to start")
    (runner,) = [
        p for p in psutil.Process(worker.pid).children() if any("runner.py" in a for a in p.cmdline())
    ]
    pool.kill()
    wait_for(lambda: not runner.is_running(), TIMEOUT + 30, "the task to stop when the lease lapses")
    pool.start()
    alice = user(pool)
    final = wait_state(alice, task.id, timeout=120)
    assert final.state == pb.SUCCEEDED, (final.error, worker.log()[-3000:])
    assert final.attempt == 2 and final.retries_used == 0
    messages = [t.message for t in final.timeline if t.state == pb.QUEUED]
    assert any("handed back by its worker" in m and "lease" in m for m in messages), messages
