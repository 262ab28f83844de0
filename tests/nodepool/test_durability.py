"""Accepted means durable: SIGKILL during a burst of submissions loses no acknowledged task and leaves
no half-written blob referenced; watchers resume across a restart with no gaps or duplicates."""

from __future__ import annotations

import hashlib
import io
import sqlite3
import threading
import time
from pathlib import Path

from harness import FakeWorker, PoolProcess
from harness.fake_worker import make_result_zip

from hivemind_nodepool.proto import nodepool_pb2 as pb
from hivemind_nodepool.protocol.errors import HiveMindError

from .helpers import bundle_bytes, manifest


def test_sigkill_during_a_burst_loses_no_acknowledged_task(pool: PoolProcess) -> None:
    pool.add_user("alice", "alice-password")
    alice = pool.login("alice", "alice-password")
    acknowledged: list[str] = []
    errors: list[str] = []
    stop = threading.Event()

    def burst() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            payload = bundle_bytes(extra={"data.bin": (f"{n}-" * 40_000).encode()})
            try:
                acknowledged.append(alice.submit(manifest(), io.BytesIO(payload)).id)
            except HiveMindError as exc:
                errors.append(type(exc).__name__)
                if len(errors) > 3:
                    return

    thread = threading.Thread(target=burst)
    thread.start()
    deadline = time.monotonic() + 20
    while len(acknowledged) < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    pool.kill()
    time.sleep(0.3)
    stop.set()
    thread.join(timeout=30)
    assert len(acknowledged) >= 20
    pool.start()
    alice = pool.login("alice", "alice-password")
    stored = {t.id for t in alice.iter_tasks()}
    missing = set(acknowledged) - stored
    print(
        f"{len(acknowledged)} acknowledged before SIGKILL, {len(stored)} stored, "
        f"{len(errors)} failed in flight"
    )
    assert not missing
    # Every blob a task references is whole: its bytes hash to its name.
    db = sqlite3.connect(pool.data_dir / "pool.db")
    for (sha,) in db.execute("SELECT DISTINCT bundle_sha256 FROM tasks"):
        data = (pool.data_dir / "blobs" / sha[:2] / sha[2:]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == sha
    db.close()
    assert not any((pool.data_dir / "blobs" / "tmp").iterdir())  # half-written uploads cleaned at start


def test_watch_resumes_across_a_pool_restart(pool: PoolProcess, tmp_path: Path) -> None:
    admin = pool.admin()
    worker = FakeWorker(pool.address, pool.join_token()).connect()
    received: list[pb.TaskEvent] = []
    try:
        task = admin.submit(manifest(), io.BytesIO(bundle_bytes()))
        assignment = worker.next_assignment()
        worker.status(assignment, pb.RUNNING)
        watcher_client = pool.admin()
        done = threading.Event()

        def watch() -> None:
            for event in watcher_client.watch(task.id, follow=True, reconnect_for=60):
                received.append(event)
            done.set()

        thread = threading.Thread(target=watch, daemon=True)
        thread.start()
        assert worker.events(assignment, [f"line {i}\n" for i in range(1, 51)]) == 50
        time.sleep(0.5)
        pool.restart(hard=True)
        worker.disconnect()
        worker.connect()
        # The worker resends from 41 (it did not see the ack for those): stored once.
        assert worker.events(assignment, [f"line {i}\n" for i in range(41, 101)], first=41) == 100
        worker.run_to_success(assignment, make_result_zip(tmp_path / "r.zip"))
        assert done.wait(30), "the watch did not end after the terminal state"
    finally:
        worker.close()
    seqs = [e.seq for e in received]
    assert seqs == list(range(1, len(seqs) + 1)), "gaps or duplicates in the watched stream"
    lines = [e.text for e in received if e.kind == pb.TaskEvent.STDOUT]
    assert lines == [f"line {i}\n" for i in range(1, 101)]
    assert received[-1].kind == pb.TaskEvent.STATE and received[-1].state == pb.SUCCEEDED
    # A later watch from the middle replays exactly the rest.
    again = list(pool.admin().watch(task.id, after_seq=seqs[10], follow=False))
    assert [e.seq for e in again] == seqs[11:]
