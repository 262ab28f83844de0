"""Cancel, timeout, out of memory, notebook error, a dead task process: each ends in the right
state, is not retried, and leaves no container behind."""

from __future__ import annotations

import time

import pytest
from harness.worker import WorkerProcess

from hivemind_nodepool.proto import nodepool_pb2 as pb

from .helpers import MiB, bundle, notebook, submit, task_containers, user, wait_for, wait_state

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def _printed(alice, task_id: str, text: str) -> bool:
    return any(text in e.text for e in alice.watch(task_id, follow=False) if e.kind == pb.TaskEvent.STDOUT)


def test_cancel_kills_the_container_quickly(pool, docker_worker: WorkerProcess) -> None:
    alice = user(pool)
    task = submit(alice, bundle(notebook("import time\nprint('started', flush=True)\ntime.sleep(300)")))
    wait_for(lambda: _printed(alice, task.id, "started"), 60, "the task to start")
    assert task_containers(task.id), "no container while the task runs"
    began = time.monotonic()
    alice.cancel_task(task.id)
    wait_for(lambda: not task_containers(task.id), 10, "the container to go")
    took = time.monotonic() - began
    print(f"container gone {took:.2f}s after the cancel")
    assert took < 2.0
    final = wait_state(alice, task.id)
    assert final.state == pb.CANCELLED and final.retries_used == 0


def test_timeout_ends_timed_out(pool, docker_worker: WorkerProcess) -> None:
    alice = user(pool)
    task = submit(alice, bundle(notebook("import time\ntime.sleep(300)")), timeout=3)
    final = wait_state(alice, task.id, timeout=60)
    assert final.state == pb.TIMED_OUT, (final.error, final.traceback)
    assert "timeout" in final.error
    assert final.attempt == 1 and final.retries_used == 0
    assert task_containers(task.id) == []


def test_out_of_memory_fails_with_the_reason(pool, docker_worker: WorkerProcess) -> None:
    alice = user(pool)
    hog = "blocks = []\nwhile True:\n    blocks.append(bytearray(32 * 2**20))"
    task = submit(alice, bundle(notebook("print('before')", hog)), memory=256 * MiB)
    final = wait_state(alice, task.id, timeout=120)
    assert final.state == pb.FAILED
    assert "out of memory" in final.error, final.error
    assert final.metrics.peak_memory_bytes >= 200 * MiB
    assert final.attempt == 1
    assert task_containers(task.id) == []


def test_notebook_error_fails_with_the_remote_traceback(pool, docker_worker: WorkerProcess) -> None:
    alice = user(pool)
    task = submit(
        alice, bundle(notebook("x = 1", "def broken():\n    return 1 / 0\nbroken()", "print('never')"))
    )
    final = wait_state(alice, task.id, timeout=120)
    assert final.state == pb.FAILED
    assert "ZeroDivisionError" in final.error
    assert "broken()" in final.traceback and "1 / 0" in final.traceback
    assert "\x1b[" not in final.traceback  # plain text, no terminal colours
    assert final.attempt == 1 and final.retries_used == 0
    assert not _printed(alice, task.id, "never")
    assert task_containers(task.id) == []


def test_a_dead_task_process_is_reported_never_as_success(pool, docker_worker: WorkerProcess) -> None:
    alice = user(pool)
    # The kernel kills the runner that drives it: the container ends without a result.
    task = submit(alice, bundle(notebook("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)")))
    final = wait_state(alice, task.id, timeout=120)
    assert final.state == pb.FAILED
    assert "without a result" in final.error, final.error
    assert task_containers(task.id) == []
