"""WatchTasks: the pool pushes each change of the caller's tasks (admins: everyone's), starting with
`ready`; other users' tasks never reach you; a reader that never reads stalls nothing; the client's
iterator reconnects across a pool restart."""

from __future__ import annotations

import io
import json
import queue
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from harness import FakeWorker, PoolProcess
from harness.fake_worker import make_result_zip

from hivemind_nodepool.client import PoolClient
from hivemind_nodepool.pool.feed import MAX_WATCHERS_PER_USER
from hivemind_nodepool.proto import nodepool_pb2 as pb
from hivemind_nodepool.protocol.errors import (
    Cancelled,
    HiveMindError,
    PermissionDenied,
    RateLimited,
    Unauthenticated,
)

from .helpers import bundle_bytes, manifest, submit, wait_for

PASSWORD = "feed-password-1"


class Feed:
    """A WatchTasks iterator read by a thread into a queue, so a test can wait with a timeout."""

    def __init__(self, client: PoolClient, all_users: bool = False, reconnect_for: float = 60.0) -> None:
        self.client = client
        self.messages: queue.Queue[pb.TaskFeedMessage | BaseException] = queue.Queue()
        self._iterator = client.watch_tasks(all_users=all_users, reconnect_for=reconnect_for)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for message in self._iterator:
                self.messages.put(message)
        except BaseException as exc:  # handed to the test
            self.messages.put(exc)

    def next(self, timeout: float = 15.0) -> pb.TaskFeedMessage:
        item = self.messages.get(timeout=timeout)
        if isinstance(item, BaseException):
            raise item
        return item

    def until(self, predicate, timeout: float = 15.0) -> list[pb.TaskFeedMessage]:  # type: ignore[no-untyped-def]
        """Messages up to and including the first that satisfies predicate."""
        seen = []
        while True:
            message = self.next(timeout)
            seen.append(message)
            if predicate(message):
                return seen

    def close(self) -> None:
        self.client.close()  # ends the iterator with Cancelled
        self._thread.join(timeout=10)


def _is_task(task_id: str, state: int | None = None):  # type: ignore[no-untyped-def]
    def check(message: pb.TaskFeedMessage) -> bool:
        return (
            message.WhichOneof("body") == "task"
            and message.task.id == task_id
            and (state is None or message.task.state == state)
        )

    return check


@pytest.fixture
def users(pool: PoolProcess) -> Iterator[dict[str, PoolClient]]:
    for name in ("alice", "bob"):
        pool.add_user(name, PASSWORD)
    clients = {
        "alice": pool.login("alice", PASSWORD),
        "bob": pool.login("bob", PASSWORD),
        "admin": pool.admin(),
    }
    yield clients
    for client in clients.values():
        client.close()


def test_first_ready_then_every_change_of_your_task(pool: PoolProcess, users, tmp_path: Path) -> None:
    alice = users["alice"]
    feed = Feed(pool.login("alice", PASSWORD))
    worker = FakeWorker(pool.address, pool.join_token(), name="feeder").connect()
    try:
        assert feed.next().WhichOneof("body") == "ready"
        task = submit(alice)
        queued = feed.until(_is_task(task.id))[-1].task
        assert queued.state in (pb.QUEUED, pb.ASSIGNED) and queued.owner == "alice"
        assert not queued.timeline  # the feed sends tasks without their timeline
        assignment = worker.next_assignment()
        assigned = feed.until(lambda m: _is_task(task.id)(m) and m.task.worker_id != "")[-1].task
        assert assigned.worker_name == "feeder" and assigned.attempt == 1
        worker.status(assignment, pb.RUNNING)
        feed.until(_is_task(task.id, pb.RUNNING))
        # A progress report with no state change is pushed too.
        worker.client.report_status(
            pb.StatusReport(
                task_id=task.id,
                attempt=1,
                state=pb.RUNNING,
                progress=pb.Progress(cells_done=2, cells_total=5),
            )
        )
        progressed = feed.until(lambda m: _is_task(task.id)(m) and m.task.progress.cells_done == 2)[-1]
        assert progressed.task.progress.cells_total == 5
        worker.status(assignment, pb.UPLOADING)
        worker.finish(assignment, pb.SUCCEEDED, make_result_zip(tmp_path / "r.zip"))
        done = feed.until(_is_task(task.id, pb.SUCCEEDED))[-1].task
        assert done.result_sha256 and done.state == pb.SUCCEEDED
    finally:
        worker.close()
        feed.close()


