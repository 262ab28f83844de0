"""The pool starts, serves, and runs one task through a fake worker."""

from __future__ import annotations

import io
from pathlib import Path

from harness import FakeWorker, PoolProcess
from harness.fake_worker import make_result_zip

from hivemind_nodepool.proto import nodepool_pb2 as pb
from hivemind_nodepool.protocol.states import TERMINAL_STATES

from .helpers import bundle_bytes


def test_one_task_end_to_end(pool: PoolProcess, tmp_path: Path) -> None:
    admin = pool.admin()
    pool.add_user("alice", "alice-password")
    alice = pool.login("alice", "alice-password")
    worker = FakeWorker(pool.address, pool.join_token(), name="w1").connect()
    try:
        assert worker.welcome is not None and worker.welcome.heartbeat_interval_seconds == 1.0
        task = alice.submit(
            pb.Manifest(
                entry_notebook="main.ipynb",
                max_retries=-1,
                resources=pb.Resources(cpus=1, memory_bytes=1 << 30),
            ),
            io.BytesIO(bundle_bytes()),
        )
        assert task.state == pb.QUEUED and task.manifest.max_retries == 2
        assignment = worker.next_assignment()
        assert assignment.task_id == task.id and assignment.attempt == 1
        fetched = worker.client.fetch_bundle(task.id, 1, tmp_path / "bundle.zip")
        assert fetched.read_bytes() == bundle_bytes()
        worker.status(assignment, pb.PREPARING)
        worker.status(assignment, pb.RUNNING)
        worker.status(assignment, pb.PREPARING)  # a backward move is ignored
        assert worker.events(assignment, ["hello\n", "world\n"]) == 2
        assert worker.events(assignment, ["hello\n", "world\n"]) == 2  # resent: stored once
        done = worker.run_to_success(assignment, make_result_zip(tmp_path / "result.zip"))
        assert done.state == pb.SUCCEEDED
        events = list(alice.watch(task.id, follow=True))
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        assert [e.text for e in events if e.kind == pb.TaskEvent.STDOUT] == ["hello\n", "world\n"]
        assert events[-1].state in TERMINAL_STATES
        got = alice.fetch_result(task.id, tmp_path / "got.zip")
        assert got.read_bytes() == (tmp_path / "result.zip").read_bytes()
        final = alice.get_task(task.id)
        assert [pb.TaskState.Name(t.state) for t in final.timeline] == [
            "QUEUED",
            "ASSIGNED",
            "PREPARING",
            "RUNNING",
            "UPLOADING",
            "SUCCEEDED",
        ]
        assert admin.pool_status().tasks_by_state["SUCCEEDED"] == 1
    finally:
        worker.close()
