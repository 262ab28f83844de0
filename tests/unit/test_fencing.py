"""Fencing: only a task's current attempt, on its worker, may report on it. Each assignment is a new
attempt number; what an older attempt sends is refused and changes nothing. In process, on a real
SQLite store."""

from __future__ import annotations

import pytest

from hivemind_nodepool.pool.fleet import Amount, Fleet
from hivemind_nodepool.pool.lifecycle import fenced, fenced_upload, is_partial_result
from hivemind_nodepool.proto import nodepool_pb2 as pb
from hivemind_nodepool.protocol.errors import Conflict

from .pool_parts import GiB, Pool, worker

RESULT = ("r" * 64, 10)


async def assigned(parts: Pool, *worker_ids: str) -> str:
    """A task assigned (attempt 1) to the first of the workers, which all joined."""
    for worker_id in worker_ids:
        parts.join(worker(worker_id, cpus=1))
    task = await parts.submit("ada")
    assert await parts.scheduler.cycle() == 1
    return task


async def reassigned(parts: Pool, task: str, to: str) -> None:
    """The worker running the task is lost; the task is placed again, on `to`."""
    row = parts.task(task)
    lost = parts.fleet.workers[row["worker_id"]]
    lost.state = pb.WORKER_LOST
    await parts.book.requeue(row, f"worker {lost.name} was lost", spend_retry=True)
    assert parts.fleet.workers[to].schedulable
    assert await parts.scheduler.cycle() == 1
    assert parts.task(task)["worker_id"] == to


async def test_each_assignment_is_a_new_attempt(parts: Pool) -> None:
    task = await assigned(parts, "w1", "w2")
    first = parts.task(task)
    assert (first["attempt"], first["worker_id"]) == (1, "w1")
    await reassigned(parts, task, to="w2")
    second = parts.task(task)
    assert (second["state"], second["attempt"], second["worker_id"]) == (pb.ASSIGNED, 2, "w2")
    assert second["retries_used"] == 1
    attempts = parts.store.all("SELECT attempt, worker_id FROM attempts WHERE task_id = ?", (task,))
    assert [(a["attempt"], a["worker_id"]) for a in attempts] == [(1, "w1"), (2, "w2")]
    assert (task, 2) in parts.fleet.workers["w2"].allocations
    assert (task, 1) not in parts.fleet.workers["w1"].allocations


async def test_the_current_attempt_reports_forward_moves(parts: Pool) -> None:
    task = await assigned(parts, "w1")
    await parts.book.report_state("w1", task, 1, pb.PREPARING, "", None)
    await parts.book.report_state("w1", task, 1, pb.RUNNING, "", pb.Progress(cells_done=1, cells_total=3))
    row = parts.task(task)
    assert row["state"] == pb.RUNNING and (row["cells_done"], row["cells_total"]) == (1, 3)
    await parts.book.report_state("w1", task, 1, pb.PREPARING, "late", None)  # backwards: ignored
    assert parts.task(task)["state"] == pb.RUNNING


async def test_a_stale_attempts_reports_are_refused(parts: Pool) -> None:
    task = await assigned(parts, "w1", "w2")
    await reassigned(parts, task, to="w2")
    before = parts.task(task)
    events_before = len(parts.store.timeline(task))
    # w1 was only cut off; it still runs attempt 1 and reports on it.
    with pytest.raises(Conflict, match=r"attempt 1 of task t-\w+ is stale: the task's current attempt is 2"):
        await parts.book.report_state("w1", task, 1, pb.RUNNING, "", None)
    with pytest.raises(Conflict, match="stale"):
        await parts.book.record_events(
            "w1", task, 1, [pb.TaskEvent(seq=1, kind=pb.TaskEvent.STDOUT, text="x")]
        )
    with pytest.raises(Conflict, match="stale"):
        await parts.book.finish("w1", pb.ResultHeader(task_id=task, attempt=1, outcome=pb.SUCCEEDED), RESULT)
    with pytest.raises(Conflict, match="stale"):
        parts.book.check_attempt("w1", task, 1)
    after = parts.task(task)
    assert (after["state"], after["attempt"], after["worker_id"]) == (before["state"], 2, "w2")
    assert not after["result_sha256"]
    assert len(parts.store.timeline(task)) == events_before
    assert (task, 2) in parts.fleet.workers["w2"].allocations  # the stale finish freed nothing


async def test_the_right_attempt_from_the_wrong_worker_is_refused(parts: Pool) -> None:
    task = await assigned(parts, "w1", "w2")
    with pytest.raises(Conflict, match="stale"):
        await parts.book.report_state("w2", task, 1, pb.RUNNING, "", None)
    with pytest.raises(Conflict, match="stale"):
        await parts.book.report_state("w1", task, 2, pb.RUNNING, "", None)  # an attempt never given
    assert parts.task(task)["state"] == pb.ASSIGNED


async def test_the_new_attempt_is_heard_and_finishes(parts: Pool) -> None:
    task = await assigned(parts, "w1", "w2")
    await reassigned(parts, task, to="w2")
    await parts.book.report_state("w2", task, 2, pb.RUNNING, "", None)
    acked = await parts.book.record_events(
        "w2", task, 2, [pb.TaskEvent(seq=1, kind=pb.TaskEvent.STDOUT, text="hi")]
    )
    assert acked == 1
    final = await parts.book.finish(
        "w2", pb.ResultHeader(task_id=task, attempt=2, outcome=pb.SUCCEEDED), RESULT
    )
    assert final["state"] == pb.SUCCEEDED and final["result_sha256"] == RESULT[0]
    assert (task, 2) not in parts.fleet.workers["w2"].allocations
    with pytest.raises(Conflict, match="has ended"):  # even the current attempt, once it ended
        await parts.book.report_state("w2", task, 2, pb.UPLOADING, "", None)