def test_a_pending_reason_is_pushed(pool: PoolProcess, users) -> None:
    feed = Feed(pool.login("alice", PASSWORD))
    worker = FakeWorker(pool.address, pool.join_token(), name="small", cpus=2).connect()
    try:
        assert feed.next().WhichOneof("body") == "ready"
        task = submit(users["alice"], cpus=8)
        waiting = feed.until(lambda m: _is_task(task.id)(m) and m.task.pending_reason != "")[-1].task
        assert "8" in waiting.pending_reason and waiting.state == pb.QUEUED
        # the reason is a change: a client holding the submission's answer sees which copy is newer
        assert waiting.updated_at > task.updated_at
    finally:
        worker.close()
        feed.close()


def test_other_users_changes_are_never_pushed(pool: PoolProcess, users, tmp_path: Path) -> None:
    alice, bob = users["alice"], users["bob"]
    bobs_feed = Feed(pool.login("bob", PASSWORD))
    everyone = Feed(pool.admin(), all_users=True)
    worker = FakeWorker(pool.address, pool.join_token(), name="shared").connect()
    try:
        assert bobs_feed.next().WhichOneof("body") == "ready"
        assert everyone.next().WhichOneof("body") == "ready"
        hers = submit(alice)
        assignment = worker.next_assignment()
        worker.run_to_success(assignment, make_result_zip(tmp_path / "hers.zip"))
        alice.cancel_task(submit(alice, cpus=64).id)
        his = submit(bob)  # bob's own task: the first task message bob may see
        seen = bobs_feed.until(_is_task(his.id))
        assert {m.task.owner for m in seen if m.WhichOneof("body") == "task"} == {"bob"}
        # The admin's all_users feed saw both users' tasks, hers to the end.
        admin_seen = everyone.until(_is_task(his.id))
        owners = {m.task.owner for m in admin_seen if m.WhichOneof("body") == "task"}
        assert owners == {"alice", "bob"}
        assert any(_is_task(hers.id, pb.SUCCEEDED)(m) for m in admin_seen)
    finally:
        worker.close()
        bobs_feed.close()
        everyone.close()


def test_who_may_watch(pool: PoolProcess, users) -> None:
    with pytest.raises(PermissionDenied, match="admins"):
        next(users["alice"].watch_tasks(all_users=True))
    with pytest.raises(Unauthenticated):
        next(pool.client().watch_tasks())
    with pytest.raises(Unauthenticated):
        next(pool.client(token="hmu-not-a-real-token").watch_tasks())
    worker = FakeWorker(pool.address, pool.join_token(), name="nosy")
    try:
        with pytest.raises(PermissionDenied):
            next(worker.client.watch_tasks())
    finally:
        worker.close()


def test_open_feeds_per_user_are_capped(pool: PoolProcess, users) -> None:
    alice = users["alice"]
    calls = [
        alice._pool.WatchTasks(pb.WatchTasksRequest(), metadata=alice._metadata())
        for _ in range(MAX_WATCHERS_PER_USER)
    ]
    try:
        for call in calls:
            assert next(call).WhichOneof("body") == "ready"
        with pytest.raises(RateLimited, match="already has"):
            next(alice.watch_tasks())
        assert next(users["bob"].watch_tasks()).WhichOneof("body") == "ready"  # per user
    finally:
        for call in calls:
            call.cancel()
    wait_for(lambda: _opens(alice), timeout=15, what="a feed slot to free up")


def _opens(client: PoolClient) -> bool:
    try:
        iterator = client.watch_tasks()
        next(iterator)
        iterator.close()
        return True
    except RateLimited:
        return False


def test_signing_out_ends_the_feed(tmp_path: Path) -> None:
    pool = PoolProcess(tmp_path / "pool", env={"HIVEMIND_POOL_FEED_AUTH_RECHECK": "0.5"}).start()
    try:
        pool.add_user("alice", PASSWORD)
        session = pool.login("alice", PASSWORD)
        watcher = Feed(pool.client(token=session.token))
        assert watcher.next().WhichOneof("body") == "ready"
        session.logout()
        with pytest.raises(Unauthenticated, match="revoked"):
            watcher.next(timeout=15)
        watcher.close()
    finally:
        pool.stop()


