"""A real task's events say what the attempt is doing: its phases, in order, through a real pool and
worker (the pool takes PHASE events from workers, stores and streams them like the others).

With requirements the environment phase comes between fetching and container
(test_docker_end_to_end.py, which builds one)."""

from __future__ import annotations

import pytest
from harness.worker import WorkerProcess

from hivemind_nodepool.proto import nodepool_pb2 as pb

from .helpers import bundle, notebook, phase_details_of, phase_names, submit, user, wait_state

WITHOUT_ENVIRONMENT = ["fetching", "container", "kernel", "running", "uploading"]


def _state_at(events: list[pb.TaskEvent], state: int) -> float:
    return next(e.at for e in events if e.kind == pb.TaskEvent.STATE and e.state == state)


def _phase_at(events: list[pb.TaskEvent], name: str) -> float:
    return next(e.at for e in events if e.kind == pb.TaskEvent.PHASE and e.text == name)


def _run(client, data: bytes) -> tuple[pb.Task, list[pb.TaskEvent]]:
    task = submit(client, data)
    final = wait_state(client, task.id, timeout=180)
    assert final.state == pb.SUCCEEDED, (final.error, final.traceback)
    return final, list(client.watch(task.id, follow=False))


@pytest.mark.docker
def test_a_docker_task_reports_its_phases_in_order(pool, docker_worker: WorkerProcess) -> None:
    alice = user(pool)
    data = bundle(notebook("print('hello from the sandbox')"))
    task, events = _run(alice, data)
    assert phase_names(events) == WITHOUT_ENVIRONMENT, docker_worker.log()[-2000:]
    fetching = phase_details_of(events, "fetching")
    assert fetching == [{"bytes": task.bundle_size, "cached": False}]
    assert phase_details_of(events, "container") == [{"sandbox": "container"}]
    # the phases sit inside the states they refine, whatever order the pool stored them in
    assert _state_at(events, pb.PREPARING) <= _phase_at(events, "fetching")
    assert _state_at(events, pb.RUNNING) <= _phase_at(events, "container")
    assert _phase_at(events, "running") <= _state_at(events, pb.UPLOADING) <= _phase_at(events, "uploading")
    assert all(e.attempt == 1 for e in events if e.kind == pb.TaskEvent.PHASE)

    # The same bundle again: this worker has it, so nothing is downloaded.
    _, again = _run(alice, data)
    assert phase_names(again) == WITHOUT_ENVIRONMENT
    assert phase_details_of(again, "fetching")[0]["cached"] is True


def test_a_local_task_reports_its_process_as_the_sandbox(pool, local_worker: WorkerProcess) -> None:
    alice = user(pool)
    _, events = _run(alice, bundle(notebook("x = 1")))
    assert phase_names(events) == WITHOUT_ENVIRONMENT, local_worker.log()[-2000:]
    assert phase_details_of(events, "container") == [{"sandbox": "process"}]
