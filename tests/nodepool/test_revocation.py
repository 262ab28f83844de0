"""Taking access away ends it at once: a disabled user's, a revoked or expired token's, a disabled
admin's open streams end with UNAUTHENTICATED while their tasks keep producing, and deliver nothing
produced after; a disabled user's tasks are cancelled unless the admin keeps them; a revoked worker's
stream ends and its running task is requeued without spending a retry."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import FakeWorker, PoolProcess

from hivemind_nodepool.client import PoolClient
from hivemind_nodepool.proto import nodepool_pb2 as pb
from hivemind_nodepool.protocol.errors import Conflict, HiveMindError, Unauthenticated

from .helpers import submit, wait_for

PASSWORD = "revoke-password-1"
ENDS_WITHIN = 20.0  # generous: before the fix a busy stream never ended (only its client's deadline)


class Reader:
    """Reads a stream in a thread: what it delivered, and the error it ended with."""

    def __init__(self, client: PoolClient, stream: Iterator[Any]) -> None:
        self.client = client
        self.items: list[Any] = []
        self.ended: queue.Queue[BaseException | None] = queue.Queue()
        self._stream = stream
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for item in self._stream:
                self.items.append(item)
        except BaseException as exc:  # handed to the test
            self.ended.put(exc)
            return
        self.ended.put(None)

    def error(self, timeout: float = ENDS_WITHIN) -> BaseException | None:
        try:
            return self.ended.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"the stream was still open after {timeout} s") from None

    def close(self) -> None:
        self.client.close()
        self._thread.join(timeout=10)


class Producer:
    """Keeps a running attempt busy, as a chatty notebook does: an output line and a progress
    report every 50 ms. `phase` goes into each line and into cells_total, so what a stream got
    can be told apart by when it was produced."""

    BEFORE, AFTER = 1000, 2000

    def __init__(self, worker: FakeWorker, assignment: pb.Assignment) -> None:
        self.worker = worker
        self.assignment = assignment
        self.phase = self.BEFORE
        self.sent = {self.BEFORE: 0, self.AFTER: 0}
        self.seq = 1
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            phase = self.phase
            try:
                self.worker.events(self.assignment, [f"phase {phase} line {self.seq}\n"], first=self.seq)
                self.seq += 1
                self.worker.client.report_status(
                    pb.StatusReport(
                        task_id=self.assignment.task_id,
                        attempt=self.assignment.attempt,
                        state=pb.RUNNING,
                        progress=pb.Progress(cells_done=self.seq % phase, cells_total=phase),
                    )
                )
            except HiveMindError:
                return
            self.sent[phase] += 1
            self._stop.wait(0.05)

    def after(self) -> None:
        self.phase = self.AFTER

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def _produced_after(items: list[Any]) -> list[Any]:
    """Anything a stream delivered that was produced after access was taken away."""
    late = []
    for item in items:
        if isinstance(item, pb.TaskEvent) and f"phase {Producer.AFTER}" in item.text:
            late.append(item)
        if isinstance(item, pb.TaskFeedMessage) and item.task.progress.cells_total == Producer.AFTER:
            late.append(item)
    return late


def _busy(worker: FakeWorker, client: PoolClient, **kwargs: object) -> tuple[pb.Task, Producer]:
    task = submit(client, **kwargs)
    assignment = worker.next_assignment()
    assert assignment.task_id == task.id
    worker.status(assignment, pb.RUNNING)
    return task, Producer(worker, assignment)


def _feed_messages(reader: Reader) -> int:
    return sum(1 for m in reader.items if m.WhichOneof("body") == "task")


def test_disabling_a_user_ends_his_busy_streams_at_once(pool: PoolProcess) -> None:
    admin = pool.admin()
    pool.add_user("bob", PASSWORD)
    bob = pool.login("bob", PASSWORD)
    worker = FakeWorker(pool.address, pool.join_token(), name="busy").connect()
    task, producer = _busy(worker, bob)
    follower = pool.login("bob", PASSWORD)
    follow = Reader(follower, follower.watch(task.id, follow=True))
    feeder = pool.login("bob", PASSWORD)
    feed = Reader(feeder, feeder.watch_tasks())
    try:
        wait_for(lambda: len(follow.items) >= 5 and _feed_messages(feed) >= 3, what="busy streams")
        admin.disable_user("bob", keep_tasks=True)  # keep them, so they go on producing
        producer.after()
        for reader in (follow, feed):
            error = reader.error()
            assert isinstance(error, Unauthenticated) and "disabled" in str(error)
        wait_for(lambda: producer.sent[Producer.AFTER] >= 5, what="the task to go on producing")
        assert not _produced_after(follow.items) and not _produced_after(feed.items)
        assert admin.get_task(task.id).state == pb.RUNNING  # --keep-tasks: it runs on
    finally:
        producer.stop()
        for reader in (follow, feed):
            reader.close()
        worker.close()


def test_a_revoked_or_expired_token_ends_its_busy_streams(pool: PoolProcess) -> None:
    pool.add_user("bob", PASSWORD)
    bob = pool.login("bob", PASSWORD)
    worker = FakeWorker(pool.address, pool.join_token(), name="busy").connect()
    task, producer = _busy(worker, bob)
    revoked = pool.login("bob", PASSWORD)
    short = pool.client()
    short.login("bob", PASSWORD, ttl_seconds=3)
    follow_revoked = Reader(revoked, revoked.watch(task.id, follow=True))
    feed_client = pool.client(token=revoked.token)
    feed_revoked = Reader(feed_client, feed_client.watch_tasks())
    follow_short = Reader(short, short.watch(task.id, follow=True))
    readers = (follow_revoked, feed_revoked, follow_short)
    try:
        wait_for(lambda: all(len(r.items) >= 3 for r in readers), what="busy streams")
        with pool.client(token=revoked.token) as signing_out:
            signing_out.logout()
        producer.after()
        for reader in (follow_revoked, feed_revoked):
            error = reader.error()
            assert isinstance(error, Unauthenticated) and "revoked" in str(error)
        # Expiry is found by the periodic recheck, however busy the stream is.
        error = follow_short.error()
        assert isinstance(error, Unauthenticated) and "expired" in str(error)
        wait_for(lambda: producer.sent[Producer.AFTER] >= 5, what="the task to go on producing")
        assert not _produced_after(follow_revoked.items) and not _produced_after(feed_revoked.items)
        assert bob.whoami().name == "bob"  # his other sign-in is unaffected
    finally:
        producer.stop()
        for reader in readers:
            reader.close()
        worker.close()


def test_a_disabled_admins_all_users_feed_ends(pool: PoolProcess) -> None:
    admin = pool.admin()
    pool.add_user("alice", PASSWORD)
    pool.add_user("root2", PASSWORD, admin=True)
    alice = pool.login("alice", PASSWORD)
    worker = FakeWorker(pool.address, pool.join_token(), name="busy").connect()
    task, producer = _busy(worker, alice)
    root2_feed = pool.login("root2", PASSWORD)
    everyone = Reader(root2_feed, root2_feed.watch_tasks(all_users=True))
    root2_follow = pool.login("root2", PASSWORD)
    hers = Reader(root2_follow, root2_follow.watch(task.id, follow=True))
    try:
        wait_for(lambda: _feed_messages(everyone) >= 3 and len(hers.items) >= 3, what="busy streams")
        assert {m.task.owner for m in everyone.items if m.WhichOneof("body") == "task"} == {"alice"}
        admin.disable_user("root2")
        producer.after()
        for reader in (everyone, hers):
            error = reader.error()
            assert isinstance(error, Unauthenticated) and "disabled" in str(error)
        wait_for(lambda: producer.sent[Producer.AFTER] >= 5, what="alice's task to go on producing")
        assert not _produced_after(everyone.items) and not _produced_after(hers.items)
    finally:
        producer.stop()
        everyone.close()
        hers.close()
        worker.close()


def _cancel_order_for(worker: FakeWorker, task_id: str) -> None:
    """Wait for the pool's order to stop task_id (orders for other tasks may come first: the
    fake worker goes on listing what it ran, so the pool repeats their stale-attempt cancels)."""
    deadline = time.monotonic() + ENDS_WITHIN
    while (
        worker.next_message("cancel", timeout=max(0.1, deadline - time.monotonic())).cancel.task_id != task_id
    ):
        pass


def test_disabling_cancels_the_users_tasks_unless_kept(pool: PoolProcess) -> None:
    admin = pool.admin()
    for name in ("bob", "carol", "dave"):
        pool.add_user(name, PASSWORD)
    clients = {name: pool.login(name, PASSWORD) for name in ("bob", "carol", "dave")}
    worker = FakeWorker(pool.address, pool.join_token(), name="w", cpus=3).connect()
    tasks: dict[str, tuple[str, str]] = {}
    for name, client in clients.items():
        running = submit(client)
        assignment = worker.next_assignment()
        assert assignment.task_id == running.id
        worker.status(assignment, pb.RUNNING)
        queued = submit(client, cpus=64)  # fits nowhere: stays queued
        tasks[name] = (running.id, queued.id)
    try:
        # Through the pool: cancelled before the answer, the worker told to stop.
        admin.disable_user("bob")
        assert {admin.get_task(t).state for t in tasks["bob"]} == {pb.CANCELLED}
        _cancel_order_for(worker, tasks["bob"][0])
        # On the pool's files (--data-dir): the running pool cancels them within seconds ...
        listening = pool.login("dave", PASSWORD)
        feed = Reader(listening, listening.watch_tasks())
        done = pool.admin_cli("user", "disable", "dave")
        assert "2 queued and running task(s) are being cancelled" in done.stdout
        wait_for(
            lambda: {admin.get_task(t).state for t in tasks["dave"]} == {pb.CANCELLED},
            what="dave's tasks to be cancelled",
        )
        _cancel_order_for(worker, tasks["dave"][0])
        assert isinstance(feed.error(), Unauthenticated)  # and his streams end
        feed.close()
        # ... or keeps them when asked.
        listening = pool.login("carol", PASSWORD)
        feed = Reader(listening, listening.watch_tasks())
        kept = pool.admin_cli("user", "disable", "carol", "--keep-tasks")
        assert "kept" in kept.stdout
        assert isinstance(feed.error(), Unauthenticated)  # the pool has seen the change ...
        feed.close()
        time.sleep(2 * 2.0)  # ... and a couple more recheck passes touch nothing of hers
        states = [admin.get_task(t).state for t in tasks["carol"]]
        assert states == [pb.RUNNING, pb.QUEUED]
        both = pool.admin_cli("user", "disable", "carol", "--keep-tasks", "--cancel-tasks", check=False)
        assert both.returncode == 2 and "not allowed with" in both.stderr
    finally:
        worker.close()
        for client in clients.values():
            client.close()


def test_a_revoked_workers_stream_ends_and_its_task_is_requeued(pool: PoolProcess) -> None:
    admin = pool.admin()
    pool.add_user("alice", PASSWORD)
    alice = pool.login("alice", PASSWORD)
    joined = admin.create_join_token()
    rogue = FakeWorker(pool.address, joined.token, name="rogue").connect()
    task, producer = _busy(rogue, alice)
    try:
        wait_for(lambda: producer.sent[Producer.BEFORE] >= 3, what="the task to produce")
        revoked = admin.revoke_worker(rogue.worker_id)
        assert revoked.state == pb.WORKER_REVOKED and revoked.revoked_at > 0
        wait_for(lambda: rogue.stream_error is not None, timeout=ENDS_WITHIN, what="its stream to end")
        assert isinstance(rogue.stream_error, Unauthenticated)
        assert "revoked" in str(rogue.stream_error)
        requeued = admin.get_task(task.id)
        assert requeued.state == pb.QUEUED and requeued.retries_used == 0
        assert "revoked" in requeued.timeline[-1].message
        with pytest.raises(Unauthenticated, match="revoked"):  # its credential is dead for every call
            rogue.status(pb.Assignment(task_id=task.id, attempt=1), pb.RUNNING)
        with pytest.raises(Conflict):
            admin.revoke_worker(rogue.worker_id)
        honest = FakeWorker(pool.address, joined.token, name="honest").connect()
        try:
            again = honest.next_assignment()
            assert again.task_id == task.id and again.attempt == 2
        finally:
            honest.close()
        # The admin's list says which join token each worker joined with, and who is revoked.
        listed = pool.admin_cli("worker", "list").stdout
        rows = {line.split()[0]: line.split() for line in listed.splitlines()[1:]}
        assert rows[rogue.worker_id][2] == "revoked" and rows[rogue.worker_id][3] == joined.id
        assert rows[honest.worker_id][3] == joined.id
    finally:
        producer.stop()
        rogue.close()


def test_worker_revoke_on_the_pools_files_reaches_the_running_pool(pool: PoolProcess) -> None:
    pool.add_user("alice", PASSWORD)
    alice = pool.login("alice", PASSWORD)
    rogue = FakeWorker(pool.address, pool.join_token(), name="rogue").connect()
    task = submit(alice)
    assignment = rogue.next_assignment()
    rogue.status(assignment, pb.RUNNING)
    try:
        out = pool.admin_cli("worker", "revoke", rogue.worker_id).stdout
        assert f"revoked worker {rogue.worker_id}" in out
        wait_for(lambda: rogue.stream_error is not None, timeout=ENDS_WITHIN, what="its stream to end")
        assert isinstance(rogue.stream_error, Unauthenticated)
        wait_for(lambda: alice.get_task(task.id).state == pb.QUEUED, what="the task to be requeued")
        assert alice.get_task(task.id).retries_used == 0
    finally:
        rogue.close()


def test_revoking_a_join_token_can_revoke_its_workers(pool: PoolProcess) -> None:
    admin = pool.admin()
    leaked, other = admin.create_join_token(), admin.create_join_token()
    first = FakeWorker(pool.address, leaked.token, name="first").connect()
    second = FakeWorker(pool.address, leaked.token, name="second").connect()
    bystander = FakeWorker(pool.address, other.token, name="bystander").connect()
    try:
        # Without --workers (and no terminal to ask on) the workers keep working, and it says so.
        kept = pool.admin_cli("join-token", "revoke", other.id, stdin="")
        assert "keep working" in kept.stderr and bystander.worker_id in kept.stderr
        # With it (what the docs advise after a leak) the token's workers are revoked too.
        admin.revoke_join_token(leaked.id, workers=True)
        for worker in (first, second):
            wait_for(lambda w=worker: w.stream_error is not None, timeout=ENDS_WITHIN, what="its stream")
            assert isinstance(worker.stream_error, Unauthenticated)
        states = {w.id: (w.state, w.join_token_id) for w in admin.list_workers()}
        assert states[first.worker_id] == (pb.WORKER_REVOKED, leaked.id)
        assert states[second.worker_id] == (pb.WORKER_REVOKED, leaked.id)
        assert states[bystander.worker_id] == (pb.WORKER_ONLINE, other.id)
        assert bystander.stream_error is None
        with pytest.raises(Unauthenticated, match="revoked"):
            FakeWorker(pool.address, leaked.token, name="again")
    finally:
        for worker in (first, second, bystander):
            worker.close()


def test_plain_users_see_only_their_own_task_ids_on_workers(pool: PoolProcess) -> None:
    admin = pool.admin()
    for name in ("alice", "bob"):
        pool.add_user(name, PASSWORD)
    alice, bob = pool.login("alice", PASSWORD), pool.login("bob", PASSWORD)
    worker = FakeWorker(pool.address, pool.join_token(), name="shared").connect()
    try:
        hers = submit(alice)
        worker.next_assignment()
        his = submit(bob)
        worker.next_assignment()
        (seen_by_bob,) = bob.list_workers()
        assert list(seen_by_bob.running_task_ids) == [his.id]  # never alice's id
        assert seen_by_bob.running_count == 2
        assert seen_by_bob.join_token_id == ""  # provenance is for admins
        (seen_by_admin,) = admin.list_workers()
        assert sorted(seen_by_admin.running_task_ids) == sorted([hers.id, his.id])
        assert seen_by_admin.running_count == 2 and seen_by_admin.join_token_id.startswith("jt-")
    finally:
        worker.close()


def test_an_existing_pools_data_is_migrated(tmp_path: Path) -> None:
    """A pool.db from before revocation keeps its workers (and their join tokens) and failures."""
    from hivemind_nodepool.pool import store as store_module

    mine = next(i for i, m in enumerate(store_module.MIGRATIONS) if "revoked_at" in m)
    old = store_module.MIGRATIONS[:mine]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(store_module, "MIGRATIONS", old)
        before = store_module.Store(tmp_path)
        before.write(
            lambda db: db.execute(
                "INSERT INTO workers (id, name, credential_hash, join_token_id, facts, state, registered_at) "
                "VALUES ('w-1', 'old', 'h', 'jt-old', x'', 1, 1.0)"
            )
        )
        before.write(lambda db: db.execute("INSERT INTO login_failures (name, at) VALUES ('eve', 1.0)"))
        before.close()
    after = store_module.Store(tmp_path)
    try:
        assert after.schema_version() == len(store_module.MIGRATIONS)
        (worker,) = after.workers_of_join_token("jt-old")
        assert worker["id"] == "w-1" and worker["revoked_at"] == 0
        assert [(r["name"], r["source"]) for r in after.recent_login_failures(0)] == [("eve", "")]
        after.revoke_worker("w-1")
        assert [r["id"] for r in after.revoked_workers()] == ["w-1"]
    finally:
        after.close()