def test_a_reader_that_never_reads_does_not_stall_the_pool(tmp_path: Path) -> None:
    pool = PoolProcess(tmp_path / "pool", env={"HIVEMIND_POOL_FEED_QUEUE_LIMIT": "50"}).start()
    try:
        pool.add_user("alice", PASSWORD)
        alice = pool.login("alice", PASSWORD)
        stuck_client = pool.login("alice", PASSWORD)
        stuck = stuck_client._pool.WatchTasks(pb.WatchTasksRequest(), metadata=stuck_client._metadata())
        assert next(stuck).WhichOneof("body") == "ready"
        # The stuck reader reads nothing more while many tasks change (big manifests fill the
        # transport's buffers fast, so the pool's queue for it overflows).
        padding = json.dumps({f"p{i}": "x" * 3000 for i in range(20)})
        data = bundle_bytes()
        ids = []
        for _ in range(400):
            task = alice.submit(manifest(cpus=64, parameters_json=padding), io.BytesIO(data))
            ids.append(task.id)
        listed = alice.list_tasks(page_size=10)
        assert listed.total == 400
        # A fresh feed works at once, and a change still reaches it.
        fresh = Feed(pool.login("alice", PASSWORD))
        assert fresh.next().WhichOneof("body") == "ready"
        alice.cancel_task(ids[0])
        fresh.until(_is_task(ids[0], pb.CANCELLED))
        fresh.close()
        # The stuck reader, reading at last, is told to resync instead of getting every change.
        kinds = []
        for message in stuck:
            kinds.append(message.WhichOneof("body"))
            if kinds[-1] == "resync":
                break
        assert "resync" in kinds and kinds.count("task") < 400 + 400
        stuck.cancel()
        stuck_client.close()
    finally:
        pool.stop()


def test_the_feed_reconnects_across_a_pool_restart(pool: PoolProcess, users) -> None:
    alice = users["alice"]
    feed = Feed(pool.login("alice", PASSWORD))
    try:
        assert feed.next().WhichOneof("body") == "ready"
        first = submit(alice)
        feed.until(_is_task(first.id))
        pool.restart()
        # The stream was ended by the shutdown (UNAVAILABLE); the iterator reconnected: a new ready.
        feed.until(lambda m: m.WhichOneof("body") == "ready", timeout=60)
        second = submit(alice)
        feed.until(_is_task(second.id))
    finally:
        feed.close()


def test_the_feed_gives_up_when_the_pool_stays_away(tmp_path: Path) -> None:
    pool = PoolProcess(tmp_path / "pool").start()
    pool.add_user("alice", PASSWORD)
    feed = Feed(pool.login("alice", PASSWORD), reconnect_for=1.0)
    try:
        assert feed.next().WhichOneof("body") == "ready"
        pool.stop()
        with pytest.raises(HiveMindError) as caught:
            feed.until(lambda m: False, timeout=30)
        assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    finally:
        feed.close()
        pool.kill()


def test_closing_the_client_ends_the_iterator(pool: PoolProcess, users) -> None:
    client = pool.login("alice", PASSWORD)
    feed = Feed(client)
    assert feed.next().WhichOneof("body") == "ready"
    client.close()
    with pytest.raises(Cancelled):
        feed.next(timeout=10)


def test_a_watchers_queue_keeps_the_newest_change_of_each_task_and_overflows_to_resync() -> None:
    import asyncio

    from hivemind_nodepool.pool.feed import TaskWatcher

    async def scenario() -> list[str]:
        watcher = TaskWatcher("alice", "alice", limit=3)
        watcher.offer(pb.Task(id="t-a", state=pb.QUEUED))
        watcher.offer(pb.Task(id="t-b", state=pb.QUEUED))
        watcher.offer(pb.Task(id="t-a", state=pb.RUNNING))  # replaces the unsent QUEUED, goes last
        got = []
        for _ in range(2):
            message = await watcher.next(timeout=1)
            assert message is not None
            got.append(f"{message.task.id}:{pb.TaskState.Name(message.task.state)}")
        assert await watcher.next(timeout=0.05) is None
        for name in "cdefg":  # five distinct tasks past a limit of three
            watcher.offer(pb.Task(id=f"t-{name}"))
        overflow = await watcher.next(timeout=1)
        assert overflow is not None and overflow.WhichOneof("body") == "resync"
        assert await watcher.next(timeout=0.05) is None  # the queue was dropped
        watcher.offer(pb.Task(id="t-h"))
        after = await watcher.next(timeout=1)
        assert after is not None and after.task.id == "t-h"
        return got

    assert asyncio.run(scenario()) == ["t-b:QUEUED", "t-a:RUNNING"]