async def test_a_requeued_task_refuses_its_last_attempt(parts: Pool) -> None:
    task = await assigned(parts, "w1")
    row = parts.task(task)
    await parts.book.requeue(row, "worker w1 was lost", spend_retry=True)
    assert parts.task(task)["state"] == pb.QUEUED
    with pytest.raises(Conflict, match="stale"):
        await parts.book.report_state("w1", task, 1, pb.RUNNING, "", None)
    assert await parts.book.requeue(row, "again", spend_retry=True) is None  # that attempt is over


async def test_a_cancelled_attempt_may_still_send_its_partial_result(parts: Pool) -> None:
    task = await assigned(parts, "w1")
    await parts.book.report_state("w1", task, 1, pb.RUNNING, "", None)
    await parts.book.cancel(parts.task(task), "cancelled by ada")
    with pytest.raises(Conflict, match="has ended"):
        await parts.book.report_state("w1", task, 1, pb.RUNNING, "", None)
    with pytest.raises(Conflict):  # the wrong outcome: not a partial result
        await parts.book.finish("w1", pb.ResultHeader(task_id=task, attempt=1, outcome=pb.SUCCEEDED), RESULT)
    kept = await parts.book.finish(
        "w1", pb.ResultHeader(task_id=task, attempt=1, outcome=pb.CANCELLED), RESULT
    )
    assert kept["state"] == pb.CANCELLED and kept["result_sha256"] == RESULT[0]


async def test_only_the_cancelled_attempts_partial_result_is_kept(parts: Pool) -> None:
    task = await assigned(parts, "w1", "w2")
    await reassigned(parts, task, to="w2")
    await parts.book.cancel(parts.task(task), "cancelled by ada")
    with pytest.raises(Conflict):
        await parts.book.finish("w1", pb.ResultHeader(task_id=task, attempt=1, outcome=pb.CANCELLED), RESULT)
    assert not parts.task(task)["result_sha256"]


async def test_the_fencing_rules_on_a_stored_row(parts: Pool) -> None:
    task = await assigned(parts, "w1")
    row = parts.task(task)
    assert fenced(row, "w1", 1) is row
    for worker_id, attempt in [("w1", 0), ("w1", 2), ("w2", 1), ("", 1)]:
        with pytest.raises(Conflict):
            fenced(row, worker_id, attempt)
    partial = pb.ResultHeader(task_id=task, attempt=1, outcome=pb.CANCELLED)
    assert not is_partial_result(row, "w1", partial)  # the task is not cancelled
    assert fenced_upload(row, "w1", partial) is row  # the running attempt may end as CANCELLED
    await parts.book.cancel(row, "cancelled")
    cancelled = parts.task(task)
    assert is_partial_result(cancelled, "w1", partial)
    assert not is_partial_result(cancelled, "w2", partial)
    assert not is_partial_result(
        cancelled, "w1", pb.ResultHeader(task_id=task, attempt=2, outcome=pb.CANCELLED)
    )
    assert not is_partial_result(cancelled, "w1", pb.ResultHeader(task_id=task, attempt=1, outcome=pb.FAILED))
    assert not is_partial_result(
        cancelled, "w1", pb.ResultHeader(task_id=task, attempt=1, outcome=pb.CANCELLED, requeue=True)
    )


# -- the fleet: streams and the attempts a worker says it runs -----------------------------------


async def test_a_new_stream_fences_off_the_old_one() -> None:
    fleet = Fleet()
    entry = worker("w1", connected=False)
    fleet.add(entry)
    old_session, old_outbox = fleet.attach(entry)
    new_session, new_outbox = fleet.attach(entry)
    assert new_session > old_session and new_outbox is not old_outbox
    assert old_outbox.get_nowait() is None  # the old stream is told to close
    assert not fleet.detach(entry, old_session)  # its end does not disconnect the new one
    assert entry.connected and entry.outbox is new_outbox
    assert fleet.detach(entry, new_session)
    assert not entry.connected


def test_reconcile_names_the_attempts_to_cancel() -> None:
    entry = worker("w1")
    entry.allocations = {("t-a", 2): Amount(1, GiB), ("t-b", 1): Amount(1, GiB)}
    # t-a's attempt 1 was superseded; t-c is not the pool's at all.
    to_cancel = entry.reconcile({("t-a", 1), ("t-a", 2), ("t-b", 1), ("t-c", 1)})
    assert sorted(to_cancel) == [("t-a", 1), ("t-c", 1)]
    assert set(entry.allocations) == {("t-a", 2), ("t-b", 1)}


def test_an_ended_attempt_holds_its_capacity_until_the_worker_stops_it() -> None:
    entry = worker("w1", cpus=2)
    key = ("t-a", 1)
    entry.allocations = {key: Amount(2, GiB)}
    entry.zombies = {key}  # ended on the pool (cancelled), still running on the worker
    assert entry.reconcile({key}) == [key]  # cancel it again
    assert entry.free.cpus == 0  # still held: nothing else may be placed there yet
    assert entry.reconcile(set()) == []
    assert entry.free.cpus == 2 and not entry.zombies


async def test_a_cancelled_attempt_still_running_keeps_its_allocation(parts: Pool) -> None:
    task = await assigned(parts, "w1")
    w1 = parts.fleet.workers["w1"]
    w1.reported = {(task, 1)}  # its last heartbeat listed the attempt
    await parts.book.cancel(parts.task(task), "cancelled")
    assert (task, 1) in w1.allocations and (task, 1) in w1.zombies
    assert w1.reconcile(set()) == []
    assert (task, 1) not in w1.allocations
