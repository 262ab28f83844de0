"""Lost workers, retries, fencing of stale attempts, draining, and reconnecting after a pool restart."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from harness import FakeWorker, PoolProcess
from harness.fake_worker import make_result_zip

from hivemind_nodepool.proto import nodepool_pb2 as pb
from hivemind_nodepool.protocol.errors import Conflict

from .helpers import submit, wait_for


def test_silent_worker_is_lost_and_its_task_requeued(pool: PoolProcess, tmp_path: Path) -> None:
    admin = pool.admin()
    token = pool.join_token()
    first = FakeWorker(pool.address, token, name="first").connect()
    second = None
    try:
        task = submit(admin)
        assignment = first.next_assignment()
        first.status(assignment, pb.RUNNING)
        first.heartbeating = False  # the machine hangs: the stream stays open but says nothing
        stopped = time.monotonic()
        wait_for(
            lambda: admin.get_task(task.id).state == pb.QUEUED,
            timeout=15,
            interval=0.05,
            what="the task requeued",
        )
        elapsed = time.monotonic() - stopped
        print(f"requeued {elapsed:.1f} s after the last heartbeat (timeout {pool.heartbeat_timeout} s)")
        assert elapsed < pool.heartbeat_timeout + 3  # the bound: timeout plus one check period and slack
        requeued = admin.get_task(task.id)
        assert requeued.retries_used == 1 and requeued.worker_id == ""
        assert "lost" in requeued.timeline[-1].message
        (lost,) = [w for w in admin.list_workers() if w.id == first.worker_id]
        assert lost.state == pb.WORKER_LOST

        second = FakeWorker(pool.address, token, name="second").connect()
        again = second.next_assignment()
        assert again.task_id == task.id and again.attempt == 2
        # The first worker wakes up: everything about attempt 1 is refused.
        with pytest.raises(Conflict, match="stale"):
            first.status(assignment, pb.UPLOADING)
        with pytest.raises(Conflict):
            first.events(assignment, ["late output"])
        with pytest.raises(Conflict):
            first.client.fetch_bundle(task.id, 1, tmp_path / "b.zip")
        with pytest.raises(Conflict):
            first.finish(assignment, pb.SUCCEEDED, make_result_zip(tmp_path / "stale.zip"))
        assert admin.get_task(task.id).result_sha256 == ""
        done = second.run_to_success(again, make_result_zip(tmp_path / "good.zip"))
        assert done.state == pb.SUCCEEDED and done.attempt == 2
    finally:
        first.close()
        if second is not None:
            second.close()


def test_task_is_lost_after_max_retries(pool: PoolProcess) -> None:
    admin = pool.admin()
    token = pool.join_token()
    task = submit(admin, max_retries=1)
    for attempt in (1, 2):
        worker = FakeWorker(pool.address, token, name=f"w{attempt}").connect()
        try:
            assignment = worker.next_assignment()
            assert assignment.attempt == attempt
            worker.disconnect()  # gone for good
            wait_for(lambda: admin.get_task(task.id).state != pb.ASSIGNED, timeout=15, what="worker lost")
        finally:
            worker.close()
    final = admin.get_task(task.id)
    assert final.state == pb.LOST and final.retries_used == 1
    assert "retries exhausted" in final.error


def test_drain_hands_back_without_spending_a_retry(pool: PoolProcess) -> None:
    admin = pool.admin()
    token = pool.join_token()
    worker = FakeWorker(pool.address, token, name="draining").connect()
    other = None
    try:
        task = submit(admin)
        assignment = worker.next_assignment()
        worker.status(assignment, pb.RUNNING)
        drained = admin.drain_worker(worker.worker_id)
        assert drained.state == pb.WORKER_DRAINING
        worker.next_message("drain")
        extra = submit(admin)
        time.sleep(1.5)
        assert admin.get_task(extra.id).state == pb.QUEUED  # nothing new for a draining worker
        handed = worker.finish(assignment, pb.CANCELLED, requeue=True)
        assert handed.state == pb.QUEUED and handed.retries_used == 0
        other = FakeWorker(pool.address, token, name="other").connect()
        got = {other.next_assignment().task_id, other.next_assignment().task_id}
        assert got == {task.id, extra.id}
    finally:
        worker.close()
        if other is not None:
            other.close()


def test_cancel_reaches_the_worker_and_holds_capacity_until_it_stops(pool: PoolProcess) -> None:
    admin = pool.admin()
    worker = FakeWorker(pool.address, pool.join_token(), cpus=1).connect()
    try:
        task = submit(admin, cpus=1)
        assignment = worker.next_assignment()
        worker.status(assignment, pb.RUNNING)
        time.sleep(1.2)  # a heartbeat lists the attempt as running
        assert admin.cancel_task(task.id).state == pb.CANCELLED
        order = worker.next_message("cancel").cancel
        assert (order.task_id, order.attempt) == (task.id, 1)
        waiting = submit(admin, cpus=1)
        time.sleep(1.5)
        assert admin.get_task(waiting.id).state == pb.QUEUED  # the container is still being stopped
        worker.running.pop(task.id)  # stopped: the next heartbeat no longer lists it
        assert worker.next_assignment().task_id == waiting.id
        with pytest.raises(Conflict, match="ended"):
            worker.finish(assignment, pb.CANCELLED)
    finally:
        worker.close()


def test_worker_keeps_its_attempt_across_a_pool_restart(pool: PoolProcess, tmp_path: Path) -> None:
    admin = pool.admin()
    worker = FakeWorker(pool.address, pool.join_token()).connect()
    try:
        task = submit(admin)
        assignment = worker.next_assignment()
        worker.status(assignment, pb.RUNNING)
        worker.running["t-stale00000"] = 3  # something the pool never gave it
        pool.restart(hard=True)
        worker.disconnect()
        worker.connect()
        order = worker.next_message("cancel").cancel
        assert order.task_id == "t-stale00000"
        worker.running.pop("t-stale00000")
        time.sleep(pool.heartbeat_timeout + 1)  # well past the timeout: still current, not requeued
        current = admin.get_task(task.id)
        assert current.state == pb.RUNNING and current.attempt == 1
        done = worker.run_to_success(assignment, make_result_zip(tmp_path / "r.zip"))
        assert done.state == pb.SUCCEEDED and done.retries_used == 0
    finally:
        worker.close()


def test_worker_restarted_without_its_attempt_requeues_it(pool: PoolProcess) -> None:
    admin = pool.admin()
    worker = FakeWorker(pool.address, pool.join_token()).connect()
    try:
        task = submit(admin)
        assignment = worker.next_assignment()
        worker.status(assignment, pb.RUNNING)
        worker.disconnect()
        worker.running.clear()  # the worker process restarted and lost the run
        worker.connect()
        again = worker.next_assignment()
        assert again.task_id == task.id and again.attempt == 2
        assert admin.get_task(task.id).retries_used == 1
    finally:
        worker.close()


def test_unsent_assignment_is_resent_after_reconnect(pool: PoolProcess) -> None:
    admin = pool.admin()
    worker = FakeWorker(pool.address, pool.join_token()).connect()
    try:
        task = submit(admin)
        worker.next_assignment(track=False)  # received but "lost" before the worker recorded it
        worker.disconnect()
        worker.connect()
        again = worker.next_assignment()
        assert (again.task_id, again.attempt) == (task.id, 1)
    finally:
        worker.close()


def _worker_state(admin: object, worker_id: str) -> int:
    (found,) = [w for w in admin.list_workers() if w.id == worker_id]  # type: ignore[attr-defined]
    return int(found.state)


def test_closed_stream_is_offline_at_once_and_keeps_its_task_if_it_returns(tmp_path: Path) -> None:
    # A long heartbeat timeout: OFFLINE must come from the closed stream, not from silence.
    pool = PoolProcess(tmp_path / "pool", heartbeat_interval=1.0, heartbeat_timeout=60.0).start()
    worker = FakeWorker(pool.address, pool.join_token(), cpus=1)
    other = None
    try:
        admin = pool.admin()
        worker.connect()
        task = submit(admin)
        assignment = worker.next_assignment()
        worker.status(assignment, pb.RUNNING)
        worker.disconnect()  # the daemon stops (or restarts): its stream closes
        wait_for(
            lambda: _worker_state(admin, worker.worker_id) == pb.WORKER_OFFLINE,
            timeout=10,
            what="the worker shown OFFLINE",
        )
        assert admin.get_task(task.id).state == pb.RUNNING  # not requeued: it may come back
        # No new work goes to it while it is away; a connected worker gets it instead.
        waiting = submit(admin)
        other = FakeWorker(pool.address, pool.join_token(), name="other", cpus=1).connect()
        assert other.next_assignment().task_id == waiting.id
        # It comes back still running the attempt: nothing was lost, no retry spent.
        worker.connect()
        assert _worker_state(admin, worker.worker_id) == pb.WORKER_ONLINE
        done = worker.run_to_success(assignment, make_result_zip(tmp_path / "r.zip"))
        assert done.state == pb.SUCCEEDED and done.attempt == 1 and done.retries_used == 0
    finally:
        worker.close()
        if other is not None:
            other.close()
        pool.stop()


def test_closed_stream_that_does_not_return_loses_its_task_after_the_timeout(pool: PoolProcess) -> None:
    admin = pool.admin()
    worker = FakeWorker(pool.address, pool.join_token())
    try:
        worker.connect()
        task = submit(admin)
        assignment = worker.next_assignment()
        worker.status(assignment, pb.RUNNING)
        worker.disconnect()
        wait_for(
            lambda: admin.get_task(task.id).state == pb.QUEUED,
            timeout=pool.heartbeat_timeout + 10,
            what="the task requeued",
        )
        requeued = admin.get_task(task.id)
        assert requeued.retries_used == 1 and "lost" in requeued.timeline[-1].message
        assert _worker_state(admin, worker.worker_id) == pb.WORKER_LOST
    finally:
        worker.close()


def test_idle_worker_that_leaves_is_offline_not_lost(pool: PoolProcess) -> None:
    admin = pool.admin()
    worker = FakeWorker(pool.address, pool.join_token()).connect()
    try:
        worker.disconnect()
        wait_for(lambda: _worker_state(admin, worker.worker_id) == pb.WORKER_OFFLINE, what="OFFLINE")
        time.sleep(pool.heartbeat_timeout + 1.5)  # past the timeout: nothing to declare lost
        assert _worker_state(admin, worker.worker_id) == pb.WORKER_OFFLINE
    finally:
        worker.close()


def test_welcome_grants_a_lease_that_ends_before_the_worker_is_lost(tmp_path: Path) -> None:
    pool = PoolProcess(tmp_path / "pool", heartbeat_timeout=6.0, extra_args=["--lease-margin", "2s"]).start()
    try:
        worker = FakeWorker(pool.address, pool.join_token()).connect()
        try:
            assert worker.welcome is not None
            assert worker.welcome.heartbeat_timeout_seconds == 6.0
            assert worker.welcome.lease_seconds == 4.0  # the timeout less the margin
        finally:
            worker.close()
    finally:
        pool.stop()


def test_a_lost_worker_that_returns_with_its_old_attempt_gets_nothing_on_top_of_it(
    pool: PoolProcess,
) -> None:
    admin = pool.admin()
    worker = FakeWorker(pool.address, pool.join_token(), cpus=1).connect()
    try:
        task = submit(admin, cpus=1)
        assignment = worker.next_assignment()
        worker.status(assignment, pb.RUNNING)
        worker.heartbeating = False  # frozen: the pool declares it lost and requeues the task
        wait_for(lambda: admin.get_task(task.id).state == pb.QUEUED, timeout=20, what="the task requeued")
        assert _worker_state(admin, worker.worker_id) == pb.WORKER_LOST
        # It wakes up and reconnects, still running attempt 1 (its sandbox has not stopped yet).
        worker.disconnect()
        worker.heartbeating = True
        worker.connect()
        order = worker.next_message("cancel").cancel
        assert (order.task_id, order.attempt) == (task.id, 1)
        # The pool has looked at the queue with the worker back (the reason names busy workers, not
        # a missing one) and placed nothing: attempt 1 still holds the worker's only CPU.
        wait_for(
            lambda: "busy" in admin.get_task(task.id).pending_reason,
            timeout=15,
            what="a scheduling pass that sees the returned worker",
        )
        assert admin.get_task(task.id).state == pb.QUEUED
        with pytest.raises(TimeoutError):
            worker.next_message("assignment", timeout=1.0)
        # Attempt 1 has stopped: its heartbeats no longer list it, and attempt 2 may run there.
        worker.running.pop(task.id)
        again = worker.next_assignment(timeout=15)
        assert (again.task_id, again.attempt) == (task.id, 2)
    finally:
        worker.close()


def test_the_pool_ends_a_task_whose_worker_never_reports_its_timeout(tmp_path: Path) -> None:
    # The backstop: timeout plus the grace (60 s by default, 1 s here), then TIMED_OUT by the pool.
    pool = PoolProcess(tmp_path / "pool", extra_args=["--timeout-grace", "1s"]).start()
    worker = FakeWorker(pool.address, pool.join_token())
    try:
        admin = pool.admin()
        worker.connect()  # it heartbeats all along, so it is never lost: it only ignores the timeout
        task = submit(admin, timeout_seconds=2)
        assignment = worker.next_assignment()
        worker.status(assignment, pb.RUNNING)
        final = wait_for(
            lambda: (t := admin.get_task(task.id)).state == pb.TIMED_OUT and t,
            timeout=30,
            what="the pool's backstop",
        )
        assert "timed out after 2 s" in final.error  # type: ignore[union-attr]
        order = worker.next_message("cancel").cancel
        assert (order.task_id, order.attempt) == (task.id, 1)
        with pytest.raises(Conflict, match="ended"):
            worker.finish(assignment, pb.SUCCEEDED, make_result_zip(tmp_path / "late.zip"))
        assert _worker_state(admin, worker.worker_id) == pb.WORKER_ONLINE
    finally:
        worker.close()
        pool.stop()
